"""Exemplar triplets (Dosovitskiy et al. 2014; FaceNet's loss and mining, Schroff et al. 2015).

Every image is its own class (Exemplar-CNN's surrogate classes): the augmented views of one image
are positives of each other, the views of the batch's other images negatives. With the views'
projections L2-normalised (FaceNet's embedding on the unit hypersphere), each (anchor, positive) pair
of views of one image gets one negative mined in the batch and pays the triplet margin loss

    max(0, d(a, p) - d(a, n) + margin).

Semi-hard mining (FaceNet sec. 3.2, as TensorFlow Addons' ``triplet_semihard_loss`` implements it):
the negative is the closest one that is farther from the anchor than the positive (those within the
margin are the semi-hard ones; a closest-farther one beyond the margin gives a zero loss, as every
farther one would). When no negative is farther than the positive, TF-Addons falls back to the
farthest negative (``fallback_negative: farthest``); ``hardest`` takes the closest one instead.
Negatives come from this process's batch (FaceNet mines within its mini-batch too).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from mmssl.encoder import Encoder
from mmssl.objectives.base import Objective
from mmssl.objectives.checks import check_positive
from mmssl.objectives.heads import HEAD_SHAPES, configured_head
from mmssl.objectives.losses import full_precision
from mmssl.objectives.views import embedding_std, represent, views_of
from mmssl.types import Batch, ObjectiveOutput

DISTANCES = ("euclidean", "squared_euclidean", "cosine")


def distance(a: Tensor, b: Tensor, kind: str) -> Tensor:
    """Row-wise distance of L2-normalised embeddings ``[..., P]`` -> ``[...]``.

    ``euclidean`` ``|a - b|``, ``squared_euclidean`` ``|a - b|^2`` (FaceNet), ``cosine`` ``1 - a.b``.
    """
    if kind == "cosine":
        return 1.0 - (a * b).sum(-1)
    squared = (a - b).pow(2).sum(-1)
    return squared if kind == "squared_euclidean" else squared.sqrt()


@torch.no_grad()
def distance_matrix(z: Tensor, kind: str) -> Tensor:
    """``[N, P]`` L2-normalised embeddings -> ``[N, N]`` distances between all of them (for mining only)."""
    if kind == "cosine":
        return 1.0 - z @ z.T
    euclidean = torch.cdist(z, z)
    return euclidean.square() if kind == "squared_euclidean" else euclidean


@torch.no_grad()
def mine_semi_hard(dist: Tensor, labels: Tensor, anchor: Tensor, positive: Tensor, fallback: str) -> Tensor:
    """The semi-hard negative of each (anchor, positive) pair (see module docstring).

    Args:
        dist: ``[N, N]`` distances between the batch's embeddings.
        labels: ``[N]`` the image of each embedding (views of one image share it).
        anchor: ``[M]`` anchor indices.
        positive: ``[M]`` positive indices (same label as the anchor).
        fallback: ``farthest`` (TF-Addons) or ``hardest``: the negative when none is farther than the positive.

    Returns:
        ``[M]`` negative indices (label differs from the anchor's).

    Raises:
        ValueError: If an anchor has no negative (every embedding is a view of one image).
    """
    d_an = dist[anchor]  # [M, N]
    negative = labels[anchor][:, None] != labels[None, :]
    if not bool(negative.any(1).all()):
        raise ValueError("triplet mining needs views of at least two images in the batch (train.batch_size >= 2)")
    farther = negative & (d_an > dist[anchor, positive][:, None])
    semi_hard = d_an.masked_fill(~farther, float("inf")).argmin(1)
    if fallback == "farthest":
        other = d_an.masked_fill(~negative, float("-inf")).argmax(1)
    else:
        other = d_an.masked_fill(~negative, float("inf")).argmin(1)
    return torch.where(farther.any(1), semi_hard, other)


def positive_pairs(labels: Tensor) -> tuple[Tensor, Tensor]:
    """Every ordered pair ``(a, p)``, ``a != p``, of embeddings with one label: ``([M], [M])`` indices."""
    same = labels[:, None] == labels[None, :]
    same.fill_diagonal_(False)
    anchor, positive = same.nonzero(as_tuple=True)
    return anchor, positive


@full_precision
def semi_hard_triplet_loss(
    z: Tensor, labels: Tensor, margin: float, kind: str = "squared_euclidean", fallback: str = "farthest"
) -> tuple[Tensor, Tensor]:
    """The triplet margin loss over every positive pair of the batch, each with its mined negative.

    Args:
        z: ``[N, P]`` embeddings (normalised here).
        labels: ``[N]`` image of each embedding.
        margin: the margin ``alpha`` (> 0).
        kind: a :data:`DISTANCES` entry.
        fallback: as :func:`mine_semi_hard`.

    Returns:
        ``(loss, negatives)``: the mean of ``max(0, d(a, p) - d(a, n) + margin)`` over the ``M`` pairs
        (TF-Addons' normalisation), and the ``[M]`` mined negatives.
    """
    z = F.normalize(z.float(), dim=1)
    anchor, positive = positive_pairs(labels)
    negative = mine_semi_hard(distance_matrix(z, kind), labels, anchor, positive, fallback)
    d_ap = distance(z[anchor], z[positive], kind)
    d_an = distance(z[anchor], z[negative], kind)
    return F.relu(d_ap - d_an + margin).mean(), negative


@dataclass(frozen=True)
class TripletConfig:
    """Exemplar triplets with semi-hard mining (Dosovitskiy et al. 2014; Schroff et al. 2015)."""

    name: str = "triplet"
    margin: float = 0.2  # FaceNet sec. 3: alpha = 0.2 on squared distances of unit vectors
    distance: Literal["euclidean", "squared_euclidean", "cosine"] = "squared_euclidean"  # FaceNet eq. 1
    fallback_negative: Literal["farthest", "hardest"] = "farthest"  # TF-Addons' triplet_semihard_loss
    projector_hidden_dim: int = HEAD_SHAPES["simclr_projector"].hidden_dim  # SimCLR-style head, 2048
    projector_dim: int = 128  # FaceNet's 128-d embedding

    def __post_init__(self) -> None:
        check_positive(self, "margin", "projector_hidden_dim", "projector_dim")
        if self.distance not in DISTANCES:
            raise ValueError(f"objective.distance must be one of {', '.join(DISTANCES)}, got {self.distance!r}")
        if self.fallback_negative not in ("farthest", "hardest"):
            raise ValueError(f"objective.fallback_negative must be farthest or hardest, got {self.fallback_negative!r}")


class Triplet(Objective):
    """Semi-hard triplet loss between the projected views of the batch's images (every view an anchor)."""

    def __init__(self, config: TripletConfig, encoder: Encoder) -> None:
        super().__init__(config, encoder)
        self.projector = configured_head(
            "simclr_projector", encoder.hidden_size, config.projector_hidden_dim, config.projector_dim
        )

    def forward(self, encoder: Encoder, batch: Batch) -> ObjectiveOutput:
        views = views_of(batch, "triplet")
        z = torch.cat([self.projector(represent(encoder, v)) for v in views])  # [V * B, P], view-major
        labels = torch.arange(batch.batch_size, device=z.device).repeat(len(views))
        cfg = self.config
        loss, negatives = semi_hard_triplet_loss(z, labels, cfg.margin, cfg.distance, cfg.fallback_negative)
        logs = {"embedding_std": embedding_std(z), "triplet_accuracy": triplet_accuracy(z, labels, cfg.distance)}
        return ObjectiveOutput(loss=loss, terms={"triplet": loss}, logs=logs)


@torch.no_grad()
def triplet_accuracy(z: Tensor, labels: Tensor, kind: str) -> Tensor:
    """Fraction of (anchor, positive) pairs whose positive is closer than every negative."""
    dist = distance_matrix(F.normalize(z.float(), dim=1), kind)
    anchor, positive = positive_pairs(labels)
    negative = labels[anchor][:, None] != labels[None, :]
    closest = dist[anchor].masked_fill(~negative, float("inf")).min(1).values
    return (dist[anchor, positive] < closest).float().mean()
