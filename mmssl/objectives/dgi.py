"""Deep Graph Infomax (Velickovic et al. 2019): local-global mutual information with shuffled units.

Modality-agnostic: the *local* representations are the encoder's unit vectors (graph
nodes, patches, frames), the *global* one a sigmoid of their mean, and the negatives come
from encoding a corrupted batch whose units were shuffled across the batch (the paper's
row-shuffling corruption of the feature matrix ``X``; the structure, e.g. a graph's edges
in ``batch.extras``, is kept). A bilinear discriminator scores (local, global) pairs.

Two readouts:

* ``row`` -- one summary per row of the ``[B, T]`` grid: the whole graph when a row holds
  it (transductive DGI, sec. 4.2), each graph of a graph-level batch, each ego network of
  a node-level mini-batch;
* ``batch`` -- one summary of the rows' pooled vectors (``EncoderOutput.pooled()``, e.g.
  the seed nodes of a node-level batch), discriminated against those pooled vectors: the
  paper's sub-sampled large-graph setting (sec. 4.3, Reddit).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from mmssl.encoder import Encoder
from mmssl.objectives.base import Objective
from mmssl.objectives.infomax import jsd_loss, summary_projection
from mmssl.types import Batch, ObjectiveOutput


def shuffle_units(batch: Batch) -> Batch:
    """DGI's corruption ``C(X, A) = (X~, A)``: the real units' features permuted across the whole batch.

    Padding stays padding and every ``extras`` entry (edges, layout) is kept.
    """
    present = (~batch.padding_mask).reshape(-1).nonzero().squeeze(1)
    units = batch.units.reshape(-1, *batch.units.shape[2:])
    shuffled = units.index_copy(0, present, units[present[torch.randperm(len(present), device=present.device)]])
    return batch.replace(units=shuffled.view_as(batch.units))


def row_summary(hidden: Tensor, padding_mask: Tensor) -> Tensor:
    """DGI's readout ``s = sigmoid(mean_i h_i)`` per row: ``[B, T, D]`` -> ``[B, D]`` (padding excluded)."""
    keep = (~padding_mask).unsqueeze(-1).to(hidden.dtype)
    return torch.sigmoid((hidden * keep).sum(1) / keep.sum(1).clamp(min=1.0))


def dgi_logits(
    pos: Tensor, neg: Tensor, summary: Tensor, weight: Tensor, index: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """The bilinear discriminator's logits ``h^T W s`` for the real and the corrupted locals.

    ``W s`` is computed once per *summary* (``[S, D] x [D, D]``), then looked up for each local:
    a transductive graph has one summary for all its ``N`` nodes, so this is one matrix-vector
    product where scoring ``[N, D]`` repeated summaries would cost an ``N x D x D`` GEMM (and two
    more in the backward pass).

    Args:
        pos: ``[N, D]`` local representations of the real input.
        neg: ``[N, D]`` local representations of the corrupted input.
        summary: ``[S, D]`` summaries (``[D]`` for one shared by all).
        weight: ``[D, D]`` the discriminator's bilinear weight ``W``.
        index: ``[N]`` the summary row each local is scored against; None when ``S`` is 1
            (shared) or ``N`` (one summary per local).

    Returns:
        ``(pos_logits [N], neg_logits [N])`` in float32.
    """
    if pos.shape != neg.shape or pos.ndim != 2:
        raise ValueError(f"pos and neg must both be [N, D], got {tuple(pos.shape)} and {tuple(neg.shape)}")
    ws = summary_projection(summary, weight)  # [S, D]: row j is W s_j
    if index is not None:
        ws = ws[index]
    elif ws.shape[0] != pos.shape[0]:
        if ws.shape[0] != 1:
            raise ValueError(f"{ws.shape[0]} summaries for {pos.shape[0]} locals: pass index")
        ws = ws.expand_as(pos)
    return (pos.float() * ws).sum(-1), (neg.float() * ws).sum(-1)


def dgi_loss(pos: Tensor, neg: Tensor, summary: Tensor, weight: Tensor, index: Tensor | None = None) -> Tensor:
    """DGI's objective (eq. 1): binary cross entropy of the bilinear discriminator ``D(h, s) = sigmoid(h^T W s)``.

    ``BCE(D(h_i, s_i), 1)`` averaged over the ``N`` positive locals plus ``BCE(D(h~_i, s_i), 0)``
    averaged over the ``N`` corrupted ones (the two means summed, as PyG's
    ``DeepGraphInfomax.loss`` does: :func:`mmssl.objectives.infomax.jsd_loss`). Arguments as :func:`dgi_logits`.

    Returns:
        Scalar loss.
    """
    return jsd_loss(*dgi_logits(pos, neg, summary, weight, index))


@dataclass(frozen=True)
class DGIConfig:
    """Deep Graph Infomax (Velickovic et al. 2019)."""

    name: str = "dgi"
    readout: Literal["row", "batch"] = "row"  # row: transductive / per-graph summary; batch: sec. 4.3 sub-sampling


class DGI(Objective):
    """Discriminate (unit, summary) pairs of the real batch from those of a unit-shuffled copy."""

    def __init__(self, config: DGIConfig, encoder: Encoder) -> None:
        super().__init__(config, encoder)
        d = encoder.hidden_size
        bound = 1.0 / math.sqrt(d)  # PyG's `uniform(size, W)` initialisation of the bilinear weight
        self.weight = nn.Parameter(torch.empty(d, d).uniform_(-bound, bound))

    def forward(self, encoder: Encoder, batch: Batch) -> ObjectiveOutput:
        pos = encoder.encode(batch)
        neg = encoder.encode(shuffle_units(batch))
        if self.config.readout == "row":
            keep = ~batch.padding_mask
            summary = row_summary(pos.hidden, batch.padding_mask)  # [B, D]
            rows = torch.arange(batch.batch_size, device=keep.device)[:, None].expand_as(keep)[keep]  # [N]
            h_pos, h_neg = pos.hidden[keep], neg.hidden[keep]
        else:
            h_pos, h_neg = pos.pooled(), neg.pooled()
            summary, rows = torch.sigmoid(h_pos.mean(0)), None
        pos_logits, neg_logits = dgi_logits(h_pos, h_neg, summary, self.weight, rows)
        loss = jsd_loss(pos_logits, neg_logits)
        with torch.no_grad():
            accuracy = torch.cat([pos_logits > 0, neg_logits <= 0]).float().mean()
        return ObjectiveOutput(loss=loss, terms={"dgi": loss}, logs={"discriminator_accuracy": accuracy})
