"""The graph domain end to end at tiny size: pretrain -> export -> probes, fine-tuning and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch_geometric.datasets import FakeDataset

from domains.graph.domain import graph_task
from domains.graph.gnn import GraphBackbone
from mmssl.cli import main
from mmssl.finetune import finetune
from mmssl.pretrain import pretrain
from mmssl.probes import knn_probe, linear_probe
from mmssl.recipe import TrainConfig
from mmssl.registry import TASKS, TaskSpec
from mmssl.tasks import FinetuneConfig, ProbeConfig, TaskConfig
from tests.conftest import TINY_GRAPH, TINY_GRAPH_LEVEL

TINY_TRAIN = TrainConfig(max_steps=4, batch_size=8, lr=1e-2, warmup_steps=1, log_every=2, checkpoint_every=4)


@pytest.fixture(scope="module")
def karate_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return pretrain("dgi", [*TINY_GRAPH, "train.max_steps=6"], tmp_path_factory.mktemp("runs") / "dgi")


def test_export_loads_with_the_hub_mixin(karate_run: Path) -> None:
    export = karate_run / "export"
    meta = json.loads((export / "mmssl.json").read_text())
    assert meta["domain"] == "graph" and meta["recipe"] == "dgi" and meta["nodes"] == 34
    assert json.loads((export / "graph_processor.json").read_text())["in_channels"] == 34
    assert GraphBackbone.from_pretrained(export).out_dim == 32


def test_linear_and_knn_probes_on_karate(karate_run: Path) -> None:
    task = TaskConfig(name="karate-club")
    linear = linear_probe(karate_run, FinetuneConfig(task=task))
    knn = knn_probe(karate_run, FinetuneConfig(task=task, probe=ProbeConfig(k=5)))
    for record in (linear, knn):
        assert record["n_train"] == 16 and record["n_test"] == 18 and 0.0 <= record["accuracy"] <= 1.0
    assert linear["feature_dim"] == 32


def test_finetune_on_karate_writes_an_export(karate_run: Path, tmp_path: Path) -> None:
    record = finetune(
        karate_run, FinetuneConfig(task=TaskConfig(name="karate-club"), train=TINY_TRAIN), tmp_path / "ft"
    )
    assert record["n_test"] == 18 and 0.0 <= record["accuracy"] <= 1.0
    export = Path(record["output_dir"]) / "export"
    assert export.is_relative_to(tmp_path / "ft") and (export / "classifier_head.safetensors").is_file()
    assert GraphBackbone.from_pretrained(export).arch == "sage"


def test_cli_evaluate_linear(karate_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", str(karate_run), "--protocol", "linear", "--task", "karate-club"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["protocol"] == "linear"


def test_full_batch_mode_and_its_contract(tmp_path: Path) -> None:
    run = pretrain(
        "graphmae", [*TINY_GRAPH, "data.mode=full", "train.batch_size=1", "train.max_steps=3"], tmp_path / "a"
    )
    assert (run / "export" / "config.json").is_file()
    with pytest.raises(ValueError, match="train.batch_size=1"):
        pretrain("graphmae", [*TINY_GRAPH, "data.mode=full", "train.max_steps=3"], tmp_path / "b")


def test_graph_level_pretrain_and_finetune(tmp_path: Path) -> None:
    torch.manual_seed(0)
    graphs = list(FakeDataset(num_graphs=40, avg_num_nodes=8, avg_degree=2, num_channels=8, num_classes=3))
    TASKS.add(
        "tiny-graphs-test", TaskSpec(lambda: graph_task(graphs[:24], graphs[24:], ["a", "b", "c"]), domain="graph")
    )
    run = pretrain("graphcl", [*TINY_GRAPH_LEVEL, "train.max_steps=3"], tmp_path / "graphcl")
    task = TaskConfig(name="tiny-graphs-test")
    record = finetune(run, FinetuneConfig(task=task, train=TINY_TRAIN), tmp_path / "ft")
    assert record["n_train"] == 24 and record["n_test"] == 16
    assert linear_probe(run, FinetuneConfig(task=task))["feature_dim"] == 32
    with pytest.raises(ValueError, match="graph-level"):
        linear_probe(run, FinetuneConfig(task=TaskConfig(name="karate-club")))
