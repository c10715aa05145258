"""Label budgets (mmssl/tasks.py): the training subset ``task.labels_per_class`` / ``task.label_fraction`` keep is
stratified, seeded, reproducible, nested across budgets, drawn from the training split only (the test split is
untouched and disjoint), and refused with one sentence naming the key when it cannot be drawn. Every domain reads
its rows' labels without decoding them (``task_labels``)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from mmssl.cli import main
from mmssl.config import ConfigError, from_dict
from mmssl.finetune import finetune_dir
from mmssl.registry import DOMAINS
from mmssl.tasks import FinetuneConfig, TaskConfig, budgeted_task_data, label_subset

LABELS = np.array([0] * 30 + [1] * 12 + [2] * 5)  # three classes of unequal size, in blocks
np.random.default_rng(0).shuffle(LABELS)


def test_labels_per_class_keeps_n_rows_of_every_class() -> None:
    picked = label_subset(LABELS, TaskConfig(labels_per_class=4), seed=0)
    assert Counter(LABELS[picked].tolist()) == {0: 4, 1: 4, 2: 4}
    assert list(picked) == sorted(set(picked.tolist()))  # sorted row indices, no repeats


def test_label_fraction_keeps_that_share_of_every_class_and_one_at_least() -> None:
    picked = label_subset(LABELS, TaskConfig(label_fraction=0.1), seed=0)
    assert Counter(LABELS[picked].tolist()) == {0: 3, 1: 1, 2: 1}  # 3.0, 1.2 and 0.5 rows: rounded, at least one
    every = label_subset(LABELS, TaskConfig(label_fraction=1.0), seed=3)
    assert every.tolist() == list(range(len(LABELS)))


def test_the_subset_is_seeded_reproducible_and_nested_across_budgets() -> None:
    task = TaskConfig(labels_per_class=3)
    first, again, other = (label_subset(LABELS, task, seed) for seed in (0, 0, 1))
    assert first.tolist() == again.tolist() and first.tolist() != other.tolist()
    larger = label_subset(LABELS, TaskConfig(labels_per_class=5), seed=0)
    assert set(first.tolist()) < set(larger.tolist())  # at one seed, 3 per class are among the 5 per class
    assert label_subset(LABELS, TaskConfig(), seed=0).tolist() == list(range(len(LABELS)))  # no budget: every row


def test_more_labels_per_class_than_the_smallest_class_has_is_refused_naming_it() -> None:
    with pytest.raises(ValueError) as e:
        label_subset(LABELS, TaskConfig(labels_per_class=6), 0, label_names=["cat", "dog", "bird"])
    assert str(e.value) == (
        "task.labels_per_class=6: class 'bird' has only 5 training rows; choose at most 5, "
        "or a fraction with task.label_fraction"
    )


@pytest.mark.parametrize(
    "settings, message",
    [
        (
            ["task.labels_per_class=2", "task.label_fraction=0.5"],
            "task.labels_per_class and task.label_fraction are both set; set one of them",
        ),
        (["task.labels_per_class=0"], "task.labels_per_class must be 1 or more, got 0"),
        (["task.label_fraction=0"], "task.label_fraction must be in (0, 1]"),
        (["task.label_fraction=1.5"], "task.label_fraction must be in (0, 1]"),
        (["task.label_fraction=-0.1"], "task.label_fraction must be in (0, 1]"),
    ],
)
@pytest.mark.parametrize("command", ["evaluate", "finetune"])
def test_budget_settings_that_cannot_work_are_one_sentence_errors(
    command: str, settings: list[str], message: str, capsys
) -> None:
    sets = [a for s in settings for a in ("--set", s)]
    assert main([command, "/nonexistent", "--task", "rotten-tomatoes", *sets]) == 2  # refused before the path is read
    err = capsys.readouterr().err
    assert err.startswith(f"mmssl: error: {message}") and "Traceback" not in err and err.count("\n") == 1


def test_budget_errors_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="task.label_fraction must be in"):
        from_dict(FinetuneConfig, {"task": {"label_fraction": 2}})


def _reviews(path: Path, n: int = 60) -> Path:
    """``n`` distinct reviews, two classes in turn."""
    rows = [f"a {'lovely' if i % 2 else 'dull'} film number {i},{'pos' if i % 2 else 'neg'}" for i in range(n)]
    path.write_text("text,label\n" + "\n".join(rows) + "\n")
    return path


def test_the_budget_cuts_only_the_training_split_of_a_users_csv(tmp_path: Path) -> None:
    text = DOMAINS.get("text")
    task = TaskConfig(name="file", path=str(_reviews(tmp_path / "r.csv")), labels_per_class=5)
    full = text.task_data(TaskConfig(name="file", path=task.path))
    data, record = budgeted_task_data(text, task, seed=1)
    assert list(data.test["text"]) == list(full.test["text"])  # the test split is untouched
    kept = list(data.train["text"])
    assert len(kept) == 10 and Counter(data.train["label"]) == {0: 5, 1: 5}
    assert set(kept) <= set(full.train["text"]) and not set(kept) & set(full.test["text"])
    assert record["labels_per_class"] == 5 and record["seed"] == 1 and record["train_split_rows"] == 48
    again, same = budgeted_task_data(text, task, seed=1)
    assert list(again.train["text"]) == kept and same["train_subset"] == record["train_subset"]
    assert budgeted_task_data(text, task, seed=2)[1]["train_subset"] != record["train_subset"]


def test_too_many_labels_per_class_through_the_cli_names_the_class(tiny_bert_run: Path, tmp_path: Path, capsys) -> None:
    csv = _reviews(tmp_path / "r.csv")
    args = ["evaluate", str(tiny_bert_run), "--task", "file", "--set", f"task.path={csv}"]
    assert main([*args, "--set", "task.labels_per_class=25"]) == 2  # 48 training rows: 24 of each class
    err = capsys.readouterr().err  # after the datasets library's progress bars, which this process shows
    assert err.splitlines()[-1] == (
        "mmssl: error: task.labels_per_class=25: class 'neg' has only 24 training rows; choose at most 24, "
        "or a fraction with task.label_fraction"
    )
    assert "Traceback" not in err


def _rows_labels(rows) -> list[int]:
    """The labels read row by row, the slow way ``task_labels`` must agree with."""
    return [int(rows[i]["label"]) for i in range(len(rows))]


def test_task_labels_of_text_image_audio_and_graph_rows(tmp_path: Path, tone_task: Path) -> None:
    import datasets
    from PIL import Image

    rng = np.random.default_rng(0)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b", "c"])})

    def split(n: int) -> datasets.Dataset:
        images = [Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)) for _ in range(n)]
        return datasets.Dataset.from_dict({"image": images, "label": rng.integers(0, 3, n).tolist()}, features=features)

    datasets.DatasetDict({"train": split(9), "test": split(4)}).save_to_disk(str(tmp_path / "images"))
    tasks = {
        "text": TaskConfig(name="file", path=str(_reviews(tmp_path / "r.csv"))),
        "image": TaskConfig(name="hub", path=str(tmp_path / "images")),
        "audio": TaskConfig(name="folder", path=str(tone_task)),
        "graph": TaskConfig(name="karate-club"),
    }
    for name, task in tasks.items():
        dom = DOMAINS.get(name)
        data = dom.task_data(task)
        for rows in (data.train, data.test):
            labels = dom.task_labels(rows)
            assert labels.dtype == np.int64 and labels.tolist() == _rows_labels(rows), name


def test_speech_text_rows_have_no_labels_to_budget() -> None:
    with pytest.raises(ValueError, match="task.labels_per_class / task.label_fraction: the speech_text tasks"):
        DOMAINS.get("speech_text").task_labels([])


def test_each_budget_and_seed_fine_tunes_into_its_own_folder() -> None:
    def folder(**task) -> str:
        seed = task.pop("seed", 0)
        cfg = from_dict(FinetuneConfig, {"task": {"name": "sst", **task}, "train": {"seed": seed}})
        return finetune_dir(Path("base"), cfg).name

    assert folder() == "sst-pretrained"  # as before: all labels, seed 0
    assert folder(seed=2) == "sst-pretrained-seed2"
    assert folder(labels_per_class=10) == "sst-pretrained-10-per-class-seed0"
    assert folder(label_fraction=0.01, seed=1) == "sst-pretrained-fraction-0.01-seed1"
