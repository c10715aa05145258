"""Every recipe runs end to end at tiny size: pretrain -> export -> reload with transformers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModel

from mmssl.export import export_meta
from mmssl.metrics import read_metrics
from mmssl.pretrain import pretrain
from mmssl.recipe import list_recipes, load_recipe
from domains.image.resnet import SmallResNet
from tests.conftest import TINY, TINY_GRAPH, TINY_GRAPH_LEVEL, TINY_IMAGE

RECIPES = [name for name, _ in list_recipes()]


def test_every_recipe_file_validates() -> None:
    assert {"bert", "gpt", "simclr", "moco", "byol", "simsiam", "barlow_twins", "vicreg", "mae", "rotation", "jigsaw"} <= set(RECIPES)
    assert {"data2vec_text", "data2vec_image", "data2vec_audio", "data2vec_graph"} <= set(RECIPES)  # one objective, four domains
    for name in RECIPES:
        recipe = load_recipe(name)
        assert recipe.name == name and recipe.description


# audio recipes need rendered audio files: tests/domains/audio/test_audio_recipes.py smoke-runs them, and
# tests/domains/speech_text/test_speech_text_recipe.py the paired speech-text one
NON_AUDIO = [name for name in RECIPES if load_recipe(name).domain not in ("audio", "speech_text")]


@pytest.mark.parametrize("name", NON_AUDIO)
def test_recipe_smoke_run(name: str, tmp_path: Path, tiny_images: Path) -> None:
    recipe = load_recipe(name)
    tiny = TINY if recipe.domain == "text" else [*TINY_IMAGE, f"data.path={tiny_images}"]
    if recipe.domain == "graph":  # KarateClub (node level) or random PyG graphs (graph level)
        tiny = TINY_GRAPH if recipe.data.level == "node" else TINY_GRAPH_LEVEL
    if recipe.objective.name == "data2vec":  # the tiny encoders have 2 layers (data2vec_audio: test_audio_recipes.py)
        tiny = [*tiny, "objective.top_k_layers=2"]
    run = pretrain(name, [*tiny, "train.max_steps=4"], tmp_path / name)
    losses = [r["loss"] for r in read_metrics(run) if "loss" in r]
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses)))
    export = run / "export"
    assert export_meta(export)["recipe"] == name
    if recipe.domain == "graph":
        from domains.graph.gnn import GraphBackbone  # huggingface_hub's mixin, no mmssl training code

        assert GraphBackbone.from_pretrained(export).out_dim == 32
        return
    if recipe.domain == "image" and recipe.encoder.arch == "resnet":
        model = SmallResNet.from_pretrained(export)  # huggingface_hub's mixin, no mmssl training code
        assert model(torch.rand(2, 1, 28, 28)).shape == (2, 32, 4, 4)
        return
    config = AutoConfig.from_pretrained(export)
    base = AutoModel.from_pretrained(export)  # the backbone alone, as a fine-tuning user loads it
    assert base.config.hidden_size == config.hidden_size == 32
