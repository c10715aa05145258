"""SSL view augmentation throughput: batched ``make_views`` vs a per-sample torchvision loop.

What is compared (milliseconds per call of one batch's views, lower is better):

* **mmssl**: ``domains.image.views.make_views(images, configs)``: every op vectorised over
  the batch, each sample with its own random parameters.
* **torchvision loop**: the naive correct alternative. One ``torchvision.transforms.v2.Compose``
  per view config, called on each image separately, then stacked. A ``Compose`` called on the
  whole batch would be faster but wrong for SSL, because it draws one set of parameters for all
  the images.

Why it is fair: both sides do the same ops with the same settings, in the same order, from the
same ``ViewConfig``: RandomResizedCrop (bilinear, ``antialias=False`` like mmssl), flip,
ColorJitter in RandomApply, RandomGrayscale (RGB only), GaussianBlur in RandomApply with SimCLR's
kernel, and RandomSolarize. An op that mmssl skips because its probability is 0 is also left out
of the Compose. Both run on the CPU with the same number of torch threads.

Two cases: 256 Fashion-MNIST-sized images (1x28x28, ``fashion_mnist_views``) and 64 RGB
3x96x96 images (BYOL's asymmetric pair at 96 px, which uses every op).

How it is timed: one untimed warm-up call per side, then rounds alternate between the sides
(mmssl, loop, mmssl, ...). Each round times ``--calls`` calls, and the figure reported is the
median over rounds of the per-call time. ``speedup`` is loop ms / mmssl ms. ``cpu`` is process
CPU time over wall time per thread; a measurement below 80% was slowed by another process on a
shared machine, so it is flagged ``contended`` (never on a GPU, where the host thread waits for
kernels). The rounds, clocks, medians and flags are ``benchmarks/harness.py``'s, shared by every
side-by-side script.

Usage::

    python benchmarks/image_augment.py                        # 5 rounds x 5 calls per side and case
    python benchmarks/image_augment.py --rounds 1 --calls 1   # seconds-long smoke run
    python benchmarks/image_augment.py --threads 2
    python benchmarks/image_augment.py --device cuda          # both sides on the GPU
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import harness  # benchmarks/harness.py: this script's folder comes first on sys.path
import torch
import torchvision.transforms.v2 as T
from torch import Tensor

from domains.image.augment import (
    SOLARIZE_THRESHOLD,
    blur_kernel_size,
)
from domains.image.views import (
    ViewConfig,
    byol_views,
    fashion_mnist_views,
    make_views,
)


@dataclass(frozen=True)
class Case:
    """One benchmark input: a batch shape and the views made of it."""

    name: str
    shape: tuple[int, int, int, int]
    configs: tuple[ViewConfig, ...]


CASES = (
    Case("fashion-mnist 256x1x28x28", (256, 1, 28, 28), fashion_mnist_views()),
    Case("rgb 64x3x96x96 (byol pair)", (64, 3, 96, 96), byol_views(size=96)),
)


def torchvision_view(config: ViewConfig, channels: int) -> T.Compose:
    """The per-image torchvision pipeline that does what ``augment(images, config)`` does."""
    ops: list[torch.nn.Module] = [
        T.RandomResizedCrop(config.size, scale=config.scale, ratio=config.ratio, antialias=False),
        T.RandomHorizontalFlip(config.flip_p),
    ]
    if config.jitters:
        jitter = T.ColorJitter(config.brightness, config.contrast, config.saturation, config.hue)
        ops.append(T.RandomApply([jitter], p=config.jitter_p))
    if config.grayscale_p > 0 and channels == 3:
        ops.append(T.RandomGrayscale(config.grayscale_p))
    if config.blur_p > 0:
        blur = T.GaussianBlur(blur_kernel_size(config.size), sigma=config.blur_sigma)
        ops.append(T.RandomApply([blur], p=config.blur_p))
    if config.solarize_p > 0:
        ops.append(T.RandomSolarize(SOLARIZE_THRESHOLD, p=config.solarize_p))
    if config.mean is not None:
        ops.append(T.Normalize(config.mean, config.std))
    return T.Compose(ops)


def per_sample_loop(configs: Sequence[ViewConfig], channels: int) -> Callable[[Tensor], list[Tensor]]:
    """``images -> views`` by calling each view's torchvision pipeline on one image at a time."""
    pipelines = [torchvision_view(config, channels) for config in configs]
    return lambda images: [torch.stack([pipeline(image) for image in images]) for pipeline in pipelines]


