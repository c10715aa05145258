"""experiments/s4l.py on a tiny run: both arms train on one labelled subset, are scored on every test image with
their classifier head, and are compared with McNemar's test; the report rebuilds from the saved outcomes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from experiment_loader import load_experiment

TINY = [
    "encoder.resnet_width=4",
    "train.batch_size=8",
    "data.labelled_batch_size=4",
    "data.max_images=64",
    "train.warmup_steps=1",
    "train.log_every=1",
]


@pytest.fixture(scope="module")
def s4l():
    yield from load_experiment("s4l")


@pytest.fixture(scope="module")
def result(s4l, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("s4l")
    argv = ["--data", "fashion-mnist-small", "--labels", "2", "--seeds", "0", "--steps", "2", "--out", str(out)]
    return s4l.main([*argv, *(a for o in TINY for a in ("--set", o))]), out


def test_both_arms_train_on_one_labelled_subset_and_are_scored_on_every_test_image(result) -> None:
    res, out = result
    runs = {r["arm"]: r for r in res["runs"]}
    assert set(runs) == {"s4l", "supervised"}
    assert runs["s4l"]["rotation_weight"] == 1.0 and runs["supervised"]["rotation_weight"] == 0.0
    assert runs["s4l"]["labelled_subset"] == runs["supervised"]["labelled_subset"]
    assert all(r["labelled_images"] == 20 and r["steps"] == 2 and r["test_images"] == 2000 for r in runs.values())
    for arm, run in runs.items():
        correct = np.load(out / "2-per-class" / "seed-0" / arm / "test_correct.npy")
        assert correct.dtype == bool and run["test_accuracy"] == pytest.approx(correct.mean())


def test_the_arms_are_compared_with_mcnemar_and_the_report_rebuilds(s4l, result) -> None:
    res, out = result
    summary = res["comparison"]["2"]["summary"]
    vs = summary["supervised"]["vs_reference"]
    assert len(vs["mcnemar_p"]) == 1 and 0 <= vs["mcnemar_p"][0] <= 1
    assert "S4L-Rotation (w=1)" in (out / "results.md").read_text()
    rebuilt = s4l.main(["--report-only", "--out", str(out)])
    assert rebuilt["comparison"] == json.loads(json.dumps(res["comparison"]))
    assert [r["wall_s"] for r in rebuilt["runs"]] == [r["wall_s"] for r in sorted(res["runs"], key=lambda r: r["arm"])]


def test_arms_of_different_labelled_subsets_are_refused(s4l, result) -> None:
    res, out = result
    records = [dict(r) for r in res["runs"]]
    records[1]["labelled_subset"] = "0" * 12
    with pytest.raises(ValueError, match="different labelled subsets"):
        s4l.compare(out, records)
