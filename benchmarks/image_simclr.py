"""SimCLR on Fashion-MNIST: mmssl's ``simclr`` recipe vs lightly's own path, side by side.

What is compared (images per second of training, higher is better, and the kNN accuracy of
each backbone after the same wall-clock budget):

* **mmssl**: ``mmssl.trainer.Trainer(...).fit()``, the real loop with its logging, on
  ``build_model(recipe, processor)`` of the ``simclr`` recipe: ResNet-18 of width 16 with the
  small stem, the SimCLR projector and NT-Xent; the two views of each batch
  are made on the device by ``domains.image.views.make_views`` (per-sample random parameters,
  no per-image loop), from uint8 images collated in the main process (``train.num_workers`` 0).
* **lightly**: the loop of lightly's ``examples/pytorch/simclr.py``: ``torchvision``'s
  ``FashionMNIST`` dataset (PIL images) with lightly's ``SimCLRTransform``, a
  ``torch.utils.data.DataLoader`` (``shuffle=True, drop_last=True``, ``--lightly-workers``
  processes, default one per core), ``SimCLRProjectionHead`` and ``NTXentLoss``; forward of
  each view, loss, ``backward``, ``optimizer.step``.

Why it is fair: both sides train the same backbone (``domains.image.resnet.SmallResNet``, the
recipe's depth and width) and a projector of the recipe's widths (Linear-BN-ReLU-Linear; lightly's
``SimCLRProjectionHead`` replaces the last bias by a ``BatchNorm1d``, as the official SimCLR code
does) from the same initial weights (every shared tensor checked equal), on the same 60,000
images (checked), with the
same batch size, NT-Xent temperature, AdamW settings (lr, betas, eps, weight decay off for
biases and norm weights, the fused kernel), warmup + cosine schedule and precision. lightly's
``SimCLRTransform`` is given the settings of the recipe's view (``fashion_mnist_views``): 28x28
crops of 20-100% of the area, flip p 0.5, brightness and contrast 0.4 with p 0.8, no
saturation, hue, grayscale, blur or solarize (no-ops or off for small grayscale images; see
:func:`domains.image.views.fashion_mnist_views`), normalised by the same mean and std.
Each side otherwise keeps what its user gets: mmssl its trainer and fp32 NT-Xent; lightly its PIL
pipeline in DataLoader workers and its loss run under autocast. Both backbones are NCHW (channels-last
weights hang at random in torch 2.11's oneDNN backward on the AVX2 CI machine).

Precision: ``--precision auto`` (default) resolves the recipe's ``train.mixed_precision: auto``
as the trainer does (bf16 autocast where the CPU has native bf16, else fp32) and applies the
result to both sides (lightly's loop then runs under ``torch.autocast(dtype=torch.bfloat16)``,
which is what Accelerate does for mmssl); ``--precision fp32`` / ``bf16`` forces one for both.

How it is timed: each measurement builds a fresh model (and loader) and runs ``skip + steps``
optimizer steps, stamping the clock after each; throughput is ``steps * batch_size`` over the
time between the stamps of step ``skip`` and ``skip + steps``, which leaves out model building,
DataLoader worker start-up and the warm-up steps. The sides alternate (mmssl, lightly, ...)
for ``--repeats`` rounds and the ratio is of the medians. ``cpu`` is CPU time of the process
and its DataLoader workers per wall second over the timed steps: below 80% of the cores, the
side did not get (or could not use) the machine and the measurement is flagged ``contended``;
``other`` is the CPU per second that other processes used meanwhile (machine-wide busy time
minus ours), which tells the two apart: above 10% of the cores the measurement is flagged
``busy`` (another process ran; a side whose workers and threads already fill the cores can
lose more than that share). Both flags are counted in the JSON line. The rounds, clocks, medians
and flags are ``benchmarks/harness.py``'s, shared by every side-by-side script.

Then each side trains once more from scratch for ``--budget-minutes`` of wall time (the
schedule of the recipe's ``train.max_steps`` on both sides, cut by the budget), and its frozen
backbone is probed with mmssl's weighted kNN (``mmssl.probes``: k=200, InstDisc votes
``exp(s / 0.07)``) on ``--knn-train`` training and ``--knn-test`` test images; the same probe
of the untrained initial backbone is the floor.

Usage::

    flock /tmp/mmssl-cpu.lock python benchmarks/image_simclr.py      # 3 rounds + 2 x 3 min budget + probes, ~10 min
    python benchmarks/image_simclr.py --quick          # seconds-long smoke run on a tiny model
    python benchmarks/image_simclr.py --profile 5      # also: where a step's time goes, on both sides
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import harness  # benchmarks/harness.py: this script's folder comes first on sys.path
import torch
from harness import Stamp
from torch import Tensor, nn

# --quick: a few hundred images and a tiny ResNet, so that the whole run takes seconds
QUICK_OVERRIDES = [
    "data.max_images=256",
    "train.batch_size=32",
    "encoder.resnet_width=4",
    "objective.projector_hidden_dim=32",
    "objective.projector_dim=16",
]


@dataclass(frozen=True)
class Setup:
    """Everything built once and shared by both sides."""

    recipe: Any  # the simclr recipe, with the precision and overrides applied
    data: Any  # mmssl's PretrainData: ImageRows, collate, processor, ViewTransform
    pil_dataset: Any  # torchvision FashionMNIST (same images) with lightly's SimCLRTransform
    workers: int  # lightly's DataLoader workers

    @property
    def train(self) -> Any:
        return self.recipe.train

    @property
    def bf16(self) -> bool:
        return self.recipe.train.mixed_precision == "bf16"


# ---------------------------------------------------------------------------------------- lightly side
class LightlySimCLR(nn.Module):
    """The model of lightly's ``examples/pytorch/simclr.py``: backbone (with pooling), flatten, projection head."""

    def __init__(self, backbone: nn.Module, feature_dim: int, hidden_dim: int, out_dim: int) -> None:
        from lightly.models.modules import SimCLRProjectionHead

        super().__init__()
        self.backbone = nn.Sequential(backbone, nn.AdaptiveAvgPool2d(1))
        self.projection_head = SimCLRProjectionHead(feature_dim, hidden_dim, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.projection_head(self.backbone(x).flatten(start_dim=1))


def lightly_model(recipe: Any) -> LightlySimCLR:
    """The recipe's backbone (mmssl's ``SmallResNet`` module, a plain NCHW one) under lightly's head."""
    from domains.image.resnet import SmallResNet

    enc, obj = recipe.encoder, recipe.objective
    backbone = SmallResNet(in_channels=1, depth=enc.resnet_depth, width=enc.resnet_width)
    return LightlySimCLR(backbone, backbone.out_dim, obj.projector_hidden_dim, obj.projector_dim)


def lightly_transform(view: Any) -> Any:
    """lightly's ``SimCLRTransform`` with the settings of mmssl's ``ViewConfig`` ``view`` (both views alike)."""
    from lightly.transforms import SimCLRTransform

    if view.scale[1] != 1.0 or view.ratio != (3 / 4, 4 / 3) or view.solarize_p > 0 or view.mean is None:
        raise ValueError(f"SimCLRTransform cannot express this view: {view}")
    return SimCLRTransform(
        input_size=view.size,
        min_scale=view.scale[0],
        hf_prob=view.flip_p,
        cj_prob=view.jitter_p,
        cj_strength=1.0,
        cj_bright=view.brightness,
        cj_contrast=view.contrast,
        cj_sat=view.saturation,
        cj_hue=view.hue,
        random_gray_scale=view.grayscale_p,
        gaussian_blur=view.blur_p,
        sigmas=view.blur_sigma,
        normalize={"mean": list(view.mean), "std": list(view.std)},
    )


def fashion_mnist_pil(root: Path, transform: Any, images: Tensor) -> Any:
    """torchvision's ``FashionMNIST`` (PIL images) read from the same IDX files mmssl prepared; checked equal."""
    from torchvision.datasets import FashionMNIST

    from domains.image.builders import fashion_mnist_files

    raw = root / "FashionMNIST" / "raw"  # torchvision reads the decompressed IDX files from here
    raw.mkdir(parents=True, exist_ok=True)
    with fashion_mnist_files() as (folder, _version):
        for name, _md5 in FashionMNIST.resources:
            if not (raw / name[:-3]).is_file():
                with gzip.open(folder / name) as src, open(raw / name[:-3], "wb") as dst:
                    shutil.copyfileobj(src, dst)
    dataset = FashionMNIST(str(root), train=True, transform=transform, download=False)
    n = len(images)
    if not torch.equal(dataset.data[:n], images[:, 0]):
        raise RuntimeError("torchvision's FashionMNIST images differ from mmssl's prepared ones")
    return dataset if n == len(dataset) else torch.utils.data.Subset(dataset, range(n))


def adamw(model: nn.Module, train: Any) -> tuple[torch.optim.Optimizer, Any]:
    """AdamW with the recipe's settings (no decay on biases and norm weights, fused) + warmup/cosine schedule."""
    from transformers import get_cosine_schedule_with_warmup

    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": train.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=train.lr,
        betas=train.betas,
        eps=train.eps,
        fused=True,
    )
    return optimizer, get_cosine_schedule_with_warmup(
        optimizer, min(train.warmup_steps, train.max_steps), train.max_steps
    )


