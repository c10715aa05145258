"""Fine-tuning and linear probes on a user's own CSV, results in the run's metrics."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
from transformers import AutoModelForSequenceClassification

from mmssl.cli import main
from mmssl.finetune import load_predictions, paired_comparison
from mmssl.metrics import read_metrics


@pytest.fixture(scope="module")
def reviews_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A separable two-class task: sentiment words decide the label."""
    rng = random.Random(0)
    good, bad = ["delightful", "charming", "excellent", "lovely"], ["tedious", "dreadful", "awful", "dull"]
    rows = ["review,sentiment"]
    for i in range(240):
        positive = i % 2 == 0
        words = rng.sample(good if positive else bad, 2) + rng.sample(["the", "film", "was", "quite", "and"], 3)
        rng.shuffle(words)
        rows.append(f"{' '.join(words)},{'pos' if positive else 'neg'}")
    path = tmp_path_factory.mktemp("task") / "reviews.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def _task(csv: Path) -> list[str]:
    return [
        "--task",
        "file",
        "--set",
        f"task.path={csv}",
        "--set",
        "task.input_column=review",
        "--set",
        "task.label_column=sentiment",
    ]


def test_linear_probe_on_a_users_csv(tiny_bert_run: Path, reviews_csv: Path, capsys) -> None:
    assert main(["evaluate", str(tiny_bert_run), "--protocol", "linear", *_task(reviews_csv)]) == 0
    record = [r for r in read_metrics(tiny_bert_run) if r.get("event") == "evaluate"][-1]
    assert record["protocol"] == "linear" and record["n_test"] == 48 and record["n_train"] == 192
    assert record["accuracy"] > 0.8  # the sentiment words are in the tokenizer's vocabulary
    assert '"accuracy"' in capsys.readouterr().out


def test_knn_probe_on_a_users_csv(tiny_bert_run: Path, reviews_csv: Path) -> None:
    assert main(["evaluate", str(tiny_bert_run), "--protocol", "knn", "--set", "probe.k=10", *_task(reviews_csv)]) == 0
    record = [r for r in read_metrics(tiny_bert_run) if r.get("event") == "evaluate"][-1]
    assert record["protocol"] == "knn" and record["k"] == 10 and record["n_test"] == 48
    assert record["accuracy"] > 0.7


def test_finetune_with_baseline_writes_both_results(tiny_bert_run: Path, reviews_csv: Path, capsys) -> None:
    args = [
        "finetune",
        str(tiny_bert_run),
        *_task(reviews_csv),
        "--set",
        "train.max_steps=30",
        "--set",
        "train.lr=3e-3",
        "--set",
        "train.batch_size=16",
        "--baseline",
    ]
    assert main(args) == 0
    records = [r for r in read_metrics(tiny_bert_run) if r.get("event") == "finetune"][-2:]
    assert [r["init"] for r in records] == ["pretrained", "random"]
    assert all(0.0 <= r["accuracy"] <= 1.0 and r["n_test"] == 48 for r in records)
    assert records[0]["accuracy"] > 0.75
    out = capsys.readouterr().out
    assert "pretrained init" in out and "random init" in out and "gain" in out
    # the paired test uses the predictions each run saved on the same 48 test rows
    (pa, la), (pb, lb) = (load_predictions(Path(r["output_dir"])) for r in records)
    assert pa.shape == pb.shape == (48,) and np.array_equal(la, lb)
    assert [float(np.mean(pa == la)), float(np.mean(pb == lb))] == [r["accuracy"] for r in records]
    c = paired_comparison(pa == la, pb == lb)
    assert f"McNemar p        {c['p_value']:.3f}" in out and f"{c['only_a']} rows right only with the pretrained" in out
    assert f"gain             {c['gain']:+.4f}  (95% CI {c['ci95'][0]:+.4f} to" in out
    export = Path(records[0]["output_dir"]) / "export"
    model = AutoModelForSequenceClassification.from_pretrained(export)
    assert model.config.id2label == {0: "neg", 1: "pos"}  # the CSV's label names, sorted
    assert (export / "tokenizer.json").is_file()  # the export carries its tokenizer