@dataclass(frozen=True)
class Timing:
    """One measurement: ``calls`` calls of one side."""

    ms: float  # wall milliseconds per call
    cpu: float  # share of the torch threads the process got in CPU time


def time_calls(fn: Callable[[], object], calls: int, device: torch.device) -> Timing:
    """Time ``calls`` calls of ``fn`` (on a GPU, the clock stops once the queued kernels have finished)."""
    first = harness.stamp(device)
    for _ in range(calls):
        fn()
    timed = harness.span(first, harness.stamp(device))
    return Timing(1e3 * timed.wall / calls, timed.cpu / torch.get_num_threads())


def run_case(case: Case, rounds: int, calls: int, device: torch.device) -> dict[str, object]:
    """Alternate the two sides for ``rounds`` rounds; print every measurement and return the medians."""
    images = torch.rand(case.shape, generator=torch.Generator().manual_seed(0)).to(device)
    loop = per_sample_loop(case.configs, case.shape[1])
    sides = {"mmssl": lambda: make_views(images, case.configs), "torchvision_loop": lambda: loop(images)}
    for fn in sides.values():
        fn()  # warm-up: allocator, kernels, lazy imports
    gpu = device.type == "cuda"

    def timed(name: str, fn: Callable[[], object]) -> Callable[[int], Timing]:
        def run(r: int) -> Timing:
            t = time_calls(fn, calls, device)
            # cpu is a share of the threads: contended below 80% of one
            print(
                f"  {case.name} round {r + 1} {name:>16}: {t.ms:9.2f} ms/call  cpu {t.cpu:4.0%}"
                f"{harness.flags(t.cpu, 1, gpu=gpu)}"
            )
            return t

        return run

    runs = harness.interleave({name: timed(name, fn) for name, fn in sides.items()}, rounds)
    medians = harness.medians(runs, lambda t: t.ms)
    speedup = harness.ratio(medians, "torchvision_loop", "mmssl")
    print(
        f"{case.name}: mmssl {medians['mmssl']:.2f} ms, torchvision loop {medians['torchvision_loop']:.2f} ms, "
        f"speedup {speedup:.1f}x ({len(case.configs)} views per call)"
    )
    return {
        "shape": list(case.shape),
        "views": len(case.configs),
        "mmssl_ms": round(medians["mmssl"], 3),
        "torchvision_loop_ms": round(medians["torchvision_loop"], 3),
        "speedup": round(speedup, 2),
        "mmssl_runs": [round(t.ms, 3) for t in runs["mmssl"]],
        "torchvision_loop_runs": [round(t.ms, 3) for t in runs["torchvision_loop"]],
        "contended_measurements": sum(harness.contended(t.cpu, 1, gpu) for ts in runs.values() for t in ts),
    }


def main(argv: Sequence[str] | None = None) -> dict[str, object]:
    """Run every case, print the measurements and end with one JSON line (also returned)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds per side (default 5)")
    parser.add_argument("--calls", type=int, default=5, help="timed calls per round (default 5)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for both sides (default 1)")
    parser.add_argument("--device", default="cpu", help="where the images and both sides' ops live (cpu, cuda)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    record = {
        "benchmark": "image_augment",
        "device": harness.device_name(device),
        "torch_threads": torch.get_num_threads(),
        "rounds": args.rounds,
        "calls": args.calls,
        "cases": {case.name: run_case(case, args.rounds, args.calls, device) for case in CASES},
    }
    return harness.print_record(record)


if __name__ == "__main__":
    main()