def lightly_fit(
    setup: Setup, max_steps: int, max_seconds: float | None, on_step: Callable[[], None]
) -> tuple[LightlySimCLR, int, float]:
    """lightly's SimCLR loop for ``max_steps`` steps or ``max_seconds``; returns the model, the steps and the last loss."""
    from lightly.loss import NTXentLoss

    train = setup.train
    torch.manual_seed(train.seed)
    model = lightly_model(setup.recipe)
    criterion = NTXentLoss(temperature=setup.recipe.objective.temperature)
    optimizer, scheduler = adamw(model, train)
    loader = torch.utils.data.DataLoader(
        setup.pil_dataset,
        batch_size=train.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=setup.workers,
        generator=torch.Generator().manual_seed(train.seed),
    )
    step, loss, start = 0, torch.tensor(float("nan")), time.perf_counter()
    model.train()
    while True:
        for (x0, x1), _ in loader:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=setup.bf16):
                z0, z1 = model(x0), model(x1)
                loss = criterion(z0, z1)
            loss.backward()
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            on_step()
            if step >= max_steps or (max_seconds is not None and time.perf_counter() - start > max_seconds):
                return model, step, float(loss.detach())


# ---------------------------------------------------------------------------------------- mmssl side
def mmssl_fit(setup: Setup, train: Any, out_dir: Path, on_step: Callable[[], None]) -> tuple[Any, int, float]:
    """``mmssl.trainer.Trainer.fit`` on the recipe's model; returns the model, the steps and the last logged loss."""
    from accelerate.utils import set_seed

    from mmssl.model import build_model
    from mmssl.trainer import Trainer

    set_seed(train.seed)
    model = build_model(setup.recipe, setup.data.processor)
    trainer = Trainer(
        model,
        setup.data.dataset,
        setup.data.collate,
        train,
        out_dir,
        transform=setup.data.transform,
        unit_name="patches",
        hooks=[lambda _trainer, _step: on_step()],
    )
    last = trainer.fit()
    return model, trainer.state.step, float(last.get("loss", float("nan")))


