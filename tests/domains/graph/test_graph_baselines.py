"""Reference probes of the graph domain: raw and mean-propagated features."""

import torch
from torch_geometric.data import Data

from domains.graph.baselines import graph_baselines, mean_propagate, node_baselines
from mmssl.registry import TASKS


def test_mean_propagation_averages_each_node_with_its_undirected_neighbours() -> None:
    x = torch.tensor([[1.0, 0.0], [0.0, 2.0], [4.0, 4.0]])
    graph = Data(x=x.to_sparse_csr(), edge_index=torch.tensor([[0, 1], [1, 2]]), num_nodes=3)  # 0-1-2, one direction
    hops = mean_propagate(graph, hops=2)
    expected_1 = torch.stack([(x[0] + x[1]) / 2, (x[0] + x[1] + x[2]) / 3, (x[1] + x[2]) / 2])
    expected_2 = torch.stack([(expected_1[0] + expected_1[1]) / 2, expected_1.mean(0), (expected_1[1] + expected_1[2]) / 2])
    torch.testing.assert_close(hops[0], x)
    torch.testing.assert_close(hops[1], expected_1)
    torch.testing.assert_close(hops[2], expected_2)


def test_node_and_graph_baselines_report_probe_accuracies() -> None:
    results = node_baselines(TASKS.get("karate-club")())
    assert set(results) == {"raw", "propagated_2hop"}
    assert results["propagated_2hop"]["feature_dim"] == 3 * results["raw"]["feature_dim"]
    assert all(0.0 <= r["accuracy"] <= 1.0 and r["n_test"] == 18 for r in results.values())
    g = torch.Generator().manual_seed(0)
    graphs = [Data(x=torch.rand(4, 3, generator=g) + (i % 2), edge_index=torch.tensor([[0, 1], [1, 2]]), y=torch.tensor(i % 2))
              for i in range(20)]
    from domains.graph.domain import graph_task

    raw = graph_baselines(graph_task(graphs[:12], graphs[12:], ["a", "b"]))["raw_mean"]
    assert raw["accuracy"] == 1.0  # the classes differ by +1 on every feature
