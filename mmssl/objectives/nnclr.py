"""NNCLR (Dwibedi et al. 2021): NT-Xent with nearest neighbours from a support queue as the positives.

Each view's projection ``z`` is replaced by its nearest neighbour in a support set of earlier
projections (:meth:`MemoryQueue.nearest`, a first-in-first-out queue kept in the checkpoint); the
neighbour of one view is the anchor of the other view's prediction in SimCLR's NT-Xent
(:func:`mmssl.objectives.simclr.nt_xent`, negatives gathered from every process). The support set
takes the second view's projections of every process after the loss, in training mode only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from mmssl.encoder import Encoder
from mmssl.objectives.base import Objective
from mmssl.objectives.checks import check_positive
from mmssl.objectives.heads import HEAD_SHAPES, MLPHead, configured_head
from mmssl.objectives.losses import full_precision
from mmssl.objectives.memory import MemoryQueue
from mmssl.objectives.simclr import nt_xent
from mmssl.objectives.views import embedding_std, represent, views_of
from mmssl.types import Batch, ObjectiveOutput


@full_precision
def nnclr_loss(
    nn1: Tensor, nn2: Tensor, p1: Tensor, p2: Tensor, temperature: float = 0.1, gather: bool = True
) -> Tensor:
    """NNCLR's symmetric loss (Dwibedi et al. 2021, eq. 2, with the prediction head)::

        loss = (nt_xent(NN(z1), p2) + nt_xent(NN(z2), p1)) / 2

    ``NN(z)`` is the nearest neighbour of each row of ``z`` in the support set
    (:meth:`MemoryQueue.nearest`, no gradient); :func:`mmssl.objectives.simclr.nt_xent` contrasts it
    with the prediction of the other view, the other samples' neighbours and predictions being the
    negatives, as lightly's NNCLR does with its NTXentLoss.

    Args:
        nn1: ``[B, D]`` support-set neighbours of the first view's projections.
        nn2: ``[B, D]`` support-set neighbours of the second view's projections.
        p1: ``[B, D]`` predictions from the first view's projections.
        p2: ``[B, D]`` predictions from the second view's projections.
        temperature: ``tau`` (paper: 0.1).
        gather: take negatives from every process (no-op in one process).

    Returns:
        Scalar loss.

    Raises:
        ValueError: On mismatched shapes or ``temperature <= 0``.
    """
    return (nt_xent(nn1.detach(), p2, temperature, gather) + nt_xent(nn2.detach(), p1, temperature, gather)) / 2


@dataclass(frozen=True)
class NNCLRConfig:
    """NNCLR (Dwibedi et al. 2021)."""

    name: str = "nnclr"
    temperature: float = 0.1  # the paper's ImageNet runs (batch 4096)
    queue_size: int = 98304  # the support set of the paper's ImageNet runs
    projector_hidden_dim: int = HEAD_SHAPES["nnclr_projector"].hidden_dim  # 2048
    projector_dim: int = HEAD_SHAPES["nnclr_projector"].out_dim  # 256
    predictor_hidden_dim: int = HEAD_SHAPES["nnclr_predictor"].hidden_dim  # 4096

    def __post_init__(self) -> None:
        check_positive(
            self, "temperature", "queue_size", "projector_hidden_dim", "projector_dim", "predictor_hidden_dim"
        )


class NNCLR(Objective):
    """NT-Xent between the support-set neighbour of one view and the prediction of the other (see module docstring).

    Two views exactly, as in the paper. The support set starts as random unit vectors (MoCo's queue) and
    holds the newest ``queue_size`` second-view projections, L2-normalised.
    """

    def __init__(self, config: NNCLRConfig, encoder: Encoder) -> None:
        super().__init__(config, encoder)
        self.projector: MLPHead = configured_head(
            "nnclr_projector", encoder.hidden_size, config.projector_hidden_dim, config.projector_dim
        )
        self.predictor: MLPHead = configured_head(
            "nnclr_predictor", config.projector_dim, config.predictor_hidden_dim, config.projector_dim
        )
        self.support = MemoryQueue(config.projector_dim, config.queue_size)

    def forward(self, encoder: Encoder, batch: Batch) -> ObjectiveOutput:
        v1, v2 = views_of(batch, "nnclr", exactly_two=True)
        z1, z2 = self.projector(represent(encoder, v1)), self.projector(represent(encoder, v2))
        p1, p2 = self.predictor(z1), self.predictor(z2)
        nn1, nn2 = self.support.nearest(z1), self.support.nearest(z2)  # before the enqueue: never themselves
        loss = nnclr_loss(nn1, nn2, p1, p2, self.config.temperature)
        if self.training:
            self.support.enqueue(F.normalize(z2.detach().float(), dim=1))
        logs = {"embedding_std": embedding_std(z1), "neighbour_similarity": cosine(z1, nn1)}
        return ObjectiveOutput(loss=loss, terms={"nnclr": loss}, logs=logs)


@torch.no_grad()
def cosine(z: Tensor, neighbours: Tensor) -> Tensor:
    """Mean cosine of each projection to its support-set neighbour (about 0 while the set holds its random start)."""
    return (F.normalize(z.float(), dim=1) * F.normalize(neighbours.float(), dim=1)).sum(1).mean()
