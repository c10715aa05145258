"""Shared fixtures: tiny model sizes, an offline Hub, and one tiny pretrained BERT run per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may reach the Hub from the tests
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# A BERT/GPT-2 of a few thousand parameters on a few hundred paragraphs: seconds per run.
TINY = [
    "data.max_texts=400",
    "data.block_size=32",
    "data.tokenizer.vocab_size=300",
    "encoder.hidden_size=32",
    "encoder.num_layers=2",
    "encoder.num_heads=2",
    "encoder.intermediate_size=64",
    "encoder.max_position_embeddings=64",
    "train.batch_size=8",
    "train.warmup_steps=2",
    "train.log_every=1",
]


# A tiny ViT / ResNet on 32 random 28x28 grayscale images (data.path is added by tiny_images).
TINY_IMAGE = [
    "data.source=numpy",
    "encoder.hidden_size=32",
    "encoder.num_layers=2",
    "encoder.num_heads=2",
    "encoder.intermediate_size=64",
    "encoder.resnet_width=4",
    "train.batch_size=8",
    "train.warmup_steps=2",
    "train.log_every=1",
    "train.max_minutes=null",
    "monitor.every=0",
]


# A tiny GNN on KarateClub (34 nodes, node-level recipes) or on 24 random PyG graphs (graph-level ones).
TINY_GRAPH = [
    "data.source=pyg",
    "data.name=KarateClub",
    "data.num_neighbors=[3, 2]",
    "data.eval_num_neighbors=[3, 2]",
    "encoder.hidden_size=32",
    "encoder.num_layers=2",
    "train.batch_size=8",
    "train.warmup_steps=2",
    "train.log_every=1",
    "train.max_minutes=null",
    "monitor.every=0",
]
TINY_GRAPH_LEVEL = [
    "data.source=pyg",
    "data.name=FakeDataset",
    "data.kwargs={num_graphs: 24, avg_num_nodes: 8, avg_degree: 2, num_channels: 8}",
    *TINY_GRAPH[4:],
]


@pytest.fixture(scope="session")
def tiny_images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """32 random 28x28 uint8 images saved as .npy (the recipes' Fashion-MNIST shape)."""
    import numpy as np

    path = tmp_path_factory.mktemp("images") / "images.npy"
    np.save(path, np.random.default_rng(0).integers(0, 256, (32, 28, 28), dtype=np.uint8))
    return path


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MMSSL_CACHE", str(tmp_path_factory.getbasetemp() / "mmssl-cache"))


@pytest.fixture(scope="session")
def tiny_bert_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 12-step tiny BERT run (with its export) shared by export, hub and fine-tune tests."""
    from mmssl.pretrain import pretrain

    run_dir = tmp_path_factory.mktemp("runs") / "bert"
    return pretrain("bert", [*TINY, "train.max_steps=12", "train.checkpoint_every=6"], run_dir)


@pytest.fixture(scope="session")
def tiny_gpt_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mmssl.pretrain import pretrain

    run_dir = tmp_path_factory.mktemp("runs") / "gpt"
    return pretrain("gpt", [*TINY, "train.max_steps=12", "train.checkpoint_every=6"], run_dir)