# ---------------------------------------------------------------------------------------- timing
def stamp() -> Stamp:
    """The clocks after an optimizer step: wall, our CPU (process + DataLoader workers), the machine's busy CPU."""
    return harness.stamp(children=True, machine=True)


@dataclass(frozen=True)
class Measurement:
    images_per_s: float
    cpu: float  # our CPU seconds per wall second over the timed steps
    other: float  # other processes' CPU seconds per wall second meanwhile
    loss: float
    steps: int  # optimizer steps between the two stamps


def measure(stamps: list[Stamp], first: int, last: int, images_per_step: int, loss: float) -> Measurement:
    """Throughput between stamps ``first`` and ``last`` (0-based indices into ``stamps``)."""
    timed = harness.span(stamps[first], stamps[last])
    return Measurement((last - first) * images_per_step / timed.wall, timed.cpu, timed.other, loss, last - first)


def run_side(side: str, setup: Setup, skip: int, steps: int, out_dir: Path) -> Measurement:
    """One throughput measurement: ``skip`` untimed + ``steps`` timed optimizer steps of a fresh model."""
    stamps: list[Stamp] = []
    total = skip + steps
    if side == "mmssl":
        train = dataclasses.replace(
            setup.train,
            max_steps=total,
            checkpoint_every=total,
            max_minutes=None,
            warmup_steps=min(setup.train.warmup_steps, total),
        )
        _, done, loss = mmssl_fit(setup, train, out_dir, lambda: stamps.append(stamp()))
    else:
        _, done, loss = lightly_fit(setup, total, None, lambda: stamps.append(stamp()))
    if done < total:
        raise RuntimeError(f"{side}: only {done} of {total} steps ran")
    return measure(stamps, skip - 1, total - 1, setup.train.batch_size, loss)


