"""The wav2vec2 recipe's training step, mmssl vs transformers' own pretraining path, side by side.

Both train the same model (the recipe's sizes; the transformers model starts from a copy
of mmssl's weights) on the same batches (``batch_size`` clips of ``max_seconds`` of audio):

* mmssl: :class:`mmssl.objectives.wav2vec2.Wav2Vec2Objective` on the audio
  domain's ``Wav2Vec2ForPreTraining`` encoder (span masks and distractors drawn on the
  device; the contrastive logits of a row come from one ``[M, M]`` similarity matrix).
* transformers: the loop of ``examples/pytorch/speech-pretraining/run_wav2vec2_pretraining_no_trainer.py``:
  ``_compute_mask_indices`` and ``_sample_negative_indices`` (numpy, as its data collator
  does), ``Wav2Vec2ForPreTraining(...).loss / num_masked``, Gumbel temperature update.

Each step is forward + backward + AdamW update. Rounds interleave the two (alternating which
goes first); the figure per path is the median over rounds of seconds of audio per second.
The last line printed is one JSON object with both figures and ``ratio`` (mmssl / transformers).
The rounds, clock, medians and JSON line are ``benchmarks/harness.py``'s, shared by every
side-by-side script.

    flock /tmp/mmssl-cpu.lock nice -n 19 python benchmarks/audio_wav2vec2.py --rounds 5 --steps 3
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable, Mapping
from typing import Any

import harness  # benchmarks/harness.py: this script's folder comes first on sys.path
import numpy as np
import torch
from transformers import Wav2Vec2ForPreTraining
from transformers.models.wav2vec2.modeling_wav2vec2 import _compute_mask_indices, _sample_negative_indices

from domains.audio.domain import make_processor
from domains.audio.encoders import wav2vec2_config
from mmssl.model import build_model
from mmssl.objectives.wav2vec2 import gumbel_temperature
from mmssl.recipe import load_recipe


def speech_like(batch_size: int, samples: int, seed: int) -> torch.Tensor:
    """Normalised waveforms: random harmonic sweeps with noise (the step cost does not depend on content)."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(samples) / 16000
    f0 = 100 + 200 * torch.rand(batch_size, 1, generator=g)
    x = torch.sin(2 * torch.pi * f0 * t * (1 + 0.3 * torch.sin(t))) + 0.1 * torch.randn(
        batch_size, samples, generator=g
    )
    return (x - x.mean(1, keepdim=True)) / x.std(1, keepdim=True)


def autocast(device: str, bf16: bool):
    """bf16 autocast on ``device`` for both paths alike (a no-op context when ``bf16`` is False)."""
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=bf16)


class MmsslPath:
    def __init__(self, recipe, device: str = "cpu", bf16: bool = False) -> None:
        torch.manual_seed(0)
        self.device, self.bf16 = device, bf16
        self.model = build_model(recipe, make_processor(recipe.data)).to(device)
        self.model.train()
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=recipe.train.lr)
        self.step_count = 0

    def step(self, waves: torch.Tensor) -> float:
        from mmssl.types import Batch

        waves = waves.to(self.device)
        with autocast(self.device, self.bf16):
            out = self.model(
                Batch(units=waves, padding_mask=torch.zeros(waves.shape, dtype=torch.bool, device=self.device))
            )
        out.loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.step_count += 1
        self.model.after_optimizer_step(self.step_count, 10**6)
        return float(out.loss.detach())


class TransformersPath:
    def __init__(self, recipe, weights: dict, device: str = "cpu", bf16: bool = False) -> None:
        self.cfg = recipe.objective
        self.device, self.bf16 = device, bf16
        self.model = Wav2Vec2ForPreTraining(wav2vec2_config(recipe.encoder))
        self.model.load_state_dict(weights)
        self.model.to(device)
        self.model.config.num_negatives = self.cfg.num_negatives
        self.model.config.contrastive_logits_temperature = self.cfg.logit_temperature
        self.model.config.diversity_loss_weight = self.cfg.diversity_weight
        self.model.train()
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=recipe.train.lr)
        self.step_count = 0

    def step(self, waves: torch.Tensor) -> float:
        frames = int(self.model._get_feat_extract_output_lengths(waves.shape[1]))
        shape = (waves.shape[0], frames)
        mask = _compute_mask_indices(
            shape,
            mask_prob=self.cfg.mask_prob * self.cfg.mask_length,
            mask_length=self.cfg.mask_length,
            min_masks=self.cfg.min_masks,
        )
        negatives = _sample_negative_indices(shape, self.cfg.num_negatives, mask)
        mask = torch.tensor(mask, dtype=torch.long, device=self.device)
        with autocast(self.device, self.bf16):
            out = self.model(
                waves.to(self.device),
                mask_time_indices=mask,
                sampled_negative_indices=torch.tensor(negatives, dtype=torch.long, device=self.device),
            )
        (out.loss / mask.sum()).backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.step_count += 1
        self.model.set_gumbel_temperature(
            gumbel_temperature(self.step_count, self.cfg.gumbel_start, self.cfg.gumbel_end, self.cfg.gumbel_decay)
        )
        return float(out.loss.detach() / mask.sum())


