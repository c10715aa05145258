"""The loop behind the tests' "loss decreases" checks: plain optimizer steps on small batches."""

from __future__ import annotations

from collections.abc import Callable

import torch

from mmssl.objectives.base import SSLModel
from mmssl.types import Batch


def fit(
    model: SSLModel,
    batch: Batch | Callable[[int], Batch],
    steps: int,
    lr: float,
    *,
    optimizer: type[torch.optim.Optimizer] = torch.optim.AdamW,
    seed: Callable[[int], int] | None = None,
) -> list[float]:
    """Train ``model`` for ``steps`` optimizer steps and return the loss of each.

    Args:
        model: encoder + objective; after every step its ``after_optimizer_step(step, steps)``
            runs, as in the trainer (EMA teachers, queues).
        batch: one fixed batch, or a function of the 1-based step that returns that step's batch.
        steps: how many optimizer steps.
        lr: the optimizer's learning rate, over the parameters that take a gradient.
        optimizer: the optimizer class.
        seed: a function of the 1-based step that gives the seed set before that step's
            forward pass, which fixes its random masks and views (``lambda step: 0`` draws the
            same ones every step); ``None`` leaves the generator running.
    """
    opt = optimizer([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    for step in range(1, steps + 1):
        if seed is not None:
            torch.manual_seed(seed(step))
        out = model(batch(step) if callable(batch) else batch)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        model.after_optimizer_step(step, steps)
        losses.append(float(out.loss.detach()))
    return losses


def first_last(losses: list[float], window: int = 5, skip: int = 0) -> tuple[float, float]:
    """Mean loss of the first ``window`` steps (after ``skip``) and of the last ``window``."""
    first = losses[skip : skip + window]
    return sum(first) / len(first), sum(losses[-window:]) / window
