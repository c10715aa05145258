"""Graphs <-> node units on the ``[B, T]`` grid.

Three layouts, one contract (what every graph :class:`~mmssl.types.Batch` holds):

* ``"ego"`` (node-level mini-batches): row ``b`` is the sampled ego network of seed
  ``b``, its root at unit 0 (:mod:`domains.graph.sampling`); ``special_mask`` marks the
  roots, so augmentations never drop them. The encoder's ``summary`` is the root's vector.
* ``"full"`` (node-level, small graphs): one row holding the whole graph.
* ``"graphs"`` (graph-level): row ``b`` is graph ``b`` of a list batched by PyG's
  ``Batch.from_data_list`` (what its ``DataLoader`` does) and ``to_dense_batch``.

``units`` are ``[B, T, C]`` node features, ``padding_mask`` marks the empty cells, and
``extras[Extra.EDGE_INDEX]`` (``[2, E]`` int64) holds the edges in *grid coordinates*: unit
``(b, t)`` is node ``b * T + t``. Grid coordinates survive any change of the padding, so
a view drops a node by marking it as padding, and its edges vanish with it
(:func:`compact_graph`). ``Batch.layout`` names the layout; ``extras[Extra.NODE_ID]``
(``[B, T]``, -1 at padding) the nodes' ids in the source graph where there is one.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor
from torch_geometric.data import Batch as PyGBatch
from torch_geometric.data import Data
from torch_geometric.sampler import SamplerOutput
from torch_geometric.utils import subgraph, to_dense_batch

from mmssl.types import Batch, Extra

LAYOUTS = ("ego", "full", "graphs")


@contextlib.contextmanager
def csr_features() -> Iterator[None]:
    """Where sparse CSR node features are made or loaded: invariants checked, torch's beta notice silenced.

    The first CSR tensor of a process makes torch warn that "sparse CSR tensor support is in beta state" and
    that "sparse invariant checks are implicitly disabled" (memory errors on malformed indices). Checking the
    invariants explicitly turns a malformed index into an error and ends the second warning; the first is
    safe to silence because mmssl uses only CSR's stable core: ``crow_indices``, ``col_indices``, ``values``
    and the conversions to and from COO.
    """
    with warnings.catch_warnings(), torch.sparse.check_sparse_tensor_invariants(enable=True):
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state", category=UserWarning)
        yield


def node_rows(x: Tensor, ids: Tensor) -> Tensor:
    """Dense float feature rows ``[len(ids), C]`` of a dense or sparse (COO/CSR) feature matrix."""
    if x.layout == torch.sparse_csr:
        return _csr_rows(x, ids)
    if x.is_sparse:
        return x.index_select(0, ids).to_dense().float()
    return x[ids].float()


def _csr_rows(x: Tensor, ids: Tensor) -> Tensor:
    indptr, indices, values = x.crow_indices(), x.col_indices(), x.values()
    start, count = indptr[ids], indptr[ids + 1] - indptr[ids]
    owner = torch.repeat_interleave(torch.arange(len(ids)), count)
    pos = start[owner] + torch.arange(int(count.sum())) - torch.repeat_interleave(torch.cumsum(count, 0) - count, count)
    out = torch.zeros(len(ids), x.shape[1])
    out[owner, indices[pos]] = values[pos].float()
    return out


def _grid(values: Tensor, group: Tensor, num_rows: int) -> tuple[Tensor, Tensor, Tensor]:
    """Scatter ``values [N, ...]`` grouped by ``group [N]`` (sorted) into ``[B, T, ...]``.

    Returns:
        ``(dense [B, T, ...], padding_mask [B, T], grid index [N] of each value)``.
    """
    dense, present = to_dense_batch(values, group, batch_size=num_rows)
    counts = torch.bincount(group, minlength=num_rows)
    start = torch.cumsum(counts, 0) - counts
    index = group * dense.shape[1] + torch.arange(len(group)) - start[group]
    return dense, ~present, index


def ego_batch(sample: SamplerOutput, x: Tensor, **extras: Any) -> Batch:
    """The ego networks of a :class:`SamplerOutput` (``batch`` set) as one row per seed, roots first."""
    order = torch.argsort(sample.batch, stable=True)  # group nodes by seed; seeds come first within each group
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(order))
    num_rows = (
        int(sample.metadata[0].numel())
        if sample.metadata and sample.metadata[0] is not None
        else int(sample.batch.max()) + 1
    )
    units, padding, index = _grid(node_rows(x, sample.node[order]), sample.batch[order], num_rows)
    node_id, _ = to_dense_batch(sample.node[order], sample.batch[order], fill_value=-1, batch_size=num_rows)
    edge_index = torch.stack([index[rank[sample.row]], index[rank[sample.col]]])
    special = torch.zeros_like(padding)
    special[:, 0] = True
    return Batch(
        units=units,
        padding_mask=padding,
        special_mask=special,
        extras={Extra.EDGE_INDEX: edge_index, Extra.NODE_ID: node_id, **extras},
        layout="ego",
    )


def full_batch(data: Data, **extras: Any) -> Batch:
    """A whole graph as one row (node ``i`` is unit ``(0, i)``)."""
    x = node_rows(data.x, torch.arange(data.num_nodes))
    padding = torch.zeros(1, data.num_nodes, dtype=torch.bool)
    node_id = torch.arange(data.num_nodes).unsqueeze(0)
    return Batch(
        units=x.unsqueeze(0),
        padding_mask=padding,
        extras={Extra.EDGE_INDEX: data.edge_index, Extra.NODE_ID: node_id, **extras},
        layout="full",
    )


def graphs_batch(graphs: Sequence[Data], **extras: Any) -> Batch:
    """Small graphs batched by PyG (``Batch.from_data_list``), one row each."""
    pyg = PyGBatch.from_data_list([Data(x=g.x, edge_index=g.edge_index, num_nodes=g.num_nodes) for g in graphs])
    units, padding, index = _grid(node_rows(pyg.x, torch.arange(pyg.num_nodes)), pyg.batch, len(graphs))
    return Batch(
        units=units, padding_mask=padding, extras={Extra.EDGE_INDEX: index[pyg.edge_index], **extras}, layout="graphs"
    )


def compact_graph(batch: Batch) -> tuple[Tensor, Tensor]:
    """The non-padding units' node indices and their edges, renumbered for a GNN.

    Returns:
        ``(keep [N] grid indices of the real units in row-major order, edge_index [2, E']
        among them, numbered 0..N-1)``; edges touching padding are dropped.
    """
    b, t = batch.padding_mask.shape
    present = ~batch.padding_mask.reshape(-1)
    keep = present.nonzero().squeeze(1)
    edge_index = batch.extras[Extra.EDGE_INDEX]
    if len(keep) == b * t:
        return keep, edge_index
    edge_index, _ = subgraph(present, edge_index, relabel_nodes=True, num_nodes=b * t)
    return keep, edge_index


def layout_of(batch: Batch) -> str:
    layout = batch.layout
    if layout not in LAYOUTS or Extra.EDGE_INDEX not in batch.extras:
        raise ValueError(
            "a graph batch needs extras['edge_index'] and Batch.layout in "
            f"{LAYOUTS}; build it with domains.graph.units (got layout {layout!r})"
        )
    return layout
