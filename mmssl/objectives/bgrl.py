"""Bootstrapped unit representations: BGRL (Thakoor et al. 2022), BYOL applied to every unit.

Modality-agnostic: the domain's transform puts two augmented views in
``Batch.views`` that share the batch's unit grid (a removed unit is padding in
its view); each unit present in both views is a sample. The online encoder's unit vectors
go through a predictor (:class:`MLPHead`), and regress the stop-gradient unit vectors of
the *other* view from an EMA copy of the encoder (:class:`mmssl.teacher.MomentumTeacher`,
momentum on BYOL's cosine schedule). BGRL has no projector (sec. 3). The loss is the
symmetrised :func:`mmssl.objectives.byol.byol_loss`, ``2 - 2 cos`` (the paper writes ``-cos``;
the gradients agree up to a factor 2).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mmssl.encoder import Encoder
from mmssl.objectives.base import Objective
from mmssl.objectives.byol import byol_loss
from mmssl.objectives.checks import check_momentum
from mmssl.objectives.heads import MLPHead
from mmssl.objectives.views import embedding_std, views_of
from mmssl.teacher import CosineSchedule, MomentumTeacher
from mmssl.types import Batch, ObjectiveOutput


@dataclass(frozen=True)
class BGRLConfig:
    """BGRL (Thakoor et al. 2022)."""

    name: str = "bgrl"
    base_momentum: float = 0.99  # sec. 4: 0.99 raised to 1 by a cosine
    final_momentum: float = 1.0
    predictor_hidden_dim: int = 512  # App. C: a 2-layer MLP predictor with 512 hidden units

    def __post_init__(self) -> None:
        check_momentum(self, "base_momentum", "final_momentum")
        if self.predictor_hidden_dim < 1:
            raise ValueError(f"objective.predictor_hidden_dim must be >= 1, got {self.predictor_hidden_dim}")


class BGRL(Objective):
    """``byol_loss(q(h1), h2') + byol_loss(q(h2), h1')`` over the units present in both views."""

    def __init__(self, config: BGRLConfig, encoder: Encoder) -> None:
        super().__init__(config, encoder)
        d = encoder.hidden_size
        self.predictor = MLPHead(d, config.predictor_hidden_dim, d, num_layers=2)
        # batch norm in the GNN uses batch statistics in the teacher too
        self.teacher = MomentumTeacher(
            encoder, CosineSchedule(config.base_momentum, config.final_momentum), train_mode=True
        )

    def _target(self, view: Batch) -> Tensor:
        with torch.no_grad():
            return self.teacher.module.encode(view).hidden

    def forward(self, encoder: Encoder, batch: Batch) -> ObjectiveOutput:
        v1, v2 = views_of(batch, "bgrl", exactly_two=True)
        both = ~v1.padding_mask & ~v2.padding_mask  # [B, T] units present in both views
        h1, h2 = encoder.encode(v1).hidden[both], encoder.encode(v2).hidden[both]  # [N, D]
        t1, t2 = self._target(v1)[both], self._target(v2)[both]
        loss = byol_loss(self.predictor(h1), t2) + byol_loss(self.predictor(h2), t1)
        logs = {"embedding_std": embedding_std(h1), "momentum": self.teacher.momentum.clone()}
        return ObjectiveOutput(loss=loss, terms={"bgrl": loss}, logs=logs)

    def after_optimizer_step(self, encoder: Encoder, step: int, max_steps: int) -> None:
        self.teacher.update(encoder, step, max_steps)
