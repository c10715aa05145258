"""Deep InfoMax (Hjelm et al. 2019, ICLR): maximise the mutual information between an input's summary and its map.

The encoder gives a map of local features ``M`` (``EncoderOutput.hidden``, ``[B, T, D]``: a ResNet's
last feature map, one unit per spatial cell, or a ViT's patch tokens or a GNN's nodes) and a global
summary ``Y`` (``EncoderOutput.pooled()``, ``[B, D]``: the ResNet's global average pool, the ViT's
``[CLS]``). A critic scores (feature, summary) pairs; pairs of one input are positives, pairs of two
inputs of the batch negatives (the paper's practice), and a lower bound on the MI is maximised
(:mod:`mmssl.objectives.infomax`: JSD, InfoNCE or DV):

* local (``beta``, DIM(L), sec. 3.2): ``Y_i`` against every location ``M_i^(t)`` of its own map (positives)
  and every location of the other images' maps (negatives), averaged over locations;
* global (``alpha``, DIM(G), sec. 3.1): ``Y_i`` against the whole map ``M_i``, encoded by the critic into one
  vector (the authors' code encodes it with a copy of the encoder's upper layers; here a per-location
  encoder, then the mean over locations, so that maps of any size fit).

Critics (``discriminator``): ``dot`` is the paper's encode-and-dot-product (appendix A.2): both sides go
through a residual MLP (the authors' ``MI1x1ConvNet``, ``mi_units`` wide) and the score is their dot product
scaled by ``1 / sqrt(mi_units)`` (unscaled in the authors' code; see :meth:`Critic.encode_summary`);
``bilinear`` is DGI's ``h^T W s`` (:func:`mmssl.objectives.infomax.summary_projection`). The prior-matching
term (``gamma``, sec. 3.3) needs an adversarial second optimizer, which the trainer does not have: left out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from mmssl.encoder import Encoder
from mmssl.objectives.base import Objective
from mmssl.objectives.infomax import ESTIMATORS, dv_loss, infonce_loss, jsd_loss, summary_projection
from mmssl.objectives.losses import full_precision
from mmssl.registry import DOMAINS
from mmssl.types import Batch, ObjectiveOutput

LOCAL_UNIT_KINDS = ("grid", "graph")  # units with a spatial (or graph) neighbourhood: the local term's map


@full_precision
def dim_scores(local: Tensor, summary: Tensor) -> Tensor:
    """Critic scores of every location of every input against every summary of the batch.

    Args:
        local: ``[B, T, K]`` encoded local features.
        summary: ``[B, K]`` encoded summaries.

    Returns:
        ``[B, T, B]`` float32: entry ``(i, t, k)`` scores location ``t`` of input ``i`` against summary ``k``.
    """
    return torch.einsum("itd,kd->itk", local.float(), summary.float())


def dim_loss(scores: Tensor, keep: Tensor, estimator: str) -> Tensor:
    """DIM's loss on the score tensor: ``(i, t, i)`` are positives, ``(i, t, k != i)`` negatives.

    JSD and DV average over every positive and every negative (the authors' ``fenchel_dual_loss`` and
    ``donsker_varadhan_loss``). InfoNCE classifies each positive ``(i, t, i)`` against the summary
    ``i`` scored with every location of the other inputs (the authors' ``infonce_loss``, which leaves
    the own input's other locations out of the softmax; here they are excluded exactly rather than
    shifted by -10).

    Args:
        scores: ``[B, T, B]`` from :func:`dim_scores`.
        keep: ``[B, T]`` bool, False at padding (left out of positives and negatives).
        estimator: one of :data:`mmssl.objectives.infomax.ESTIMATORS`.

    Returns:
        Scalar loss.
    """
    b = scores.shape[0]
    other = ~torch.eye(b, dtype=torch.bool, device=scores.device)  # [B, B]: k != i
    pos = scores.diagonal(dim1=0, dim2=2).T  # [B, T]: scores[i, t, i]
    if estimator == "infonce":
        negatives = keep[None] & other[:, :, None]  # [k, i, t]: location t of input i != k
        neg = scores.permute(2, 0, 1).masked_fill(~negatives, float("-inf")).reshape(b, 1, -1)  # [B, 1, B*T]
        return infonce_loss(pos, neg, mask=keep)
    neg = scores[keep[:, :, None] & other[:, None, :]]
    return jsd_loss(pos[keep], neg) if estimator == "jsd" else dv_loss(pos[keep], neg)


class MIEncoder(nn.Module):
    """The critic's encoder of one side (the authors' ``MI1x1ConvNet``): ``LayerNorm(MLP(x) + shortcut(x))``.

    ``MLP`` is Linear (no bias) - BatchNorm - ReLU - Linear; the linear shortcut starts near the
    identity (uniform(-0.01, 0.01) off it) when ``units >= in_dim``.
    """

    def __init__(self, in_dim: int, units: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.Linear(in_dim, units, bias=False), nn.BatchNorm1d(units), nn.ReLU(), nn.Linear(units, units)
        )
        self.shortcut = nn.Linear(in_dim, units, bias=False)
        self.norm = nn.LayerNorm(units)
        if units >= in_dim:
            with torch.no_grad():
                self.shortcut.weight.uniform_(-0.01, 0.01)
                self.shortcut.weight[:, :in_dim].fill_diagonal_(1.0)

    def forward(self, x: Tensor) -> Tensor:
        """``[N, in_dim] -> [N, units]``."""
        return self.norm(self.block(x) + self.shortcut(x))


class Critic(nn.Module):
    """Encodes the two sides of a (feature, summary) pair so that their dot product is the score.

    ``dot``: an :class:`MIEncoder` on each side (``[.., D] -> [.., K]``); ``bilinear``: features as they are and
    summaries mapped by ``W`` (``h^T W s``, DGI's discriminator, initialised as PyG's).
    """

    def __init__(self, kind: str, dim: int, units: int) -> None:
        super().__init__()
        self.scale = units**-0.5 if kind == "dot" else 1.0  # dot: scaled dot product (see encode_summary)
        if kind == "dot":
            self.local_net: nn.Module | None = MIEncoder(dim, units)
            self.summary_net: nn.Module | None = MIEncoder(dim, units)
        else:
            self.local_net = self.summary_net = None
            bound = dim**-0.5
            self.weight = nn.Parameter(torch.empty(dim, dim).uniform_(-bound, bound))

    def encode_local(self, hidden: Tensor, keep: Tensor) -> Tensor:
        """``[B, T, D] -> [B, T, K]``; padding rows stay zero and out of the batch norm."""
        if self.local_net is None:
            return hidden * keep.unsqueeze(-1).to(hidden.dtype)
        codes = self.local_net(hidden[keep])
        return codes.new_zeros(*keep.shape, codes.shape[-1]).index_put((keep,), codes)

    def encode_summary(self, summary: Tensor) -> Tensor:
        """``[B, D] -> [B, K]``; ``dot`` scales by ``1 / sqrt(K)``: both sides are layer-normed (norm ``sqrt(K)``),
        so a raw dot product is ``O(K)`` at initialisation (a JSD loss of about 60 at ``K = 512`` on Fashion-MNIST,
        measured), where the scaled one starts near ``2 log 2``. The authors' code leaves it unscaled."""
        if self.summary_net is None:
            return summary_projection(summary, self.weight)
        return self.summary_net(summary) * self.scale