def test_missing_task_column_is_named(tiny_bert_run: Path, reviews_csv: Path, capsys) -> None:
    code = main(["evaluate", str(tiny_bert_run), "--task", "file", "--set", f"task.path={reviews_csv}"])
    assert code == 2
    err = capsys.readouterr().err
    assert "task.input_column: column 'text' not found; available: review, sentiment" in err


def test_unknown_task_and_missing_path(tiny_bert_run: Path, capsys) -> None:
    assert main(["evaluate", str(tiny_bert_run), "--task", "imdbb"]) == 2
    err = capsys.readouterr().err
    assert "unknown task 'imdbb'; the text domain's tasks: rotten-tomatoes, file, hub" in err  # what this export takes
    assert main(["evaluate", str(tiny_bert_run), "--task", "file"]) == 2
    assert "task.path is required" in capsys.readouterr().err


def test_classlabel_task_and_named_test_split(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    from domains.text.tasks import text_task_data
    from mmssl.registry import TASKS, TaskSpec
    from mmssl.tasks import TaskConfig

    rows = {"text": [f"t{i}" for i in range(20)], "label": [i % 2 for i in range(20)]}
    ds = datasets.Dataset.from_dict(
        rows,
        features=datasets.Features(
            {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])}
        ),
    )
    monkeypatch.setitem(TASKS._items, "toy", TaskSpec(lambda: ds, domain="text"))
    data = text_task_data(TaskConfig(name="toy", test_fraction=0.25))
    assert data.label_names == ["neg", "pos"] and len(data.test) == 5
    assert sorted(set(data.train["label"])) == [0, 1]

    folder = tmp_path / "hubset"
    folder.mkdir()
    (folder / "train.csv").write_text(
        "review,stars\n" + "".join(f"r{i},{'hi' if i % 2 else 'lo'}\n" for i in range(10))
    )
    (folder / "test.csv").write_text("review,stars\nx,hi\ny,lo\n")
    data = text_task_data(
        TaskConfig(name="hub", path=str(folder), input_column="review", label_column="stars", test_split="test")
    )
    assert data.label_names == ["hi", "lo"] and data.test["label"] == [0, 1] and len(data.train) == 10
    (folder / "test.csv").write_text("review,stars\nz,mid\n")
    with pytest.raises(ValueError, match="label 'mid' of a test row is absent"):
        text_task_data(
            TaskConfig(name="hub", path=str(folder), input_column="review", label_column="stars", test_split="test")
        )


def test_paired_comparison_matches_the_per_row_differences() -> None:
    from scipy.stats import binomtest

    rng = np.random.default_rng(0)
    a, b = rng.random(500) < 0.75, rng.random(500) < 0.70
    c = paired_comparison(a, b)
    d = a.astype(float) - b.astype(float)
    assert c["gain"] == pytest.approx(a.mean() - b.mean()) and c["n"] == 500
    assert c["se"] == pytest.approx(d.std() / np.sqrt(500))  # SE of the mean per-row difference
    assert c["ci95"] == pytest.approx([c["gain"] - 1.96 * c["se"], c["gain"] + 1.96 * c["se"]])
    assert (c["only_a"], c["only_b"]) == (int((a & ~b).sum()), int((~a & b).sum()))
    assert c["p_value"] == pytest.approx(binomtest(c["only_a"], c["only_a"] + c["only_b"]).pvalue)
    # identical predictions: no evidence either way
    same = paired_comparison(a, a)
    assert same["gain"] == 0.0 and same["se"] == 0.0 and same["p_value"] == 1.0
    # one model right on 30 more rows and never worse: clearly significant
    better = paired_comparison(np.ones(100, bool), np.arange(100) >= 30)
    assert better["gain"] == pytest.approx(0.3) and better["p_value"] < 1e-8
    with pytest.raises(ValueError, match="equal, non-empty 1-D arrays"):
        paired_comparison(a, b[:10])
