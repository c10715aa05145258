"""Fine-tuning and linear probes on a user's own CSV, results in the run's metrics; fine-tuning's epochs, its
validation slice and the epoch it keeps."""

from __future__ import annotations

import json
import random
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from transformers import AutoModelForSequenceClassification

from mmssl.cli import main
from mmssl.finetune import accuracy_then_loss, load_predictions, stratified_holdout, validation_split
from mmssl.metrics import read_metrics
from mmssl.registry import DOMAINS
from mmssl.stats import paired_comparison
from mmssl.tasks import TaskConfig


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


# ---------------------------------------------------------------------------- epochs and the validation slice
def _result(out: str) -> dict:
    return json.loads([line for line in out.splitlines() if line.startswith("{")][-1])


def _val_lines(folder: Path) -> list[dict]:
    return [r for r in read_metrics(folder) if "val_accuracy" in r]


def _diverging_after(epochs: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make fine-tuning's learning rate 1,000 times higher after ``epochs`` epochs: the later ones get worse."""
    import mmssl.finetune as ft

    build = ft.finetune_trainer

    def diverging(*args, **kwargs):
        trainer, best = build(*args, **kwargs)

        def blow_up(t, step: int) -> None:
            if step == epochs * t.steps_per_epoch:
                t.scheduler.scheduler.base_lrs = [lr * 1000 for lr in t.scheduler.scheduler.base_lrs]

        trainer.hooks.append(blow_up)
        return trainer, best

    monkeypatch.setattr(ft, "finetune_trainer", diverging)


def test_finetune_runs_epochs_keeps_the_best_one_and_exports_it(
    tiny_bert_run: Path, reviews_csv: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    import torch
    from transformers import AutoTokenizer

    _diverging_after(2, monkeypatch)  # the third epoch runs at lr 3.0
    sets = ["--set", "train.epochs=3", "--set", "train.lr=3e-3", "--set", "train.batch_size=16"]
    assert main(["finetune", str(tiny_bert_run), *_task(reviews_csv), *sets, "--output-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    result = _result(out)
    # 192 training rows, 96 a class: 10 of each held out, the other 172 in 11 batches of 16 (the last of 12)
    assert (result["n_train"], result["n_validation"], result["n_test"]) == (192, 20, 48)
    assert (result["epochs"], result["steps"]) == (3.0, 33)
    lines = _val_lines(tmp_path / "file-pretrained")  # one metrics line per epoch
    assert [(r["step"], r["epoch"]) for r in lines] == [(11, 1), (22, 2), (33, 3)]
    ranks = [accuracy_then_loss(r) for r in lines]
    kept = ranks.index(max(ranks))  # the best accuracy, then the lowest loss
    best = lines[kept]["val_accuracy"]
    assert kept < 2 and lines[2]["val_accuracy"] < best  # the third epoch, at lr 3.0, is worse
    assert (result["best_epoch"], result["best_step"]) == (kept + 1, 11 * (kept + 1))
    assert (result["best_val_accuracy"], result["best_val_loss"]) == (best, lines[kept]["val_loss"])
    assert (
        f"fine-tuned 3 epochs (33 steps); kept epoch {kept + 1}, validation accuracy {best:.4f} (loss "
        f"{result['best_val_loss']:.4f}) on 20 rows; test accuracy {result['accuracy']:.4f} on 48 rows"
    ) in out
    recorded = [r for r in read_metrics(tiny_bert_run) if r.get("event") == "finetune"][-1]
    marker = json.loads((tmp_path / "file-pretrained" / "finetune.json").read_text())
    for key in ("epochs", "best_epoch", "best_val_accuracy", "best_val_loss", "steps", "n_validation", "accuracy"):
        assert recorded[key] == marker[key] == result[key]
    assert (marker["task"], marker["init"], marker["domain"]) == ("file", "pretrained", "text")

    # the export holds the kept epoch's weights: it scores the kept accuracy on the validation rows
    task = TaskConfig(name="file", path=str(reviews_csv), input_column="review", label_column="sentiment")
    text = DOMAINS.get("text")
    _, validation = validation_split(text, text.task_data(task).train, task)
    export = tmp_path / "file-pretrained" / "export"
    model, tokenizer = AutoModelForSequenceClassification.from_pretrained(export), AutoTokenizer.from_pretrained(export)
    with torch.no_grad():
        logits = model(**tokenizer(list(validation["text"]), padding=True, return_tensors="pt")).logits
    assert float((logits.argmax(-1).numpy() == np.asarray(list(validation["label"]))).mean()) == pytest.approx(best)


def test_the_validation_slice_is_stratified_seeded_and_carved_from_the_training_split(tmp_path: Path) -> None:
    csv = tmp_path / "rows.csv"
    labels = ["a"] * 60 + ["b"] * 25 + ["c"] * 3
    csv.write_text("review,label\n" + "".join(f"review {i},{label}\n" for i, label in enumerate(labels)))
    text = DOMAINS.get("text")
    task = TaskConfig(name="file", path=str(csv), input_column="review")
    data = text.task_data(task)
    kept, validation = validation_split(text, data.train, task)
    train, test = list(data.train["text"]), list(data.test["text"])
    held, rest = list(validation["text"]), list(kept["text"])
    assert set(held) <= set(train) and not set(held) & set(test)  # carved from the training split, never the test
    assert not set(held) & set(rest) and len(held) + len(rest) == len(train)
    for c in range(3):  # 10% of every class (at least one), never the last row of a class
        n = list(data.train["label"]).count(c)
        assert list(validation["label"]).count(c) == min(max(round(0.1 * n), 1), n - 1)
        assert list(kept["label"]).count(c) >= 1
    assert list(validation_split(text, data.train, task)[1]["text"]) == held  # seeded: the same rows again
    assert list(validation_split(text, data.train, replace(task, split_seed=1))[1]["text"]) != held


def test_epochs_of_equal_accuracy_are_ranked_by_their_loss_and_an_exact_tie_keeps_the_earlier() -> None:
    """A small validation slice often scores several epochs 1.0: the lower loss wins among them."""
    import torch
    from torch import nn

    from mmssl.trainer import BestWeights

    evaluations = iter([(0.5, 0.9), (1.0, 0.4), (1.0, 0.2), (1.0, 0.2), (0.75, 0.1)])
    best = BestWeights(lambda m: dict(zip(("val_accuracy", "val_loss"), next(evaluations))), accuracy_then_loss)
    model = nn.Linear(2, 2)
    trainer = SimpleNamespace(accelerator=SimpleNamespace(unwrap_model=lambda m: m), model=model, state=None)
    for epoch in range(1, 6):
        with torch.no_grad():
            model.weight.fill_(epoch)
        trainer.state = SimpleNamespace(step=10 * epoch)
        best(trainer, float(epoch))
    assert (best.epoch, best.metrics) == (3.0, {"val_accuracy": 1.0, "val_loss": 0.2})
    assert torch.equal(best.weights["weight"], torch.full((2, 2), 3.0))


def test_stratified_holdout_keeps_every_class_in_training() -> None:
    labels = np.array([2] * 40 + [0] + [1] * 2)
    kept, held = stratified_holdout(labels, 0.1, seed=0)
    assert sorted(labels[held].tolist()) == [1] + [2] * 4  # the single row of class 0 stays in training
    assert sorted(np.concatenate([kept, held]).tolist()) == list(range(43)) and set(labels[kept]) == {0, 1, 2}
    assert stratified_holdout(labels, 0.0, seed=0)[1].size == 0


@pytest.mark.parametrize("fraction", [0.1, 0.0])
def test_fewer_rows_than_a_batch_fine_tune_for_three_epochs(
    tiny_bert_run: Path, tmp_path: Path, fraction: float, capsys
) -> None:
    csv = tmp_path / "few.csv"
    csv.write_text(
        "review,sentiment\n" + "".join(f"{'great' if i % 2 else 'awful'} film {i},{i % 2}\n" for i in range(15))
    )
    args = ["finetune", str(tiny_bert_run), *_task(csv), "--set", f"task.validation_fraction={fraction}"]
    assert main([*args, "--output-dir", str(tmp_path / "out")]) == 0  # the default batch of 32 holds them all
    out = capsys.readouterr().out
    result = _result(out)
    assert (result["epochs"], result["steps"]) == (3.0, 3)  # one (smaller) batch an epoch
    if fraction:
        assert result["n_validation"] == 2 and len(_val_lines(tmp_path / "out" / "file-pretrained")) == 3
    else:
        assert result["n_validation"] == 0 and result["best_val_accuracy"] is None and result["best_epoch"] == 3.0
        assert "kept the last: no validation slice (task.validation_fraction=0)" in out


def test_a_validation_fraction_out_of_range_names_the_key(tiny_bert_run: Path, reviews_csv: Path, capsys) -> None:
    assert main(["finetune", str(tiny_bert_run), *_task(reviews_csv), "--set", "task.validation_fraction=1"]) == 2
    assert "mmssl: error: task.validation_fraction must be at least 0 and below 1" in capsys.readouterr().err
