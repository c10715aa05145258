"""Base class of every objective: ``forward(encoder, batch) -> ObjectiveOutput``."""

from __future__ import annotations

from torch import nn

from mmssl.encoder import Encoder
from mmssl.types import Batch, ObjectiveOutput


class Objective(nn.Module):
    """A self-supervised objective, knowing no modality.

    An objective owns its heads (projectors, predictors, decoders, teachers) and reads
    the encoder only through :class:`mmssl.encoder.Encoder`. The trainer calls
    :meth:`after_optimizer_step` right after each optimizer step; objectives with an EMA
    teacher update it there, visibly, never inside ``forward``.
    """

    def __init__(self, config: object, encoder: Encoder) -> None:
        super().__init__()
        self.config = config

    def forward(self, encoder: Encoder, batch: Batch) -> ObjectiveOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def after_optimizer_step(self, encoder: Encoder, step: int, max_steps: int) -> None:
        """Hook for momentum/EMA updates and schedules, given the (unwrapped) student ``encoder``;
        ``step`` counts completed optimizer steps."""


class SSLModel(nn.Module):
    """The trained module: an encoder composed with an objective (one module for Accelerate/DDP)."""

    def __init__(self, encoder: Encoder, objective: Objective) -> None:
        super().__init__()
        self.encoder = encoder
        self.objective = objective

    def forward(self, batch: Batch) -> ObjectiveOutput:
        return self.objective(self.encoder, batch)

    def after_optimizer_step(self, step: int, max_steps: int) -> None:
        self.objective.after_optimizer_step(self.encoder, step, max_steps)