@dataclass(frozen=True)
class DIMConfig:
    """Deep InfoMax (Hjelm et al. 2019); defaults are DIM(L) of Tables 1-2 without the prior term."""

    name: str = "dim"
    estimator: Literal["jsd", "infonce", "dv"] = "jsd"  # sec. 3.1 / 4.2: JSD is robust to the number of negatives
    alpha: float = 0.0  # global MI weight; DIM(L): 0 (DIM(G): 1)
    beta: float = 1.0  # local MI weight; DIM(L): 1
    discriminator: Literal["dot", "bilinear"] = "dot"  # appendix A.2 encode-and-dot-product; bilinear: DGI's
    mi_units: int = 2048  # width of the critic's encoders (the authors' code: mi_units=2048)

    def __post_init__(self) -> None:
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"objective.estimator must be one of {', '.join(ESTIMATORS)}, got {self.estimator!r}")
        if self.discriminator not in ("dot", "bilinear"):
            raise ValueError(f"objective.discriminator must be dot or bilinear, got {self.discriminator!r}")
        for key in ("alpha", "beta"):
            if getattr(self, key) < 0:
                raise ValueError(f"objective.{key} must be >= 0, got {getattr(self, key)}")
        if self.alpha == 0 and self.beta == 0:
            raise ValueError("objective.alpha and objective.beta are both 0: set the global or the local MI weight > 0")
        if self.mi_units < 1:
            raise ValueError(f"objective.mi_units must be >= 1, got {self.mi_units}")

    def check_recipe(self, recipe: Any) -> None:
        """The local term (``beta > 0``) reads a map of local features: units on an image grid or graph nodes."""
        kind = DOMAINS.get(recipe.domain).unit_kind
        if self.beta > 0 and kind not in LOCAL_UNIT_KINDS:
            raise ValueError(
                f"objective.beta={self.beta}: the local MI term needs an encoder with a spatial map of local features "
                f"({' or '.join(LOCAL_UNIT_KINDS)} units), and domain {recipe.domain} gives {kind} units; "
                "set objective.beta=0 and objective.alpha > 0, or use an image or graph recipe"
            )


