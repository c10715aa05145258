"""BYOL (Grill et al. 2020): online predictions regress an EMA target's projections of another view, multi-crop.

The target network is a :class:`mmssl.teacher.MomentumTeacher` copy of the student's encoder
and projector, its momentum raised from ``base_momentum`` to 1 by BYOL's cosine, moved towards
the student only in :meth:`BYOL.after_optimizer_step`. :func:`byol_loss` is also BGRL's loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mmssl.encoder import Encoder
from mmssl.objectives.base import Objective
from mmssl.objectives.checks import check_momentum, check_positive
from mmssl.objectives.heads import HEAD_SHAPES, configured_head
from mmssl.objectives.losses import cosine_to_target, full_precision
from mmssl.objectives.views import Branch, embedding_std, represent, views_of
from mmssl.teacher import CosineSchedule, MomentumTeacher
from mmssl.types import Batch, ObjectiveOutput


@full_precision
def byol_loss(p: Tensor, z: Tensor) -> Tensor:
    """BYOL's regression loss (Grill et al. 2020, eq. 2): ``mean_i ||p_i/|p_i| - z_i/|z_i| ||^2``.

    Equal to ``2 - 2 cos(p_i, z_i)``, in ``[0, 4]``. ``z`` is the target network's
    projection and receives no gradient (stop-gradient applied here). BYOL symmetrises:
    ``byol_loss(p1, z2') + byol_loss(p2, z1')``.

    Args:
        p: ``[B, D]`` online predictions.
        z: ``[B, D]`` target projections.

    Returns:
        Scalar loss, the mean over the batch.

    Raises:
        ValueError: If the shapes differ or are not ``[B, D]``.
    """
    return (2.0 - 2.0 * cosine_to_target(p, z)).mean()


@dataclass(frozen=True)
class BYOLConfig:
    """BYOL (Grill et al. 2020)."""

    name: str = "byol"
    base_momentum: float = 0.996  # sec. 3.2, raised to 1 by a cosine schedule
    final_momentum: float = 1.0
    projector_hidden_dim: int = HEAD_SHAPES["byol_projector"].hidden_dim  # 4096, sec. 3.3
    projector_dim: int = HEAD_SHAPES["byol_projector"].out_dim  # 256
    predictor_hidden_dim: int = HEAD_SHAPES["byol_predictor"].hidden_dim  # 4096

    def __post_init__(self) -> None:
        check_positive(self, "projector_hidden_dim", "projector_dim", "predictor_hidden_dim")
        check_momentum(self, "base_momentum", "final_momentum")


class BYOL(Objective):
    """Online predictions regress the EMA target's projections of another view (Grill et al. 2020, eq. 2).

    The target network sees the global views only. Every view's prediction regresses the
    target projection of each global view other than itself, and the loss is the sum over
    these ``2 (V - 1)`` pairs divided by ``V - 1``: for two views, the paper's symmetrised
    ``byol_loss(p1, z2') + byol_loss(p2, z1')``.
    """

    def __init__(self, config: BYOLConfig, encoder: Encoder) -> None:
        super().__init__(config, encoder)
        self.projector = configured_head(
            "byol_projector", encoder.hidden_size, config.projector_hidden_dim, config.projector_dim
        )
        self.predictor = configured_head(
            "byol_predictor", config.projector_dim, config.predictor_hidden_dim, config.projector_dim
        )
        schedule = CosineSchedule(config.base_momentum, config.final_momentum)
        self.teacher = MomentumTeacher(Branch(encoder, self.projector), schedule, train_mode=True)

    def forward(self, encoder: Encoder, batch: Batch) -> ObjectiveOutput:
        views = views_of(batch, "byol")
        z = [self.projector(represent(encoder, v)) for v in views]
        p = [self.predictor(zi) for zi in z]
        targets = [self.teacher(v) for v in views[:2]]
        pairs = [(v, g) for v in range(len(views)) for g in (0, 1) if v != g]
        loss = torch.stack([byol_loss(p[v], targets[g]) for v, g in pairs]).sum() / (len(views) - 1)
        logs = {"embedding_std": embedding_std(z[0]), "momentum": self.teacher.momentum.clone()}
        return ObjectiveOutput(loss=loss, terms={"byol": loss}, logs=logs)

    def after_optimizer_step(self, encoder: Encoder, step: int, max_steps: int) -> None:
        self.teacher.update(Branch(encoder, self.projector), step, max_steps)
