"""Barlow Twins (Zbontar et al. 2021): the cross-correlation of two views' projections driven to the identity."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from mmssl.encoder import Encoder
from mmssl.objectives.base import Objective
from mmssl.objectives.checks import check_positive
from mmssl.objectives.heads import HEAD_SHAPES, configured_head
from mmssl.objectives.losses import check_pair, full_precision, gather_pair, off_diagonal
from mmssl.objectives.views import embedding_std, represent, views_of
from mmssl.types import Batch, ObjectiveOutput


@full_precision
def barlow_twins_loss(z1: Tensor, z2: Tensor, lambda_offdiag: float = 5e-3, gather: bool = True) -> Tensor:
    """Barlow Twins (Zbontar et al. 2021, eq. 1 and 2).

    Each feature is batch-normalised over the *global* batch of ``N`` samples (zero mean,
    biased unit variance, eps 1e-5, no affine: the official code's SyncBatchNorm), then::

        C = z1_norm.T @ z2_norm / N                       # [D, D] cross-correlation
        loss = sum_i (1 - C_ii)^2 + lambda * sum_{i != j} C_ij^2

    Every process computes the same global loss, which DDP's averaging leaves unchanged.

    Args:
        z1: ``[B, D]`` projections of the first view.
        z2: ``[B, D]`` projections of the second view.
        lambda_offdiag: redundancy-reduction weight (paper: 5e-3).
        gather: normalise and correlate over the batch of every process.

    Returns:
        Scalar loss.

    Raises:
        ValueError: On mismatched shapes, a global batch below 2 or ``lambda_offdiag < 0``.
    """
    check_pair(z1, z2, "z1 and z2")
    if lambda_offdiag < 0:
        raise ValueError(f"lambda_offdiag must be >= 0, got {lambda_offdiag}")
    z1, z2 = gather_pair(z1, z2, gather)
    c = F.batch_norm(z1, None, None, training=True).T @ F.batch_norm(z2, None, None, training=True) / z1.shape[0]
    return (1.0 - c.diagonal()).pow(2).sum() + lambda_offdiag * off_diagonal(c).pow(2).sum()


@dataclass(frozen=True)
class BarlowTwinsConfig:
    """Barlow Twins (Zbontar et al. 2021)."""

    name: str = "barlow_twins"
    lambda_offdiag: float = 5e-3  # sec. 2
    projector_hidden_dim: int = HEAD_SHAPES["barlow_twins_projector"].hidden_dim  # 8192, sec. 3
    projector_dim: int = HEAD_SHAPES["barlow_twins_projector"].out_dim  # 8192

    def __post_init__(self) -> None:
        check_positive(self, "projector_hidden_dim", "projector_dim")
        if self.lambda_offdiag < 0:
            raise ValueError(f"objective.lambda_offdiag must be >= 0, got {self.lambda_offdiag}")


class BarlowTwins(Objective):
    """Cross-correlation of the two views' projections driven to the identity (Zbontar et al. 2021, eq. 1).

    Logs ``cross_correlation_diagonal``, the mean of ``C_ii`` over this process's batch
    (1 when every feature is invariant to the augmentation).
    """

    def __init__(self, config: BarlowTwinsConfig, encoder: Encoder) -> None:
        super().__init__(config, encoder)
        self.projector = configured_head(
            "barlow_twins_projector", encoder.hidden_size, config.projector_hidden_dim, config.projector_dim
        )

    def forward(self, encoder: Encoder, batch: Batch) -> ObjectiveOutput:
        v1, v2 = views_of(batch, "barlow_twins", exactly_two=True)
        z1, z2 = self.projector(represent(encoder, v1)), self.projector(represent(encoder, v2))
        loss = barlow_twins_loss(z1, z2, self.config.lambda_offdiag)
        with torch.no_grad():
            n1, n2 = (F.batch_norm(z.float(), None, None, training=True) for z in (z1, z2))
            diagonal = (n1 * n2).mean(0).mean()
        logs = {"cross_correlation_diagonal": diagonal, "embedding_std": embedding_std(z1)}
        return ObjectiveOutput(loss=loss, terms={"barlow_twins": loss}, logs=logs)
