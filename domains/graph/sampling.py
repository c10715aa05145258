"""Neighbourhood sampling for node-level mini-batches: one ego network per seed node.

Mini-batches on a large graph follow GraphSAGE (Hamilton et al. 2017): every seed node
takes up to ``num_neighbors[k]`` uniformly sampled neighbours at hop ``k + 1``. The
sample is *disjoint* (each seed gets its own ego network, a node reached from two seeds
appears in both) and *bidirectional* (every sampled edge is kept in both directions, so
every node of an ego network, not only its root, sees its sampled context), as PyG's
``NeighborLoader(..., disjoint=True, subgraph_type="bidirectional")`` does. Each ego
network becomes one row of the ``[B, T]`` unit grid (:mod:`domains.graph.units`), its
root first, which is what lets node classification read one vector per seed, like a
``[CLS]`` token (the ShaDow-GNN view of node-level tasks, Zeng et al. 2021).

PyG's own ``NeighborSampler`` needs the compiled ``pyg-lib`` or ``torch-sparse``
packages, which publish no wheels for this torch on PyPI; :class:`EgoNetSampler` is a
pure-torch implementation of PyG's :class:`~torch_geometric.sampler.BaseSampler`
interface (``sample_from_nodes(NodeSamplerInput) -> SamplerOutput``), so it also plugs
into PyG's ``NodeLoader``. Memory per batch is bounded by
``len(seeds) * (1 + n1 + n1 * n2 + ...)`` nodes, whatever the size of the graph.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch_geometric.sampler import BaseSampler, NodeSamplerInput, SamplerOutput


class EgoNetSampler(BaseSampler):
    """Uniform neighbour sampling without replacement, one ego network per seed (pure torch).

    Args:
        edge_index: ``[2, E]`` edges ``source -> target``; neighbours of ``v`` are the
            sources of the edges into ``v`` (for an undirected graph, all its neighbours).
        num_nodes: nodes of the graph.
        num_neighbors: neighbours per node at each hop; ``-1`` takes all of them.

    Raises:
        ValueError: If ``num_neighbors`` is empty or holds a value below ``-1`` or 0.
    """

    def __init__(self, edge_index: Tensor, num_nodes: int, num_neighbors: list[int] | tuple[int, ...]) -> None:
        if not num_neighbors or any(k == 0 or k < -1 for k in num_neighbors):
            raise ValueError(f"num_neighbors must be a non-empty list of positive counts or -1, got {num_neighbors}")
        self.num_nodes = num_nodes
        self.num_neighbors = list(num_neighbors)
        order = torch.argsort(edge_index[1], stable=True)  # CSC: incoming edges grouped by target
        self.sources = edge_index[0, order]
        self.edge_ids = order
        counts = torch.bincount(edge_index[1], minlength=num_nodes)
        self.colptr = torch.zeros(num_nodes + 1, dtype=torch.long)
        torch.cumsum(counts, 0, out=self.colptr[1:])

    def _sample_hop(self, targets: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """For each target node, up to ``k`` incoming edges: ``(edge positions in CSC order, target index)``."""
        start = self.colptr[targets]
        deg = self.colptr[targets + 1] - start
        total = int(deg.sum())
        owner = torch.repeat_interleave(torch.arange(len(targets)), deg)  # [total] index into targets
        first = torch.repeat_interleave(torch.cumsum(deg, 0) - deg, deg)
        offset = torch.arange(total) - first  # position of each candidate within its target's neighbours
        pos = start[owner] + offset
        if k < 0 or total == 0:
            return pos, owner
        # k random candidates per target: sort by (target, random key), keep the first k of each segment
        order = torch.argsort(owner.to(torch.float64) + torch.rand(total, dtype=torch.float64))
        keep = order[offset < k]  # sorting keeps segment sizes and order, so `offset` is the rank in the sort
        return pos[keep], owner[keep]

    def sample_from_nodes(self, index: NodeSamplerInput, **kwargs: object) -> SamplerOutput:
        """Sample the ego networks of ``index.node``.

        Returns:
            PyG's ``SamplerOutput``: ``node`` (global ids, seeds first), ``row``/``col``
            (local edge endpoints, both directions, duplicates removed), ``edge`` (the
            global edge id of each local edge), ``batch`` (the seed each node belongs to).
        """
        seeds = index.node.long()
        n = self.num_nodes
        node, batch = seeds.clone(), torch.arange(len(seeds))
        keys = batch * n + node  # a node is identified by (ego network, global id)
        frontier = torch.arange(len(seeds))
        rows, cols, edges = [], [], []
        sampled_nodes, sampled_edges = [len(seeds)], []
        for k in self.num_neighbors:
            if len(frontier) == 0:
                sampled_nodes.append(0)
                sampled_edges.append(0)
                continue
            pos, owner = self._sample_hop(node[frontier], k)
            parent = frontier[owner]
            neighbour = self.sources[pos]
            cand = batch[parent] * n + neighbour
            local, new = _assign(keys, cand)
            node = torch.cat([node, neighbour[new]])
            batch = torch.cat([batch, batch[parent][new]])
            keys = torch.cat([keys, cand[new]])
            frontier = torch.arange(len(keys) - int(new.sum()), len(keys))
            rows.append(local)
            cols.append(parent)
            edges.append(self.edge_ids[pos])
            sampled_nodes.append(int(new.sum()))
            sampled_edges.append(len(pos))
        row, col, edge = (torch.cat(x) if x else torch.empty(0, dtype=torch.long) for x in (rows, cols, edges))
        row, col, edge = _bidirectional(row, col, edge, len(node))
        return SamplerOutput(
            node=node,
            row=row,
            col=col,
            edge=edge,
            batch=batch,
            num_sampled_nodes=sampled_nodes,
            num_sampled_edges=sampled_edges,
            metadata=(index.input_id, index.time),
        )

    def sample_from_edges(self, index: object, neg_sampling: object = None) -> SamplerOutput:
        raise NotImplementedError("EgoNetSampler samples around seed nodes only")

    @property
    def edge_permutation(self) -> None:
        return None  # `edge` already holds the ids of the caller's edge_index


def _assign(keys: Tensor, cand: Tensor) -> tuple[Tensor, Tensor]:
    """Local index of each candidate key: an existing node's, or a new one numbered after ``keys``.

    Returns:
        ``(local [C], new [C] bool)``: ``new`` marks the first occurrence of each unseen key.
    """
    both = torch.cat([keys, cand])
    uniq, inverse = torch.unique(both, return_inverse=True)
    first = torch.full((len(uniq),), len(both), dtype=torch.long)
    first.scatter_reduce_(0, inverse, torch.arange(len(both)), reduce="amin")
    cand_first = first[inverse[len(keys) :]]  # position in `both` of each candidate's key's first occurrence
    new = cand_first == torch.arange(len(keys), len(both))
    is_old = cand_first < len(keys)
    new_rank = torch.cumsum(new.long(), 0) - 1  # numbering of new nodes in order of first occurrence
    local = torch.empty(len(cand), dtype=torch.long)
    local[is_old] = cand_first[is_old]
    new_local = torch.full((len(both),), -1, dtype=torch.long)
    new_local[cand_first[new]] = len(keys) + new_rank[new]
    local[~is_old] = new_local[cand_first[~is_old]]
    return local, new


def _bidirectional(row: Tensor, col: Tensor, edge: Tensor, num_nodes: int) -> tuple[Tensor, Tensor, Tensor]:
    """Both directions of every edge, without duplicates and self-loops (first edge id kept)."""
    r, c, e = torch.cat([row, col]), torch.cat([col, row]), torch.cat([edge, edge])
    keep = r != c
    r, c, e = r[keep], c[keep], e[keep]
    key = r * num_nodes + c
    uniq, inverse = torch.unique(key, return_inverse=True)
    first = torch.full((len(uniq),), len(key), dtype=torch.long).scatter_reduce_(
        0, inverse, torch.arange(len(key)), reduce="amin"
    )
    return r[first], c[first], e[first]