# ---------------------------------------------------------------------------------------- quality
def knn_rows(setup: Setup, n_train: int, n_test: int) -> tuple[Any, Any, Callable]:
    """The first ``n_train`` / ``n_test`` labelled Fashion-MNIST rows and the task collate (the training normalisation)."""
    from mmssl.registry import DOMAINS
    from mmssl.tasks import TaskConfig

    domain = DOMAINS.get("image")
    task = TaskConfig(name="fashion-mnist", max_train_samples=n_train)
    rows = domain.task_data(task)
    test = torch.utils.data.Subset(rows.test, range(min(n_test, len(rows.test))))
    return rows.train, test, domain.task_collate(setup.data.processor, task)


def knn_of(backbone: nn.Module, setup: Setup, rows: tuple[Any, Any, Callable]) -> float:
    """mmssl's weighted kNN (k=200, T=0.07) on the globally pooled features of a ``SmallResNet``, in fp32."""
    from domains.image.encoders import ResNetEncoder
    from mmssl.probes import extract_features, knn_accuracy

    encoder = ResNetEncoder(backbone, int(setup.data.processor.patch_size))  # the project's feature path
    train_rows, test_rows, collate = rows
    train = extract_features(encoder, train_rows, collate, batch_size=512)
    test = extract_features(encoder, test_rows, collate, batch_size=512)
    return knn_accuracy(train, test, num_classes=10)


def budget_run(
    side: str, setup: Setup, minutes: float, out_dir: Path, skip: int
) -> tuple[nn.Module, Measurement, float]:
    """Train from scratch for ``minutes`` of wall time.

    Returns the backbone, the run's overall throughput (start-up included) and the seconds its first
    ``skip`` steps took; the clock of every step goes to ``out_dir/stamps.json``.
    """
    stamps = [stamp()]
    if side == "mmssl":
        train = dataclasses.replace(setup.train, max_minutes=minutes)
        model, _, loss = mmssl_fit(setup, train, out_dir, lambda: stamps.append(stamp()))
        backbone = model.encoder.model
    else:
        model, _, loss = lightly_fit(setup, setup.train.max_steps, 60 * minutes, lambda: stamps.append(stamp()))
        backbone = model.backbone[0]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "stamps.json").write_text(json.dumps([dataclasses.asdict(s) for s in stamps]))
    warmup = stamps[min(skip, len(stamps) - 1)].wall - stamps[0].wall
    return backbone, measure(stamps, 0, len(stamps) - 1, setup.train.batch_size, loss), warmup


