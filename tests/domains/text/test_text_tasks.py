"""Text classification tasks from a user's file: unusable rows are skipped and counted, unusable files and
label sets are one-sentence errors (`mmssl: error: ...`, exit code 2)."""

from __future__ import annotations

import codecs
import json
from pathlib import Path

import datasets
import pytest

from domains.text.tasks import text_task_data
from mmssl.cli import main
from mmssl.registry import TASKS, TaskSpec
from mmssl.tasks import TaskConfig


def _csv(path: Path, rows: list[tuple[str, str]]) -> Path:
    path.write_text("text,label\n" + "".join(f"{text},{label}\n" for text, label in rows))
    return path


def _polar(i: int) -> tuple[str, str]:
    return (f"a lovely charming film {i}", "pos") if i % 2 else (f"a dull tedious film {i}", "neg")


def _result(out: str) -> dict:
    return json.loads([line for line in out.splitlines() if line.startswith("{")][-1])


def test_blank_labels_are_skipped_and_counted_never_a_class(tiny_bert_run: Path, tmp_path: Path, capsys) -> None:
    rows = [(text, "" if i % 5 == 4 else label) for i, (text, label) in enumerate(map(_polar, range(200)))]
    csv = _csv(tmp_path / "reviews.csv", rows)
    out = tmp_path / "ft"
    assert (
        main(
            [
                "finetune",
                str(tiny_bert_run),
                "--task",
                "file",
                "--set",
                f"task.path={csv}",
                "--set",
                "train.max_steps=2",
                "--set",
                "train.batch_size=16",
                "--output-dir",
                str(out),
            ]
        )
        == 0
    )
    captured = capsys.readouterr()
    record = _result(captured.out)
    assert record["skipped_rows"] == {"missing_label": 40}
    assert record["n_train"] + record["n_test"] + 40 == 200
    assert f"{csv}: skipped 40 of 200 rows: 40 with no label (first: row 5)" in captured.err
    config = json.loads((out / "file-pretrained" / "export" / "config.json").read_text())
    assert config["id2label"] == {"0": "neg", "1": "pos"}  # two classes: the blank is not a third
    assert (
        main(
            [
                "finetune",
                str(tiny_bert_run),
                "--task",
                "file",
                "--set",
                f"task.path={csv}",
                "--set",
                "task.missing_labels=error",
                "--output-dir",
                str(tmp_path / "strict"),
            ]
        )
        == 2
    )
    assert (
        f"mmssl: error: task.label_column: row 5 of {csv} has no label in column 'label'; set "
        "task.missing_labels=skip to skip such rows"
    ) in capsys.readouterr().err


def test_blank_texts_are_skipped_never_the_string_none(tiny_bert_run: Path, tmp_path: Path, capsys) -> None:
    rows = [("   " if i % 4 == 0 else text, label) for i, (text, label) in enumerate(map(_polar, range(120)))]
    rows[1] = ("", rows[1][1])  # an empty field, which the CSV reader reads as a missing value
    csv = _csv(tmp_path / "reviews.csv", rows)
    data = text_task_data(TaskConfig(name="file", path=str(csv)))
    texts = list(data.train["text"]) + list(data.test["text"])
    assert data.skipped == {"empty_text": 31} and len(texts) == 120 - 31
    assert all(t.strip() and t != "None" for t in texts)
    assert (
        main(
            [
                "evaluate",
                str(tiny_bert_run),
                "--protocol",
                "knn",
                "--set",
                "probe.k=5",
                "--task",
                "file",
                "--set",
                f"task.path={csv}",
            ]
        )
        == 0
    )
    record = _result(capsys.readouterr().out)
    assert record["skipped_rows"] == {"empty_text": 31} and record["n_train"] + record["n_test"] == 89


@pytest.mark.parametrize(
    "rows, message",
    [
        (
            [(f"text {i}", "pos") for i in range(20)],
            "the task has only the label 'pos' in column 'label'; a classifier needs at least two labels",
        ),
        (
            [(f"text {i}", "pos" if i < 19 else "") for i in range(20)],
            "the task has only the label 'pos' in column 'label'; a classifier needs at least two labels",
        ),
        (
            [*map(_polar, range(20)), ("a single odd one", "mixed")],
            "label 'mixed' has a single row; a stratified hold-out (task.test_fraction) needs at least two rows of every label",
        ),
    ],
)
def test_label_sets_a_classifier_cannot_learn_are_errors(
    tiny_bert_run: Path, tmp_path: Path, capsys, rows: list, message: str
) -> None:
    csv = _csv(tmp_path / "task.csv", rows)
    assert (
        main(
            [
                "finetune",
                str(tiny_bert_run),
                "--task",
                "file",
                "--set",
                f"task.path={csv}",
                "--output-dir",
                str(tmp_path / "ft"),
            ]
        )
        == 2
    )
    assert f"mmssl: error: task.label_column: {message}" in capsys.readouterr().err
    assert not (tmp_path / "ft").exists()


