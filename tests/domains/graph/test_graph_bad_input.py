"""Bad graph input: a clear error naming the problem (node level), a logged and counted skip (graph level)."""

import logging
from dataclasses import replace

import pytest
import torch
from torch_geometric.data import Data

from domains.graph.data import GraphProcessor, graph_problem, usable_graphs
from domains.graph.domain import GraphDomain
from mmssl.tasks import TaskConfig


def _graph(n: int = 4, f: int = 3, edges=((0, 1), (1, 2))) -> Data:
    return Data(x=torch.ones(n, f), edge_index=torch.tensor(edges, dtype=torch.long).reshape(-1, 2).T, num_nodes=n)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda g: setattr(g, "edge_index", torch.tensor([[0, 1], [1, 7]])),
            "points to node 7, but the graph has nodes 0..3",
        ),
        (lambda g: setattr(g, "edge_index", torch.zeros(2, 0, dtype=torch.long)), "no edges"),
        (lambda g: g.x.__setitem__((2, 1), float("nan")), "NaN or inf"),
        (lambda g: setattr(g, "x", torch.ones(4)), "expected [num_nodes=4, num_features]"),
        (lambda g: setattr(g, "x", None), "no node features"),
    ],
)
def test_each_problem_is_named(change, message) -> None:
    g = _graph()
    assert graph_problem(g) is None
    change(g)
    assert message in graph_problem(g)


def test_nan_in_sparse_features_is_found() -> None:
    x = torch.zeros(4, 3)
    x[1, 2] = float("nan")
    g = _graph()
    g.x = x.to_sparse_csr()
    assert "NaN" in graph_problem(g)


def test_graph_level_skips_and_counts_bad_graphs(caplog: pytest.LogCaptureFixture) -> None:
    bad_edges, no_edges, wide = _graph(edges=((0, 9),)), _graph(edges=()), _graph(f=5)
    with caplog.at_level(logging.WARNING):
        kept = usable_graphs([_graph(), bad_edges, _graph(), no_edges, wide], "mols")
    assert len(kept) == 2 and kept.skipped == 3
    assert "mols: graph 1 skipped: edge_index points to node 9" in caplog.text
    assert "mols: graph 4 skipped: it has 5 node features, the dataset's graphs have 3" in caplog.text
    assert "mols: 3 of 5 graphs skipped" in caplog.text
    with pytest.raises(ValueError, match="none of its 2 graphs is usable"):
        usable_graphs([bad_edges, no_edges], "mols")


def test_node_level_source_with_a_dangling_edge_is_an_error(tmp_path) -> None:
    from domains.graph.data import GraphDataConfig, load_source

    path = tmp_path / "graph.pt"
    torch.save(_graph(edges=((0, 1), (3, 4))), path)
    with pytest.raises(ValueError, match=r"data\.path=.*graph\.pt: edge_index points to node 4"):
        load_source(GraphDataConfig(source="file", path=str(path), level="node", mode="full"))


def test_finetuning_on_features_of_another_width_names_both_widths() -> None:
    processor = GraphProcessor(level="node", in_channels=7, source="my-graph")
    with pytest.raises(
        ValueError, match=r"karate-club has 34 node features but the encoder was pretrained on 7 \(my-graph\)"
    ):
        GraphDomain().task_collate(processor, TaskConfig(name="karate-club"))
    ok = replace(processor, in_channels=34)
    assert callable(GraphDomain().task_collate(ok, TaskConfig(name="karate-club")))


def test_skipped_graphs_are_counted_in_the_run_summary(tmp_path) -> None:
    import json

    import torch

    from mmssl.pretrain import pretrain
    from tests.conftest import TINY_GRAPH

    graphs = [_graph() for _ in range(10)] + [_graph(edges=((0, 9),)), _graph(edges=())]
    torch.save(graphs, tmp_path / "mols.pt")
    run = pretrain(
        "graphcl",
        [
            *TINY_GRAPH[4:],
            "data.source=file",
            f"data.path={tmp_path / 'mols.pt'}",
            "train.max_steps=1",
            "train.batch_size=4",
        ],
        tmp_path / "run",
    )
    summary = json.loads((run / "data_summary.json").read_text())
    assert summary["graphs"] == 10 and summary["skipped_graphs"] == 2
    assert json.loads((run / "export" / "mmssl.json").read_text())["skipped_graphs"] == 2