# ---------------------------------------------------------------------------------------- profile
def per_call_ms(fn: Callable[[], Any], n: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return 1000 * (time.perf_counter() - start) / n


def profile(setup: Setup, n: int) -> dict[str, float]:
    """ms per batch of each part of the two steps, measured apart (same batch size and precision)."""
    from lightly.loss import NTXentLoss

    from mmssl.model import build_model

    train, bs = setup.train, setup.train.batch_size
    out: dict[str, float] = {}
    order = iter(range(10**9))
    out["lightly: PIL views in one process"] = per_call_ms(
        lambda: [setup.pil_dataset[next(order) % len(setup.pil_dataset)] for _ in range(bs)], n
    )
    loader = torch.utils.data.DataLoader(
        setup.pil_dataset, batch_size=bs, shuffle=True, drop_last=True, num_workers=setup.workers
    )
    batches = iter(loader)
    out[f"lightly: DataLoader alone ({setup.workers} workers)"] = per_call_ms(lambda: next(batches), n)
    (x0, x1), _ = next(batches)
    batches = None  # drops the iterator: its workers shut down
    rows = [setup.data.dataset[i] for i in range(bs)]
    out["mmssl: collate"] = per_call_ms(lambda: setup.data.collate(rows), n)
    batch = setup.data.collate(rows)
    out["mmssl: make_views (on the batch)"] = per_call_ms(lambda: setup.data.transform(batch), n)
    views = setup.data.transform(batch)
    autocast = lambda: torch.autocast("cpu", dtype=torch.bfloat16, enabled=setup.bf16)  # noqa: E731
    criterion = NTXentLoss(temperature=setup.recipe.objective.temperature)
    # NCHW only: torch 2.11's oneDNN backward of channels-last convolutions hangs at random on the
    # AVX2 CI machine (docs/benchmarks.md), so neither side uses channels-last any more
    torch.manual_seed(train.seed)
    model = lightly_model(setup.recipe)
    opt, _ = adamw(model, train)

    def lightly_step() -> None:
        with autocast():
            loss = criterion(model(x0), model(x1))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    out["lightly model step (NCHW)"] = per_call_ms(lightly_step, n)
    torch.manual_seed(train.seed)
    ssl = build_model(setup.recipe, setup.data.processor).train()
    opt, _ = adamw(ssl, train)

    def mmssl_step() -> None:
        with autocast():
            loss = ssl(views).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    out["mmssl model step (NCHW, fp32 NT-Xent)"] = per_call_ms(mmssl_step, n)
    out = {k: round(v, 1) for k, v in out.items()}
    print(
        f"\nms per batch of {bs}, {n} calls after 2 untimed (each part alone, {torch.get_num_threads()} torch threads):"
    )
    for k, v in out.items():
        print(f"  {k:<50}{v:>9.1f}")
    return out


# ---------------------------------------------------------------------------------------- main
# mmssl's state-dict prefixes -> lightly's. lightly's SimCLRProjectionHead ends in Linear without bias + BatchNorm1d
# (as the official SimCLR code), mmssl's in Linear with bias (the paper's g(h) = W2 relu(W1 h)): those differ.
SAME_TENSORS = {"encoder.model.": "backbone.0.", "objective.projector.": "projection_head.layers."}
HEAD_ONLY = {"mmssl": ["objective.projector.3.bias"], "lightly": ["projection_head.layers.4."]}


def check_same_init(ours: dict[str, Tensor], theirs: dict[str, Tensor]) -> None:
    """Every tensor the two models share starts equal; the only unshared ones are the heads' documented ends."""

    def lightly_name(name: str) -> str:
        prefix = next(p for p in SAME_TENSORS if name.startswith(p))
        return SAME_TENSORS[prefix] + name[len(prefix) :]

    shared = {k: lightly_name(k) for k in ours if not any(k.startswith(x) for x in HEAD_ONLY["mmssl"])}
    extra = set(theirs) - set(shared.values())
    if any(not any(k.startswith(x) for x in HEAD_ONLY["lightly"]) for k in extra):
        raise RuntimeError(f"lightly's model has unexpected tensors: {sorted(extra)}")
    for k in shared:
        if k not in ours or shared[k] not in theirs or not torch.equal(ours[k], theirs[shared[k]]):
            raise RuntimeError(f"mmssl's {k} and lightly's {shared[k]} start from different weights")


def build_setup(args: argparse.Namespace, work: Path) -> Setup:
    from accelerate.utils import set_seed

    from mmssl.model import build_model
    from mmssl.recipe import load_recipe
    from mmssl.registry import DOMAINS
    from mmssl.trainer import resolve_mixed_precision, use_cpu

    recipe = load_recipe("simclr", args.overrides + ["monitor.every=0"])  # the online kNN probe is not training
    precision = {
        "auto": resolve_mixed_precision(recipe.train.mixed_precision, cpu=use_cpu()),
        "bf16": "bf16",
        "fp32": "no",
    }[args.precision]
    recipe = dataclasses.replace(recipe, train=dataclasses.replace(recipe.train, mixed_precision=precision))
    data = DOMAINS.get("image").pretrain_data(recipe, work / "data", 0, 1)
    transform = lightly_transform(data.transform.configs[0])
    if data.transform.configs[0] != data.transform.configs[1]:
        raise ValueError("lightly's SimCLRTransform makes two views from one distribution; the recipe's differ")
    pil = fashion_mnist_pil(work / "torchvision", transform, data.dataset.arrays.images)
    set_seed(recipe.train.seed)
    ours = build_model(recipe, data.processor).state_dict()
    set_seed(recipe.train.seed)
    check_same_init(ours, lightly_model(recipe).state_dict())
    return Setup(recipe, data, pil, args.lightly_workers)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--repeats", type=int, default=3, help="interleaved rounds, mmssl then lightly in each (default 3)")
    p.add_argument("--steps", type=int, default=30, help="timed optimizer steps per measurement (default 30)")
    p.add_argument("--skip", type=int, default=5, help="untimed warm-up steps before them (default 5)")
    p.add_argument(
        "--budget-minutes", type=float, default=3.0, help="wall-clock training budget per side for kNN (default 3)"
    )
    p.add_argument("--knn-train", type=int, default=10000, help="training images in the kNN memory (default 10000)")
    p.add_argument("--knn-test", type=int, default=10000, help="test images probed (default 10000, all)")
    p.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16"),
        default="auto",
        help="both sides; auto: the recipe's train.mixed_precision=auto as the trainer resolves it",
    )
    p.add_argument(
        "--lightly-workers",
        type=int,
        default=len(os.sched_getaffinity(0)),
        help="lightly's DataLoader workers (default: one per core)",
    )
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, all cores)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="simclr recipe override for both sides, e.g. train.batch_size=128 (repeatable)",
    )
    p.add_argument("--profile", type=int, default=0, metavar="N", help="also time each part of the step, N calls each")
    p.add_argument("--work-dir", type=Path, default=None, help="keep runs and data here (default: a temp dir)")
    p.add_argument("--quick", action="store_true", help="smoke run: tiny model and data, 1 round, 3-second budgets")
    args = p.parse_args(argv)
    if args.quick:
        args.repeats, args.steps, args.skip, args.budget_minutes = 1, 2, 1, 0.05
        args.knn_train, args.knn_test = 200, 200
        args.overrides = QUICK_OVERRIDES + args.overrides
    if min(args.repeats, args.steps, args.skip, args.knn_train, args.knn_test) < 1 or args.budget_minutes <= 0:
        p.error("--repeats, --steps, --skip, --knn-train, --knn-test must be >= 1 and --budget-minutes > 0")
    if args.lightly_workers < 0 or args.profile < 0:
        p.error("--lightly-workers and --profile must be >= 0")
    return args


