"""SimCLR (Chen et al. 2020): NT-Xent between the projections of augmented views, with multi-crop.

The views come from the domain's transform (:mod:`mmssl.objectives.views`); SimCLR also takes
multi-crop local views, each contrasted with both global views.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from mmssl.distributed import gather_with_grad, process_rank
from mmssl.encoder import Encoder
from mmssl.objectives.base import Objective
from mmssl.objectives.checks import check_positive
from mmssl.objectives.heads import HEAD_SHAPES, configured_head
from mmssl.objectives.losses import check_pair, check_temperature, f32, full_precision
from mmssl.objectives.views import contrastive_accuracy, embedding_std, global_pairs, represent, views_of
from mmssl.types import Batch, ObjectiveOutput


@full_precision
def nt_xent(z1: Tensor, z2: Tensor, temperature: float = 0.5, gather: bool = True) -> Tensor:
    """SimCLR's normalized temperature-scaled cross entropy (Chen et al. 2020, eq. 1).

    With ``s_ij`` the cosine similarity of views ``i`` and ``j`` among the ``2N`` views of
    the global batch and ``p(i)`` the other view of ``i``'s sample::

        l_i = -log( exp(s_i,p(i) / tau) / sum_{k != i} exp(s_ik / tau) )

    so each anchor has one positive and ``2N - 2`` negatives. The loss is the mean of
    ``l_i`` over this process's ``2B`` anchors, which DDP's averaging turns into the mean
    over all ``2N``.

    Args:
        z1: ``[B, D]`` embeddings of the first view.
        z2: ``[B, D]`` embeddings of the second view of the same samples.
        temperature: ``tau`` (SimCLR's official runs: 0.1 on ImageNet, 0.5 on CIFAR-10).
        gather: take negatives from every process (no-op in one process).

    Returns:
        Scalar loss.

    Raises:
        ValueError: If the shapes differ or are not ``[B, D]``, or ``temperature <= 0``.
    """
    check_pair(z1, z2, "z1 and z2")
    check_temperature(temperature)
    b = z1.shape[0]
    anchors = F.normalize(f32(torch.cat([z1, z2])), dim=1)  # [2B, D]: view 1 then view 2
    candidates = gather_with_grad(anchors) if gather else anchors  # [W * 2B, D], process r at r * 2B
    logits = anchors @ candidates.T / temperature  # [2B, W * 2B]
    local = torch.arange(2 * b, device=z1.device)
    offset = 2 * b * (process_rank() if gather else 0)
    logits[local, offset + local] = float("-inf")  # an anchor is not its own negative
    positives = offset + (local + b) % (2 * b)
    return F.cross_entropy(logits, positives)


@dataclass(frozen=True)
class SimCLRConfig:
    """SimCLR (Chen et al. 2020)."""

    name: str = "simclr"
    temperature: float = 0.5  # Chen et al. 2020: 0.5 for CIFAR-10 (0.1 for ImageNet with 4096-sample batches)
    projector_hidden_dim: int = HEAD_SHAPES["simclr_projector"].hidden_dim  # 2048, sec. 2.1
    projector_dim: int = HEAD_SHAPES["simclr_projector"].out_dim  # 128

    def __post_init__(self) -> None:
        check_positive(self, "temperature", "projector_hidden_dim", "projector_dim")


class SimCLR(Objective):
    """NT-Xent between the projections of two views (Chen et al. 2020, eq. 1).

    With multi-crop views the loss is the mean of :func:`nt_xent` over :func:`global_pairs`
    (each pair is already symmetric: both views are anchors); two views give ``nt_xent(z1, z2)``.
    """

    def __init__(self, config: SimCLRConfig, encoder: Encoder) -> None:
        super().__init__(config, encoder)
        self.projector = configured_head(
            "simclr_projector", encoder.hidden_size, config.projector_hidden_dim, config.projector_dim
        )

    def forward(self, encoder: Encoder, batch: Batch) -> ObjectiveOutput:
        z = [self.projector(represent(encoder, v)) for v in views_of(batch, "simclr")]  # V x [B, P]
        pairs = global_pairs(len(z))
        loss = torch.stack([nt_xent(z[i], z[j], self.config.temperature) for i, j in pairs]).mean()
        logs = {"contrastive_accuracy": contrastive_accuracy(z[0], z[1]), "embedding_std": embedding_std(z[0])}
        return ObjectiveOutput(loss=loss, terms={"nt_xent": loss}, logs=logs)
