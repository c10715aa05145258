"""Every recipe file runs end to end at tiny size: pretrain -> export -> reload through its domain.

Each recipe is shrunk by its own domain (``DOMAINS.get(recipe.domain).smoke_overrides(recipe.data)``), never by a
rule of this file, so a recipe of a new domain runs on that domain's settings or fails on a missing method.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mmssl.export import export_meta
from mmssl.metrics import read_metrics
from mmssl.pretrain import pretrain
from mmssl.recipe import Recipe, list_recipes, load_recipe
from mmssl.registry import DOMAINS
from tests.conftest import FIXTURE_PLACEHOLDER

RECIPES = [name for name, _ in list_recipes()]


def test_every_recipe_file_validates() -> None:
    assert {
        "bert",
        "gpt",
        "simclr",
        "moco",
        "byol",
        "simsiam",
        "barlow_twins",
        "vicreg",
        "mae",
        "rotation",
        "jigsaw",
    } <= set(RECIPES)
    assert {"data2vec_text", "data2vec_image", "data2vec_audio", "data2vec_graph"} <= set(
        RECIPES
    )  # one objective, four domains
    assert "t5" in RECIPES  # T5 span corruption (smoke-run below like every recipe)
    assert "electra" in RECIPES  # ELECTRA (smoke-run below like every recipe)
    for name in RECIPES:
        recipe = load_recipe(name)
        assert recipe.name == name and recipe.description


def test_recipes_hold_no_time_budget() -> None:
    """A recipe's schedule is never cut by the clock: ``train.max_minutes`` is the user's (``--set``) only."""
    assert [name for name in RECIPES if load_recipe(name).train.max_minutes is not None] == []
    capped = load_recipe("simclr", ["train.max_minutes=10"]).train
    assert capped.max_minutes == 10 and capped.max_steps == load_recipe("simclr").train.max_steps


def smoke_overrides(recipe: Recipe, request: pytest.FixtureRequest) -> list[str]:
    """The recipe's domain's tiny overrides, each ``{fixture}`` replaced by the path that fixture returns."""
    overrides = DOMAINS.get(recipe.domain).smoke_overrides(recipe.data)
    fill = lambda match: str(request.getfixturevalue(match.group(1)))  # noqa: E731
    return [FIXTURE_PLACEHOLDER.sub(fill, o) for o in overrides]


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_smoke_run(name: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    recipe = load_recipe(name)
    run = pretrain(name, [*smoke_overrides(recipe, request), "train.max_steps=4"], tmp_path / name)
    losses = [r["loss"] for r in read_metrics(run) if "loss" in r]
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses)))
    export = run / "export"
    assert export_meta(export)["recipe"] == name
    # the export loads back as the domain loads any export (transformers / huggingface_hub classes underneath)
    assert DOMAINS.get(recipe.domain).load_encoder(export).hidden_size == 32