def measure_rounds(
    setup: Setup, args: argparse.Namespace, work: Path, threads: int, cores: int
) -> dict[str, list[Measurement]]:
    """``args.repeats`` interleaved rounds (mmssl, lightly, mmssl, lightly, ...), every measurement printed."""

    def side(name: str) -> Callable[[int], Measurement]:
        def run(r: int) -> Measurement:
            out_dir = work / f"round{r + 1}-{name}"
            shutil.rmtree(out_dir, ignore_errors=True)
            m = run_side(name, setup, args.skip, args.steps, out_dir)
            harness.check_threads(name, threads)
            print(
                f"round {r + 1}/{args.repeats} {name:>7}: {m.images_per_s:7.1f} images/s  cpu {m.cpu:.2f}  "
                f"other {m.other:.2f}  loss {m.loss:.3f}{harness.flags(m.cpu, cores, m.other)}",
                flush=True,
            )
            return m

        return run

    def round_ratio(r: int, runs: Mapping[str, list[Measurement]]) -> None:
        print(
            f"round {r + 1}/{args.repeats} ratio: {runs['mmssl'][-1].images_per_s / runs['lightly'][-1].images_per_s:.2f}x",
            flush=True,
        )

    return harness.interleave(
        {name: side(name) for name in ("mmssl", "lightly")}, args.repeats, after_round=round_ratio
    )


@dataclass(frozen=True)
class Quality:
    """Each side's budget run and the kNN accuracy of its backbone (and of the untrained one, ``random_init``)."""

    knn: dict[str, float]
    budget: dict[str, Measurement]
    warmup: dict[str, float]  # seconds of each budget run's first ``skip`` steps
    knn_train: int
    knn_test: int


