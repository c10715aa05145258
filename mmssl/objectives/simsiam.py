"""SimSiam (Chen & He 2021): negative cosine of each view's prediction to the other's stop-gradient projection.

No teacher and no negatives: the stop-gradient alone prevents collapse (sec. 4.1).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from mmssl.encoder import Encoder
from mmssl.objectives.base import Objective
from mmssl.objectives.checks import check_positive
from mmssl.objectives.heads import HEAD_SHAPES, configured_head
from mmssl.objectives.losses import cosine_to_target, full_precision
from mmssl.objectives.views import embedding_std, represent, views_of
from mmssl.types import Batch, ObjectiveOutput


@full_precision
def simsiam_loss(p: Tensor, z: Tensor) -> Tensor:
    """SimSiam's negative cosine similarity (Chen & He 2021, eq. 1 with eq. 3): ``-mean_i cos(p_i, stopgrad(z_i))``.

    In ``[-1, 1]``. The stop-gradient on ``z`` is what prevents collapse (sec. 4.1) and is
    applied here. SimSiam symmetrises: ``(simsiam_loss(p1, z2) + simsiam_loss(p2, z1)) / 2``.

    Args:
        p: ``[B, D]`` predictor outputs.
        z: ``[B, D]`` projections of the other view (same network).

    Returns:
        Scalar loss, the mean over the batch.

    Raises:
        ValueError: If the shapes differ or are not ``[B, D]``.
    """
    return -cosine_to_target(p, z).mean()


@dataclass(frozen=True)
class SimSiamConfig:
    """SimSiam (Chen & He 2021)."""

    name: str = "simsiam"
    projector_hidden_dim: int = HEAD_SHAPES["simsiam_projector"].hidden_dim  # 2048, sec. 4.1
    projector_dim: int = HEAD_SHAPES["simsiam_projector"].out_dim  # 2048
    predictor_hidden_dim: int = HEAD_SHAPES["simsiam_predictor"].hidden_dim  # 512, a bottleneck

    def __post_init__(self) -> None:
        check_positive(self, "projector_hidden_dim", "projector_dim", "predictor_hidden_dim")


class SimSiam(Objective):
    """Negative cosine of each view's prediction to the other's stop-gradient projection, no teacher;
    symmetrised as in the paper (eq. 2): ``(simsiam_loss(p1, z2) + simsiam_loss(p2, z1)) / 2``."""

    def __init__(self, config: SimSiamConfig, encoder: Encoder) -> None:
        super().__init__(config, encoder)
        self.projector = configured_head(
            "simsiam_projector", encoder.hidden_size, config.projector_hidden_dim, config.projector_dim
        )
        self.predictor = configured_head(
            "simsiam_predictor", config.projector_dim, config.predictor_hidden_dim, config.projector_dim
        )

    def forward(self, encoder: Encoder, batch: Batch) -> ObjectiveOutput:
        v1, v2 = views_of(batch, "simsiam", exactly_two=True)
        z1, z2 = self.projector(represent(encoder, v1)), self.projector(represent(encoder, v2))
        p1, p2 = self.predictor(z1), self.predictor(z2)
        loss = (simsiam_loss(p1, z2) + simsiam_loss(p2, z1)) / 2
        return ObjectiveOutput(loss=loss, terms={"simsiam": loss}, logs={"embedding_std": embedding_std(z1)})