def test_a_test_label_absent_from_training_is_named(tmp_path: Path) -> None:
    folder = tmp_path / "set"
    folder.mkdir()
    _csv(folder / "train.csv", [(f"r{i}", "hi" if i % 2 else "lo") for i in range(10)])
    _csv(folder / "test.csv", [("x", "hi"), ("y", "mid")])
    task = TaskConfig(name="hub", path=str(folder), test_split="test")
    with pytest.raises(
        ValueError, match="task.label_column: label 'mid' of a test row is absent from the training labels"
    ):
        text_task_data(task)
    _csv(folder / "train.csv", [(f"r{i}", "hi") for i in range(10)])
    _csv(folder / "test.csv", [("x", "hi"), ("y", "lo")])
    with pytest.raises(ValueError, match="the training split has only the label 'hi'"):
        text_task_data(task)


def test_classlabel_minus_one_is_a_missing_label_and_float_labels_keep_their_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])})
    ds = datasets.Dataset.from_dict({"text": [f"t{i}" for i in range(24)], "label": [-1, 0, 1] * 8}, features=features)
    monkeypatch.setitem(TASKS._items, "toy-unlabelled", TaskSpec(lambda: ds, domain="text"))  # GLUE test rows: -1
    data = text_task_data(TaskConfig(name="toy-unlabelled", test_fraction=0.25))
    assert data.skipped == {"missing_label": 8} and data.label_names == ["neg", "pos"]
    assert len(data.train) + len(data.test) == 16
    # a numeric label column with blanks is read as floats: its names stay "0" and "1"
    csv = _csv(tmp_path / "numbers.csv", [(f"t{i}", "" if i % 7 == 6 else str(i % 2)) for i in range(40)])
    numeric = text_task_data(TaskConfig(name="file", path=str(csv)))
    assert numeric.label_names == ["0", "1"] and numeric.skipped == {"missing_label": 5}


def _bad_files(root: Path) -> dict[str, tuple[Path, str]]:
    """Files `datasets` fails on with a traceback, and the sentence each one gets instead."""
    cases = {
        "binary": (
            "binary.csv",
            b"text,label\n\x7fELF\x00\x01\x02,1\n",
            "is a binary file, not text (a NUL byte at offset 15)",
        ),
        "latin1": (
            "latin1.csv",
            "text,label\ncafé crème,1\nthé,0\n".encode("latin1"),
            "is not UTF-8 text (byte 0xE9 at offset 14); convert it to UTF-8 first, e.g. iconv -f latin1 -t utf-8",
        ),
        "utf16": (
            "utf16.csv",
            codecs.BOM_UTF16_LE + "text,label\nhi,1\n".encode("utf-16-le"),
            "is UTF-16 text; convert it to UTF-8 first, e.g. iconv -f utf-16 -t utf-8",
        ),
        "jsonl": (
            "rows.jsonl",
            b'{"text": "a", "label": 1}\n{"text": "b", "label": 0,}\n',
            "line 2 is not valid JSON (Expecting property name enclosed in double quotes at column 26)",
        ),
        "empty": ("empty.csv", b"", "is empty"),
        "header": ("header.csv", b"text,label\n", "has a header but no rows"),
        "ragged": ("ragged.csv", b"text,label\na,1\nb,0,extra\n", "Expected 2 fields in line 3, saw 3"),
    }
    out = {}
    for name, (file, content, message) in cases.items():
        (root / file).write_bytes(content)
        out[name] = (root / file, message)
    return out


@pytest.mark.parametrize("case", ["binary", "latin1", "utf16", "jsonl", "empty", "header", "ragged"])
def test_unreadable_task_files_are_one_sentence(tiny_bert_run: Path, tmp_path: Path, capsys, case: str) -> None:
    path, message = _bad_files(tmp_path)[case]
    assert main(["evaluate", str(tiny_bert_run), "--task", "file", "--set", f"task.path={path}"]) == 2
    err = capsys.readouterr().err
    line = next(line for line in err.splitlines() if "mmssl: error:" in line)  # (datasets' bars may precede it)
    assert "mmssl: error: task.path: " in line and str(path) in line and message in line
    assert "Traceback" not in err and "Failed to" not in err  # nor the builder's own report of the error
