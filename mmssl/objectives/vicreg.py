"""VICReg (Bardes, Ponce & LeCun 2022): invariance, variance and covariance terms on two views' projections."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from mmssl.encoder import Encoder
from mmssl.objectives.base import Objective
from mmssl.objectives.checks import check_positive
from mmssl.objectives.heads import HEAD_SHAPES, configured_head
from mmssl.objectives.losses import check_pair, f32, full_precision, gather_pair, off_diagonal
from mmssl.objectives.views import embedding_std, represent, views_of
from mmssl.types import Batch, ObjectiveOutput


def variance_term(z: Tensor, eps: float) -> Tensor:
    """Hinge on each feature's standard deviation: ``mean_j relu(1 - sqrt(Var(z_j) + eps))``."""
    return F.relu(1.0 - torch.sqrt(z.var(dim=0) + eps)).mean()


def covariance_term(z: Tensor) -> Tensor:
    """Squared off-diagonal covariances divided by ``D``: ``sum_{i != j} Cov(z)_ij^2 / D``."""
    z = z - z.mean(dim=0)
    cov = z.T @ z / (z.shape[0] - 1)
    return off_diagonal(cov).pow(2).sum() / z.shape[1]


@full_precision
def vicreg_loss(
    z1: Tensor,
    z2: Tensor,
    sim_weight: float = 25.0,
    var_weight: float = 25.0,
    cov_weight: float = 1.0,
    eps: float = 1e-4,
    gather: bool = True,
) -> tuple[Tensor, dict[str, Tensor]]:
    """VICReg (Bardes, Ponce & LeCun 2022, eq. 1-6), as in the official code.

    * invariance ``s = mean((z1 - z2)^2)`` over the local batch and features (a local mean:
      DDP's averaging makes it the global one);
    * variance ``v = (h(z1) + h(z2)) / 2`` with ``h(z) = mean_j relu(1 - sqrt(Var(z_j) + eps))``;
    * covariance ``c = f(z1) + f(z2)`` with ``f(z) = sum_{i != j} Cov(z)_ij^2 / D``;

    variance and covariance use the unbiased estimates over the global batch, gathered
    from every process as the official code does. ``loss = lambda s + mu v + nu c``.

    Args:
        z1: ``[B, D]`` expander outputs of the first view.
        z2: ``[B, D]`` expander outputs of the second view.
        sim_weight: ``lambda`` (paper: 25).
        var_weight: ``mu`` (paper: 25).
        cov_weight: ``nu`` (paper: 1).
        eps: inside the square root of the variance (paper: 1e-4).
        gather: variance and covariance over the batch of every process.

    Returns:
        ``(loss, terms)``: the weighted total and the unweighted ``invariance``,
        ``variance`` and ``covariance`` terms.

    Raises:
        ValueError: On mismatched shapes, a global batch below 2, a negative weight or ``eps <= 0``.
    """
    check_pair(z1, z2, "z1 and z2")
    for name, value in (("sim_weight", sim_weight), ("var_weight", var_weight), ("cov_weight", cov_weight)):
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
    if eps <= 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    invariance = F.mse_loss(f32(z1), f32(z2))
    g1, g2 = gather_pair(z1, z2, gather)
    terms = {
        "invariance": invariance,
        "variance": (variance_term(g1, eps) + variance_term(g2, eps)) / 2,
        "covariance": covariance_term(g1) + covariance_term(g2),
    }
    loss = sim_weight * terms["invariance"] + var_weight * terms["variance"] + cov_weight * terms["covariance"]
    return loss, terms


@dataclass(frozen=True)
class VICRegConfig:
    """VICReg (Bardes, Ponce & LeCun 2022)."""

    name: str = "vicreg"
    sim_weight: float = 25.0  # lambda, sec. 4.1
    var_weight: float = 25.0  # mu
    cov_weight: float = 1.0  # nu
    eps: float = 1e-4
    projector_hidden_dim: int = HEAD_SHAPES["vicreg_projector"].hidden_dim  # 8192, sec. 4.1
    projector_dim: int = HEAD_SHAPES["vicreg_projector"].out_dim  # 8192

    def __post_init__(self) -> None:
        check_positive(self, "eps", "projector_hidden_dim", "projector_dim")
        for name in ("sim_weight", "var_weight", "cov_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"objective.{name} must be >= 0, got {getattr(self, name)}")


class VICReg(Objective):
    """Invariance, variance and covariance terms on the two views' projections (Bardes et al. 2022, eq. 6).

    ``terms`` holds the three unweighted terms; ``loss`` is their weighted sum.
    """

    def __init__(self, config: VICRegConfig, encoder: Encoder) -> None:
        super().__init__(config, encoder)
        self.projector = configured_head(
            "vicreg_projector", encoder.hidden_size, config.projector_hidden_dim, config.projector_dim
        )

    def forward(self, encoder: Encoder, batch: Batch) -> ObjectiveOutput:
        v1, v2 = views_of(batch, "vicreg", exactly_two=True)
        z1, z2 = self.projector(represent(encoder, v1)), self.projector(represent(encoder, v2))
        cfg = self.config
        loss, terms = vicreg_loss(z1, z2, cfg.sim_weight, cfg.var_weight, cfg.cov_weight, cfg.eps)
        return ObjectiveOutput(loss=loss, terms=terms, logs={"embedding_std": embedding_std(z1)})