def check_local_map(hidden: Tensor, beta: float) -> None:
    """The local term needs at least two locations per input (a 1x1 map is only the global summary again)."""
    if beta > 0 and hidden.shape[1] < 2:
        raise ValueError(
            f"objective.beta={beta}: the encoder's feature map has {hidden.shape[1]} location(s) per input; the local "
            "MI term needs a spatial map (larger images, or a ResNet with fewer downsamplings), or set objective.beta=0"
        )


class DIM(Objective):
    """Local and global Deep InfoMax with batch negatives (see module docstring)."""

    def __init__(self, config: DIMConfig, encoder: Encoder) -> None:
        super().__init__(config, encoder)
        d = encoder.hidden_size
        self.local_critic = Critic(config.discriminator, d, config.mi_units) if config.beta > 0 else None
        self.global_critic = Critic(config.discriminator, d, config.mi_units) if config.alpha > 0 else None

    def forward(self, encoder: Encoder, batch: Batch) -> ObjectiveOutput:
        out = encoder.encode(batch)
        check_local_map(out.hidden, self.config.beta)
        keep, summary = ~out.padding_mask, out.pooled()
        terms, logs = {}, {}
        if self.local_critic is not None:
            scores = dim_scores(
                self.local_critic.encode_local(out.hidden, keep), self.local_critic.encode_summary(summary)
            )
            terms["local"] = dim_loss(scores, keep, self.config.estimator)
            logs["local_accuracy"] = own_summary_accuracy(scores, keep)
        if self.global_critic is not None:
            codes = self.global_critic.encode_local(out.hidden, keep)  # [B, T, K]
            whole = codes.sum(1) / keep.sum(1, keepdim=True).clamp(min=1).to(codes.dtype)  # [B, K]: the whole map
            scores = dim_scores(whole.unsqueeze(1), self.global_critic.encode_summary(summary))  # [B, 1, B]
            terms["global"] = dim_loss(scores, keep.new_ones(keep.shape[0], 1), self.config.estimator)
            logs["global_accuracy"] = own_summary_accuracy(scores, keep.new_ones(keep.shape[0], 1))
        weights = {"local": self.config.beta, "global": self.config.alpha}
        loss = sum(weights[k] * v for k, v in terms.items())
        return ObjectiveOutput(loss=loss, terms=terms, logs=logs)


@torch.no_grad()
def own_summary_accuracy(scores: Tensor, keep: Tensor) -> Tensor:
    """Fraction of (non-padding) locations whose own input's summary scores highest among the batch's."""
    own = torch.arange(scores.shape[0], device=scores.device)[:, None]
    return (scores.argmax(-1) == own)[keep].float().mean()
