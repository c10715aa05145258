"""The graph domain's raw-feature baselines: raw and mean-propagated node features, mean node features of graphs,
behind :meth:`GraphDomain.raw_features` and ``mmssl evaluate --init raw``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch_geometric.data import Data

from domains.graph.baselines import baseline_probes, mean_features_baseline, mean_propagate
from domains.graph.data import ego_collate
from domains.graph.domain import graph_task
from mmssl.cli import main
from mmssl.metrics import read_metrics
from mmssl.pretrain import pretrain
from mmssl.probes import fit_linear_probe, knn_accuracy
from mmssl.registry import DOMAINS, TASKS, TaskSpec
from mmssl.tasks import ProbeConfig, TaskConfig
from mmssl.types import Extra
from tests.conftest import TINY_GRAPH


def test_mean_propagation_averages_each_node_with_its_undirected_neighbours() -> None:
    x = torch.tensor([[1.0, 0.0], [0.0, 2.0], [4.0, 4.0]])
    graph = Data(x=x.to_sparse_csr(), edge_index=torch.tensor([[0, 1], [1, 2]]), num_nodes=3)  # 0-1-2, one direction
    hops = mean_propagate(graph, hops=2)
    expected_1 = torch.stack([(x[0] + x[1]) / 2, (x[0] + x[1] + x[2]) / 3, (x[1] + x[2]) / 2])
    expected_2 = torch.stack(
        [(expected_1[0] + expected_1[1]) / 2, expected_1.mean(0), (expected_1[1] + expected_1[2]) / 2]
    )
    torch.testing.assert_close(hops[0], x)
    torch.testing.assert_close(hops[1], expected_1)
    torch.testing.assert_close(hops[2], expected_2)


def _random_graphs(n: int) -> list[Data]:
    """Two classes of 4-node graphs whose features differ by +1 on every feature."""
    g = torch.Generator().manual_seed(0)
    return [
        Data(
            x=torch.rand(4, 3, generator=g) + (i % 2), edge_index=torch.tensor([[0, 1], [1, 2]]), y=torch.tensor(i % 2)
        )
        for i in range(n)
    ]


def test_node_and_graph_baselines_report_probe_accuracies() -> None:
    results = {r["baseline"]: r for r in baseline_probes("karate-club")}  # `python -m domains.graph.baselines`
    assert set(results) == {"node-features", "propagated-features"}
    assert results["propagated-features"]["feature_dim"] == 3 * results["node-features"]["feature_dim"]
    assert all(0.0 <= r["accuracy"] <= 1.0 and r["n_test"] == 18 for r in results.values())
    graphs = _random_graphs(20)
    task = graph_task(graphs[:12], graphs[12:], ["a", "b"])
    raw = mean_features_baseline(task.train, task.test)
    assert raw.name == "mean-node-features" and raw.train[0].shape == (12, 3) and raw.test[0].shape == (8, 3)
    assert fit_linear_probe(raw.train, raw.test, ProbeConfig())["accuracy"] == 1.0  # the classes differ by +1


def test_raw_features_of_a_node_task_are_the_propagated_features_of_its_rows_with_their_labels() -> None:
    task, domain = TaskConfig(name="karate-club"), DOMAINS.get("graph")
    data = domain.task_data(task)
    raw = domain.raw_features(data, task)
    graph = TASKS.get("karate-club")().graph
    hops = torch.cat(mean_propagate(graph, hops=2), dim=1)  # [34, 3 * 34]
    assert raw.name == "propagated-features"
    torch.testing.assert_close(raw.train[0], hops[torch.tensor(data.train.items)])
    torch.testing.assert_close(raw.test[0], hops[torch.tensor(data.test.items)])
    batch = ego_collate(graph, [3, 2], with_labels=True)([data.test[i] for i in range(len(data.test))])
    assert torch.equal(raw.test[1], batch.extras[Extra.LABELS])  # the labels the encoder's probe scores against


@pytest.fixture(scope="module")
def karate_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return pretrain("dgi", [*TINY_GRAPH, "train.max_steps=2"], tmp_path_factory.mktemp("runs") / "dgi")


def _result(out: str) -> dict:
    return json.loads([line for line in out.splitlines() if line.startswith("{")][-1])


def test_evaluate_init_raw_gives_the_old_baseline_accuracy(karate_run: Path, capsys: pytest.CaptureFixture) -> None:
    # the reference: the probe of the former node_baselines() on the same seeded split
    task = TASKS.get("karate-club")()
    ids = [torch.tensor(rows.items) for rows in (task.train, task.test)]
    hops = torch.cat(mean_propagate(task.graph, hops=2), dim=1)
    train, test = ((hops[i], torch.tensor(rows.labels)) for i, rows in zip(ids, (task.train, task.test)))
    assert main(["evaluate", str(karate_run), "--task", "karate-club", "--init", "raw"]) == 0
    linear = _result(capsys.readouterr().out)
    assert linear["baseline"] == "propagated-features" and linear["init"] == "raw" and linear["feature_dim"] == 102
    assert linear["accuracy"] == fit_linear_probe(train, test, ProbeConfig())["accuracy"]
    assert (
        main(
            [
                "evaluate",
                str(karate_run),
                "--protocol",
                "knn",
                "--task",
                "karate-club",
                "--set",
                "probe.k=5",
                "--init",
                "raw",
            ]
        )
        == 0
    )
    assert _result(capsys.readouterr().out)["accuracy"] == knn_accuracy(train, test, num_classes=4, k=5)
    assert [r["init"] for r in read_metrics(karate_run) if r.get("event") == "evaluate"][-2:] == ["raw", "raw"]


def test_evaluate_init_raw_on_a_graph_level_task(
    karate_run: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    graphs = _random_graphs(20)
    spec = TaskSpec(lambda: graph_task(graphs[:12], graphs[12:], ["a", "b"]), domain="graph")
    monkeypatch.setitem(TASKS._items, "two-graph-classes", spec)
    assert main(["evaluate", str(karate_run), "--task", "two-graph-classes", "--init", "raw"]) == 0
    record = _result(capsys.readouterr().out)
    assert record["baseline"] == "mean-node-features" and record["accuracy"] == 1.0 and record["n_test"] == 8