def measure_quality(setup: Setup, args: argparse.Namespace, work: Path) -> Quality:
    """Train each side for ``args.budget_minutes`` from scratch, then probe every backbone with the same kNN."""
    rows = knn_rows(setup, args.knn_train, args.knn_test)
    torch.manual_seed(setup.train.seed)
    knn = {"random_init": knn_of(lightly_model(setup.recipe).backbone[0], setup, rows)}
    budget: dict[str, Measurement] = {}
    warmup: dict[str, float] = {}
    for side in ("mmssl", "lightly"):
        backbone, budget[side], warmup[side] = budget_run(
            side, setup, args.budget_minutes, work / f"budget-{side}", args.skip
        )
        knn[side] = knn_of(backbone, setup, rows)
        b = budget[side]
        print(
            f"budget {args.budget_minutes:g} min {side:>7}: {b.steps} steps, {b.images_per_s:.1f} images/s overall "
            f"(first {args.skip} steps {warmup[side]:.1f} s), cpu {b.cpu:.2f}, other {b.other:.2f}, loss {b.loss:.3f}; "
            f"kNN accuracy {knn[side]:.4f}",
            flush=True,
        )
    print(
        f"kNN accuracy (k=200, {len(rows[0])} train / {len(rows[1])} test): mmssl {knn['mmssl']:.4f}, "
        f"lightly {knn['lightly']:.4f}, untrained backbone {knn['random_init']:.4f}"
    )
    return Quality(knn, budget, warmup, len(rows[0]), len(rows[1]))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; prints a report ending with one JSON line, which is also returned as a dict."""
    import lightly

    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    threads, cores = torch.get_num_threads(), len(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory(prefix="image_simclr_bench-") as tmp:
        work = args.work_dir or Path(tmp)
        setup = build_setup(args, work)
        t, enc = setup.train, setup.recipe.encoder
        precision = "bf16 autocast" if setup.bf16 else "fp32"
        print(
            f"simclr recipe: ResNet-{enc.resnet_depth} width {enc.resnet_width}, batch {t.batch_size}, "
            f"{len(setup.data.dataset)} images, {precision} on both sides; lightly {lightly.__version__} with "
            f"{setup.workers} DataLoader workers; torch {torch.__version__}, {threads} threads, {cores} cores; "
            f"{args.skip} untimed + {args.steps} timed steps",
            flush=True,
        )
        runs = measure_rounds(setup, args, work, threads, cores)
        medians = harness.medians(runs, lambda m: m.images_per_s)
        ratio = harness.ratio(medians, "mmssl", "lightly")
        print(
            f"median: mmssl {medians['mmssl']:.1f} images/s, lightly {medians['lightly']:.1f} images/s, ratio {ratio:.2f}x"
        )
        contended = sum(harness.contended(m.cpu, cores) for ms in runs.values() for m in ms)
        busy = sum(harness.busy(m.other, cores) for ms in runs.values() for m in ms)
        harness.warn_if_contended(contended, cores, busy)
        quality = measure_quality(setup, args, work)
        parts = profile(setup, args.profile) if args.profile else None
    record = {
        "benchmark": "image_simclr",
        "mmssl_images_per_s": round(medians["mmssl"], 1),
        "lightly_images_per_s": round(medians["lightly"], 1),
        "ratio": round(ratio, 3),
        "repeats": args.repeats,
        "steps": args.steps,
        "skip": args.skip,
        "batch_size": t.batch_size,
        "model": {
            "resnet_depth": enc.resnet_depth,
            "resnet_width": enc.resnet_width,
            "projector": [setup.recipe.objective.projector_hidden_dim, setup.recipe.objective.projector_dim],
        },
        "precision": t.mixed_precision,
        "lightly_workers": setup.workers,
        "torch_threads": threads,
        "cores": cores,
        "torch": torch.__version__,
        "lightly": lightly.__version__,
        **side_figures(runs, contended, busy),
        **budget_figures(args.budget_minutes, quality),
    }
    if parts:
        record["profile_ms"] = parts
    return harness.print_record(record)


def side_figures(runs: Mapping[str, list[Measurement]], contended: int, busy: int) -> dict[str, Any]:
    """The JSON line's per-measurement figures of the timed rounds and their flag counts."""
    return {
        **{f"{side}_runs": [round(m.images_per_s, 1) for m in ms] for side, ms in runs.items()},
        **{f"{side}_cpu": [round(m.cpu, 2) for m in ms] for side, ms in runs.items()},
        **{f"{side}_other": [round(m.other, 2) for m in ms] for side, ms in runs.items()},
        "contended": contended,
        "busy": busy,
    }


def budget_figures(minutes: float, quality: Quality) -> dict[str, Any]:
    """The JSON line's figures of the budget runs and the kNN probes."""
    budget = quality.budget
    return {
        "budget_minutes": minutes,
        "budget_steps": {side: b.steps for side, b in budget.items()},
        "budget_images_per_s": {side: round(b.images_per_s, 1) for side, b in budget.items()},
        "budget_cpu": {side: round(b.cpu, 2) for side, b in budget.items()},
        "budget_other": {side: round(b.other, 2) for side, b in budget.items()},
        "budget_warmup_s": {side: round(w, 1) for side, w in quality.warmup.items()},
        "knn": {k: round(v, 4) for k, v in quality.knn.items()},
        "knn_train": quality.knn_train,
        "knn_test": quality.knn_test,
    }


if __name__ == "__main__":
    main()