def timed(path, waves: list[torch.Tensor]) -> float:
    """Seconds for one step per batch in ``waves`` (each step ends in a host sync: its loss is read)."""
    start = harness.stamp()
    for w in waves:
        path.step(w)
    return harness.span(start, harness.stamp()).wall


def profile(path, waves: list[torch.Tensor], device: str, top: int = 10) -> str:
    """torch.profiler table of ``len(waves)`` steps: the ops with the most self time on the device
    (on the CPU when there is no GPU)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    cuda = device.startswith("cuda")
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with torch_profile(activities=activities) as prof:
        timed(path, waves)
    return prof.key_averages().table(sort_by="self_cuda_time_total" if cuda else "self_cpu_time_total", row_limit=top)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="wav2vec2")
    parser.add_argument("--set", action="append", default=[], help="recipe overrides, e.g. train.batch_size=8")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per path and round")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--profile", type=int, default=0, metavar="N", help="also profile N steps of each path")
    parser.add_argument(
        "--bf16", action="store_true", help="bf16 autocast on both paths (losses as each path computes them)"
    )
    return parser.parse_args()


def measure_rounds(
    paths: Mapping[str, Any], rounds: int, steps: int, batch: int, seconds: float, samples: int
) -> dict[str, list[float]]:
    """Seconds of audio per second of each path, ``rounds`` rounds alternating which path goes first;
    both paths of a round step through the same ``steps`` batches."""

    @functools.lru_cache(maxsize=1)  # made once per round, before either path's clock starts
    def round_waves(r: int) -> list[torch.Tensor]:
        return [speech_like(batch, samples, 1000 * r + i) for i in range(steps)]

    def side(path: Any) -> Callable[[int], float]:
        return lambda r: batch * seconds * steps / timed(path, round_waves(r))

    def report(r: int, rates: Mapping[str, list[float]]) -> None:
        print(
            f"round {r + 1}/{rounds}: mmssl {rates['mmssl'][-1]:.2f}, transformers "
            f"{rates['transformers'][-1]:.2f} s of audio per s",
            flush=True,
        )

    return harness.interleave(
        {name: side(path) for name, path in paths.items()}, rounds, alternate=True, after_round=report
    )


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    recipe = load_recipe(args.recipe, args.set)
    batch, seconds = recipe.train.batch_size, recipe.data.max_seconds
    samples = int(seconds * recipe.data.sampling_rate)
    ours = MmsslPath(recipe, args.device, args.bf16)
    theirs = TransformersPath(recipe, ours.model.encoder.model.state_dict(), args.device, args.bf16)
    np.random.seed(0)
    for path in (ours, theirs):  # warm-up (allocator, first-call overheads)
        timed(path, [speech_like(batch, samples, 99)])
    paths = {"mmssl": ours, "transformers": theirs}
    rates = measure_rounds(paths, args.rounds, args.steps, batch, seconds, samples)
    if args.profile:
        waves = [speech_like(batch, samples, 7000 + i) for i in range(args.profile)]
        for name, path in paths.items():
            print(f"--- {name}: {args.profile} profiled steps\n{profile(path, waves, args.device)}", flush=True)
    medians = harness.medians(rates, float)
    harness.print_record(
        {
            "benchmark": "audio_wav2vec2",
            "recipe": recipe.name,
            "batch_size": batch,
            "clip_seconds": seconds,
            "num_negatives": recipe.objective.num_negatives,
            "threads": args.threads,
            "device": harness.device_name(args.device),
            "bf16": args.bf16,
            "rounds": args.rounds,
            "steps_per_round": args.steps,
            "mmssl_audio_s_per_s": round(medians["mmssl"], 3),
            "transformers_audio_s_per_s": round(medians["transformers"], 3),
            "ratio": round(harness.ratio(medians, "mmssl", "transformers"), 3),
        }
    )


if __name__ == "__main__":
    main()
