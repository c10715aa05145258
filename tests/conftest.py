"""Shared fixtures: tiny model sizes, an offline Hub, and one tiny pretrained BERT run per session."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest

from mmssl.registry import DOMAINS

# the data fixtures of the audio and speech-text tests (clips rendered once per session), for every test
# that names them: the domains' own tests, the recipe smoke test and the contract tests
pytest_plugins = ["tests.domains.audio.audio_fixtures", "tests.domains.speech_text.speech_text_fixtures"]

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may reach the Hub from the tests
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# A domain's smoke_overrides name the file a test fixture writes as "{fixture_name}" (data.path={tiny_images}).
FIXTURE_PLACEHOLDER = re.compile(r"\{(\w+)\}")


def tiny_overrides(domain: str, **data: Any) -> list[str]:
    """The ``--set`` strings of ``DOMAINS.get(domain).smoke_overrides`` for a ``data:`` section with ``data``'s
    values, less those naming a fixture's file (each test adds its own ``data.path``), at 2 layers deep."""
    spec = DOMAINS.get(domain)
    overrides = spec.smoke_overrides(spec.data_config(**data))
    return [o for o in overrides if not FIXTURE_PLACEHOLDER.search(o)] + ["encoder.num_layers=2"]


# A BERT/GPT-2 of a few thousand parameters on a few hundred paragraphs: seconds per run.
TINY = tiny_overrides("text")

# A tiny ViT / ResNet on 32 random 28x28 grayscale images (data.path is added by tiny_images).
TINY_IMAGE = tiny_overrides("image")

# A tiny GNN on KarateClub (34 nodes, node-level recipes) or on 24 random PyG graphs (graph-level ones).
TINY_GRAPH = tiny_overrides("graph")
TINY_GRAPH_LEVEL = tiny_overrides("graph", level="graph")


@pytest.fixture(scope="session")
def tiny_images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """32 random 28x28 uint8 images saved as .npy (the recipes' Fashion-MNIST shape)."""
    import numpy as np

    path = tmp_path_factory.mktemp("images") / "images.npy"
    np.save(path, np.random.default_rng(0).integers(0, 256, (32, 28, 28), dtype=np.uint8))
    return path


@pytest.fixture(scope="session")
def tiny_colour_images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """32 random 32x32 RGB uint8 images saved as .npy ``[N, 3, H, W]`` (data.encoder_input=lightness: colorization)."""
    import numpy as np

    path = tmp_path_factory.mktemp("colour-images") / "images.npy"
    np.save(path, np.random.default_rng(0).integers(0, 256, (32, 3, 32, 32), dtype=np.uint8))
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
