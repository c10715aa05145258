"""A seconds-long training loop for the trainer and checkpoint tests: linear regression on 4 features."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from mmssl.metrics import read_metrics
from mmssl.recipe import TrainConfig
from mmssl.trainer import Trainer
from mmssl.types import Batch, ObjectiveOutput


class Regression(nn.Module):
    """y = w.x on 4 features; ``poison`` lists forward calls whose loss is NaN."""

    def __init__(self, poison: set[int] | None = None) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(4, 1)
        self.poison = poison or set()
        self.calls = 0

    def forward(self, batch: Batch) -> ObjectiveOutput:
        self.calls += 1
        pred = self.lin(batch.units[:, 0]).squeeze(-1)
        loss = nn.functional.mse_loss(pred, batch.extras["y"])
        if self.calls in self.poison:
            loss = loss * float("nan")
        return ObjectiveOutput(loss=loss, terms={"mse": loss})


def regression_data(n: int = 64) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=g)
    y = x @ torch.tensor([1.0, -2.0, 0.5, 3.0])
    return [{"x": x[i], "y": y[i]} for i in range(n)]


def regression_collate(rows: list[dict]) -> Batch:
    x = torch.stack([r["x"] for r in rows]).unsqueeze(1)  # [B, 1, 4]: one unit per sample
    return Batch(
        units=x,
        padding_mask=torch.zeros(len(rows), 1, dtype=torch.bool),
        extras={"y": torch.stack([r["y"] for r in rows])},
    )


def train_cfg(**kw: Any) -> TrainConfig:
    base = dict(
        max_steps=10, batch_size=8, lr=0.05, warmup_steps=0, log_every=1, checkpoint_every=100, weight_decay=0.0
    )
    return TrainConfig(**{**base, **kw})


def regression_trainer(run_dir: Path, model: nn.Module | None = None, **cfg: Any) -> Trainer:
    """A :class:`Trainer` of :class:`Regression` on 64 samples writing to ``run_dir``."""
    return Trainer(model or Regression(), regression_data(), regression_collate, train_cfg(**cfg), run_dir)


def stop_at(step: int):
    """A step hook that interrupts the run after optimizer step ``step`` (before it is logged), like Ctrl-C."""

    def hook(trainer: Trainer, now: int) -> None:
        if now == step:
            raise KeyboardInterrupt

    return hook


def losses(run_dir: Path) -> dict[int, float]:
    """``{step: loss}`` of the training lines of ``metrics.jsonl``."""
    return {r["step"]: r["loss"] for r in read_metrics(run_dir) if "event" not in r}


def logged_steps(run_dir: Path) -> list[int]:
    return [r["step"] for r in read_metrics(run_dir) if "event" not in r]


def tensorboard_scalars(run_dir: Path, tag: str = "loss") -> list[tuple[int, float]]:
    """``(step, value)`` of every point TensorBoard shows for ``tag`` (after its purges of re-run steps)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(Path(run_dir) / "tensorboard"))
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)]
