"""experiments/image_recipes.py's report: the latest row of each recipe and pooling, from several invocations."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from experiment_loader import load_experiment

pytest.importorskip("matplotlib")  # the report draws the kNN figure (the `benchmarks` extra)


@pytest.fixture(scope="module")
def image_recipes():
    yield from load_experiment("image_recipes")


def _row(model: str, pooling: str, linear: float) -> dict:
    return {
        "model": model,
        "wall_s": 60.0,
        "steps": 10,
        "pooling": pooling,
        "pretrained": {"linear": linear, "knn": 0.5},
        "random": {"linear": 0.1, "knn": 0.1},
    }


def test_each_pooling_is_its_own_row_and_later_runs_replace_earlier(image_recipes, tmp_path: Path) -> None:
    rows = [
        {"model": "raw pixels", "linear": 0.8, "knn": 0.7},
        _row("byol", "auto", 0.70),
        _row("mae", "mean", 0.71),
        _row("byol", "mean_std", 0.72),
        _row("byol", "auto", 0.73) | {"vs_pixels": {"gain": -0.07, "p_value": 0.0001}},
    ]
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    latest = image_recipes.latest_rows(tmp_path / "results.jsonl")
    # the recipe's own pooling keeps the bare name (MAE's own is the mean of patches)
    assert list(latest) == ["byol", "mae", "byol (mean_std)"]
    assert latest["byol"]["pretrained"]["linear"] == 0.73

    image_recipes.report(tmp_path, {"linear": 0.8, "knn": 0.7}, tmp_path / "knn.png")
    table = (tmp_path / "results.md").read_text().splitlines()
    assert table[2:] == [
        "| byol | auto | 10 | 1.0 min | 0.7300 / 0.1000 | 0.5000 / 0.1000 | -7.00 points, p <0.001 |",
        "| mae | mean | 10 | 1.0 min | 0.7100 / 0.1000 | 0.5000 / 0.1000 | - |",
        "| byol | mean_std | 10 | 1.0 min | 0.7200 / 0.1000 | 0.5000 / 0.1000 | - |",
        "| raw pixels | | | | 0.8000 | 0.7000 | |",
    ]
    assert (tmp_path / "knn.png").stat().st_size > 0


def test_the_paired_test_counts_the_images_only_one_probe_gets_right(image_recipes) -> None:
    pretrained = np.array([True] * 6 + [False] * 4)
    pixels = np.array([True] * 4 + [False] * 6)  # 2 images only the encoder gets right, none only the pixels
    test = image_recipes.paired(pretrained, pixels)
    assert test["gain"] == pytest.approx(0.2) and test["p_value"] == pytest.approx(0.5)  # 2 of 2: binomial p 0.5
