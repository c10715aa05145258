"""Graph augmentations: pure functions ``Batch -> Batch`` on the unit grid of :mod:`domains.graph.units`.

Each returns a new batch and never mutates its input; randomness comes from torch's global
RNG (the trainer seeds it per step). They use ``torch_geometric.utils`` where it has the
operation (``mask_feature``, ``dropout_edge``, ``dropout_node``, ``k_hop_subgraph``). A
removed node becomes padding, so views keep the grid of their source batch and node-level
objectives can compare the units present in both views. Roots of ego networks
(``special_mask``) are never removed.

* :func:`mask_features` -- zero a random subset of feature columns (GRACE, BGRL; GraphCL's
  attribute masking).
* :func:`drop_edges` -- remove each undirected edge with probability ``p`` (GraphCL's edge
  perturbation, BGRL).
* :func:`drop_nodes` -- remove each node with probability ``p`` (GraphCL).
* :func:`sample_subgraph` -- keep the ``num_hops``-hop neighbourhood of one random node per
  row (GraphCL's subgraph, by BFS instead of a random walk).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch_geometric.utils import dropout_edge, dropout_node, k_hop_subgraph, mask_feature

from mmssl.types import Batch, Extra


def _edges(batch: Batch) -> Tensor:
    return batch.extras[Extra.EDGE_INDEX]


def _with(batch: Batch, **extras: object) -> dict:
    return {**batch.extras, **extras}


def mask_features(batch: Batch, p: float) -> Batch:
    """Zero each feature column with probability ``p`` (the same columns for every node of the batch)."""
    if p <= 0:
        return batch
    b, t, c = batch.units.shape
    x, _ = mask_feature(batch.units.reshape(b * t, c), p=p, mode="col")
    return batch.replace(units=x.view(b, t, c))


def drop_edges(batch: Batch, p: float) -> Batch:
    """Remove each undirected edge (both directions together) with probability ``p``."""
    if p <= 0:
        return batch
    edge_index, _ = dropout_edge(_edges(batch), p=p, force_undirected=True)
    return batch.replace(extras=_with(batch, edge_index=edge_index))


def _removable(batch: Batch) -> Tensor:
    return batch.maskable.reshape(-1)  # real units that are not roots


def drop_nodes(batch: Batch, p: float) -> Batch:
    """Remove each non-root node with probability ``p`` (it becomes padding; its edges go with it)."""
    if p <= 0:
        return batch
    b, t = batch.padding_mask.shape
    _, _, kept = dropout_node(_edges(batch), p=p, num_nodes=b * t)
    dropped = ~kept & _removable(batch)
    return batch.replace(padding_mask=batch.padding_mask | dropped.view(b, t))


def sample_subgraph(batch: Batch, num_hops: int = 1) -> Batch:
    """Keep, in every row, the ``num_hops``-hop neighbourhood of one random real node (the root in ego rows)."""
    b, t = batch.padding_mask.shape
    present = ~batch.padding_mask
    if batch.special_mask is not None:
        starts = batch.special_mask.float().argmax(1)
    else:  # a uniformly random real unit per row
        starts = torch.where(present, torch.rand(b, t, device=present.device), -1.0).argmax(1)
    centres = torch.arange(b, device=present.device) * t + starts
    subset, _, _, _ = k_hop_subgraph(centres, num_hops, _edges(batch), num_nodes=b * t)
    keep = torch.zeros(b * t, dtype=torch.bool, device=present.device)
    keep[subset] = True
    return batch.replace(padding_mask=batch.padding_mask | ~keep.view(b, t))


AUGMENTATIONS = {
    "mask_features": mask_features,
    "drop_edges": drop_edges,
    "drop_nodes": drop_nodes,
    "subgraph": sample_subgraph,
}


def generation_split(batch: Batch, attr_ratio: float, edge_ratio: float) -> Batch:
    """GPT-GNN's generation task (Hu et al. 2020, sec. 3.3) on one batch.

    A random permutation of each row's nodes puts the first ``attr_ratio`` of them in the
    *attribute generation* set (``extras[Extra.GEN_ATTR]``, ``[B, T]`` bool: their features are
    replaced by the mask token when encoded and must be regenerated); the other nodes are
    *edge generation* nodes, each of whose edges is removed with probability ``edge_ratio``
    (both directions) and must be regenerated: ``extras[Extra.GEN_PAIRS]`` (``[2, P]`` grid
    indices: the edge generation node, then the removed neighbour). The full model
    duplicates attribute nodes so that their real features serve as context; this one
    keeps them masked for every node (no leak, less context).
    """
    b, t = batch.padding_mask.shape
    maskable = batch.maskable
    noise = torch.rand(b, t, device=maskable.device).masked_fill(~maskable, 2.0)
    rank = noise.argsort(1).argsort(1)
    attr = rank < torch.round(attr_ratio * maskable.sum(1).float()).long()[:, None]
    src, dst = _edges(batch)
    gen = ~attr.reshape(-1)
    edge_gen = gen[src] & (~gen[dst] | (src < dst))  # each undirected edge once, from an edge generation end
    removed = edge_gen & (torch.rand(src.shape, device=src.device) < edge_ratio)
    pairs = torch.stack([src[removed], dst[removed]])
    key = src * (b * t) + dst  # the reverse direction of every removed edge goes too
    keep = ~(removed | torch.isin(key, dst[removed] * (b * t) + src[removed]))
    extras = _with(batch, edge_index=_edges(batch)[:, keep], gen_attr=attr, gen_pairs=pairs)
    return batch.replace(extras=extras)
