"""Ego-network sampling and the three unit layouts, on KarateClub and random PyG graphs."""

from __future__ import annotations

import pytest
import torch
from torch_geometric.data import Batch as PyGBatch
from torch_geometric.data import Data
from torch_geometric.datasets import FakeDataset, KarateClub
from torch_geometric.sampler import NodeSamplerInput
from torch_geometric.utils import to_dense_batch

from domains.graph.data import ego_collate
from domains.graph.encoders import GraphEncoderConfig, build_graph_encoder
from domains.graph.sampling import EgoNetSampler
from domains.graph.units import compact_graph, ego_batch, full_batch, graphs_batch, node_rows


@pytest.fixture(scope="module")
def karate() -> Data:
    return KarateClub()[0]


def _sample(graph: Data, seeds: list[int], fanout: list[int]):
    sampler = EgoNetSampler(graph.edge_index, graph.num_nodes, fanout)
    return sampler.sample_from_nodes(NodeSamplerInput(input_id=torch.arange(len(seeds)), node=torch.tensor(seeds)))


def test_sampled_edges_are_graph_edges_and_fanout_is_respected(karate: Data) -> None:
    torch.manual_seed(0)
    out = _sample(karate, [0, 5, 33], [3, 2])
    edges = set(map(tuple, karate.edge_index.T.tolist()))
    assert all((int(out.node[r]), int(out.node[c])) in edges for r, c in zip(out.row, out.col))
    assert out.num_sampled_nodes[0] == 3 and out.num_sampled_nodes[1] <= 3 * 3 and out.num_sampled_nodes[2] <= 9 * 2
    # each (ego network, node) pair occurs once; seeds come first
    assert len(set(zip(out.batch.tolist(), out.node.tolist()))) == len(out.node)
    assert out.node[:3].tolist() == [0, 5, 33] and out.batch[:3].tolist() == [0, 1, 2]


def test_all_neighbours_give_the_full_graph_embedding_of_the_root(karate: Data) -> None:
    """With every neighbour sampled, a GraphSAGE root sees its whole receptive field."""
    torch.manual_seed(0)
    enc = build_graph_encoder(GraphEncoderConfig(arch="sage", hidden_size=16, num_layers=2), 34)
    ego = ego_batch(_sample(karate, list(range(34)), [-1, -1]), karate.x)
    assert torch.allclose(enc.encode(ego).pooled(), enc.encode(full_batch(karate)).hidden[0], atol=1e-5)


def test_ego_rows_roots_first_and_collate_is_deterministic(karate: Data) -> None:
    collate = ego_collate(karate, [4, 3], with_labels=True)
    rows = [{"item": i, "label": int(karate.y[i])} for i in (3, 9, 20)]
    a, b = collate(rows), collate(rows)
    assert torch.equal(a.units, b.units) and torch.equal(a.extras["edge_index"], b.extras["edge_index"])
    assert a.extras["node_id"][:, 0].tolist() == [3, 9, 20]
    assert a.special_mask[:, 0].all() and not a.special_mask[:, 1:].any()
    assert (
        torch.equal(a.units[:, 0], karate.x[[3, 9, 20]])
        and a.extras["labels"].tolist() == karate.y[[3, 9, 20]].tolist()
    )
    # edges stay inside their row, and point at real units
    t = a.units.shape[1]
    src, dst = a.extras["edge_index"]
    assert torch.equal(src // t, dst // t) and not a.padding_mask.reshape(-1)[torch.cat([src, dst])].any()


def test_graphs_batch_matches_pyg_batching() -> None:
    graphs = list(FakeDataset(num_graphs=5, avg_num_nodes=6, num_channels=3))
    batch = graphs_batch(graphs)
    pyg = PyGBatch.from_data_list(graphs)
    dense, present = to_dense_batch(pyg.x, pyg.batch)
    assert torch.equal(batch.units, dense) and torch.equal(batch.padding_mask, ~present)
    t = batch.units.shape[1]
    rows, cols = batch.extras["edge_index"] // t, batch.extras["edge_index"] % t
    assert torch.equal(rows[0], pyg.batch[pyg.edge_index[0]])
    assert torch.equal(cols[0], pyg.edge_index[0] - pyg.ptr[pyg.batch[pyg.edge_index[0]]])


def test_compact_graph_drops_the_edges_of_padding(karate: Data) -> None:
    batch = full_batch(karate)
    dropped = batch.replace(padding_mask=batch.padding_mask.clone().index_fill_(1, torch.tensor([0]), True))
    keep, edges = compact_graph(dropped)
    assert len(keep) == 33 and edges.max() < 33
    assert edges.shape[1] == karate.edge_index.shape[1] - 2 * int((karate.edge_index[0] == 0).sum())


def test_sparse_csr_features_read_as_dense_rows() -> None:
    dense = (torch.rand(7, 5) > 0.6).float()
    ids = torch.tensor([6, 0, 3, 3])
    assert torch.equal(node_rows(dense.to_sparse_csr(), ids), dense[ids])
    assert torch.equal(node_rows(dense.to_sparse(), ids), dense[ids])


def test_padding_does_not_change_the_encoding() -> None:
    torch.manual_seed(0)
    graphs = list(FakeDataset(num_graphs=3, avg_num_nodes=5, num_channels=4))
    enc = build_graph_encoder(GraphEncoderConfig(arch="gcn", hidden_size=8), 4).eval()
    together = enc.encode(graphs_batch(graphs)).pooled()
    alone = torch.cat([enc.encode(graphs_batch([g])).pooled() for g in graphs])
    assert torch.allclose(together, alone, atol=1e-5)
