"""experiments/label_efficiency.py: budget curves on known features, the table and the figure."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from experiment_loader import load_experiment

from mmssl.domain import TaskData
from mmssl.probes import ProbeInputs
from mmssl.tasks import FinetuneConfig, TaskConfig


@pytest.fixture(scope="module")
def label_efficiency():
    yield from load_experiment("label_efficiency")


def _inputs(signal: float, seed: int) -> ProbeInputs:
    """Two well-separated classes in 2 features whose separation is ``signal``, 8 noise features; 200 / 100 rows."""
    g = torch.Generator().manual_seed(seed)

    def rows(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.arange(n) % 2
        x = torch.randn(n, 10, generator=g)
        x[:, :2] += signal * (2 * y[:, None] - 1)
        return x, y

    return ProbeInputs(rows(200), rows(100), TaskData([], [], ["a", "b"]), run_dir=None)


def test_budget_curve_fits_every_init_on_the_same_subsets(label_efficiency) -> None:
    inputs = {"pretrained": _inputs(3.0, 0), "random": _inputs(0.0, 1), "raw": _inputs(0.5, 2)}
    cfg = FinetuneConfig(task=TaskConfig(name="file"))

    curve = label_efficiency.budget_curve(inputs, cfg, 0.1, seeds=3)
    assert curve["n_train"] == [20, 20, 20]  # 10% of each class's 100 rows, at every seed
    summary = curve["summary"]
    assert summary["pretrained init"]["mean"] > 0.95
    assert abs(summary["random init"]["mean"] - 0.5) < 0.15  # no signal: chance
    versus = summary["random init"]["vs_reference"]
    assert len(versus["mcnemar_p"]) == 3 and versus["mcnemar_p_median"] < 0.001
    assert versus["over_seeds"]["p_value"] < 0.05

    every = label_efficiency.budget_curve(inputs, cfg, 1.0, seeds=3)
    assert every["n_train"] == [200]  # 100%: every seed would fit the same rows, so one is fitted
    assert every["summary"]["random init"]["vs_reference"]["over_seeds"]["p_value"] is None


def _record(modality: str, fraction: float, means: dict[str, float]) -> dict:
    p = (
        {"over_seeds": {"p_value": 0.01}}
        if fraction < 1
        else {"over_seeds": {"p_value": None}, "mcnemar_p_median": 1e-5}
    )
    summary = {
        name: {"mean": m, "sd": 0.01 if fraction < 1 else None, "accuracies": [m] * 3}
        | ({} if name == "pretrained init" else {"vs_reference": p})
        for name, m in means.items()
    }
    return {
        "modality": modality,
        "recipe": "vicreg",
        "task": "t",
        "label_fraction": fraction,
        "n_train": [int(fraction * 1000)] * 3,
        "summary": summary,
    }


def test_report_keeps_the_latest_record_and_draws_the_figure(label_efficiency, tmp_path: Path) -> None:
    means = {"pretrained init": 0.8, "random init": 0.4, "raw features": 0.7}
    records = [
        _record("image", 0.01, {**means, "pretrained init": 0.1}),  # replaced by the later line
        _record("image", 0.1, means),
        _record("image", 0.01, means),
        _record("graph", 1.0, means),
    ]
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))

    figures = label_efficiency.report(tmp_path, tmp_path / "fig.png")

    assert figures["image 1%"]["pretrained init"] == 0.8
    table = (tmp_path / "results.md").read_text().splitlines()
    assert table[2:] == [
        "| image (vicreg, t) | 1% (10) | 0.800 ± 0.010 | 0.400 ± 0.010 (p 0.010) | 0.700 ± 0.010 (p 0.010) |",
        "| image (vicreg, t) | 10% (100) | 0.800 ± 0.010 | 0.400 ± 0.010 (p 0.010) | 0.700 ± 0.010 (p 0.010) |",
        "| graph (vicreg, t) | 100% (1,000) | 0.800 | 0.400 (McNemar p <0.001) | 0.700 (McNemar p <0.001) |",
    ]
    assert (tmp_path / "fig.png").stat().st_size > 10_000


def test_unknown_modality_is_an_error(label_efficiency) -> None:
    with pytest.raises(SystemExit, match="unknown modality video"):
        label_efficiency.main(["video"])


def test_every_study_names_a_recipe_and_task_that_exist(label_efficiency) -> None:
    recipes = Path(__file__).resolve().parents[2] / "recipes"
    for modality, spec in label_efficiency.STUDIES.items():
        assert (recipes / f"{spec.recipe}.yaml").exists(), modality
    assert np.allclose(label_efficiency.BUDGETS, (0.01, 0.1, 1.0))
