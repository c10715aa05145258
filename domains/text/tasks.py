"""Text classification tasks for ``mmssl finetune/evaluate``: registered sets and the user's own data."""

from __future__ import annotations

import logging
import math
from collections import Counter
from pathlib import Path
from typing import Any

import datasets
from torch import Tensor, nn
from transformers import AutoConfig, AutoModelForSequenceClassification

from domains.text.files import LOADERS, load_local_files
from mmssl.domain import ClassifierModule, TaskData
from mmssl.registry import TASKS, TaskSpec
from mmssl.types import Batch, Extra

log = logging.getLogger(__name__)

SKIP_REASONS = {"missing_label": "no label", "empty_text": "an empty text"}  # keys of TaskData.skipped


def _rotten_tomatoes() -> datasets.Dataset:
    from domains.text.builders import load_rotten_tomatoes

    return load_rotten_tomatoes()


# Pang & Lee (2005) sentence polarity, 12,752 snippets
TASKS.add("rotten-tomatoes", TaskSpec(_rotten_tomatoes, domain="text"))
USER_TASKS = ("file", "hub")  # the user's own data, with task.path


def _load_raw(task: Any) -> datasets.Dataset | datasets.DatasetDict:
    if task.name in ("file", "hub") and not task.path:
        raise ValueError(f"task.path is required with --task {task.name}")
    if task.name == "file":
        path = Path(task.path)
        if not path.exists():
            raise FileNotFoundError(f"task.path: {path} does not exist")
        if LOADERS.get(path.suffix.lower()) in (None, "text"):
            raise ValueError(f"task.path: {path} must be .csv, .json, .jsonl or .parquet")
        return load_local_files([str(path)], "task.path")
    if task.name == "hub":
        return datasets.load_dataset(task.path)
    return TASKS.get(task.name)()


def _label_value(value: Any) -> Any:
    """A label as read; whole floats become ints (a CSV column of 0/1 with blanks is read as floats)."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _is_missing_label(value: Any, class_label: bool) -> bool:
    """None, a blank string, NaN, or (ClassLabel columns) a negative id such as the -1 of unlabelled rows."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return True
    if isinstance(value, float):
        return math.isnan(value)
    return class_label and isinstance(value, int) and value < 0


def _usable_rows(ds: datasets.Dataset, task: Any, where: str) -> tuple[datasets.Dataset, Counter]:
    """Drop (and count) rows with a missing label (``task.missing_labels=skip``, else an error) or a blank text."""
    input_column = task.input_column or "text"
    for key, col in (("task.input_column", input_column), ("task.label_column", task.label_column)):
        if col not in ds.column_names:
            raise KeyError(f"{key}: column {col!r} not found; available: {', '.join(ds.column_names)}")
    class_label = isinstance(ds.features[task.label_column], datasets.ClassLabel)
    keep, skipped, first = [], Counter(), {}
    for i, (text, label) in enumerate(zip(ds[input_column], ds[task.label_column])):
        if _is_missing_label(label, class_label):
            if task.missing_labels == "error":
                raise ValueError(
                    f"task.label_column: row {i + 1} of {where} has no label in column "
                    f"{task.label_column!r}; set task.missing_labels=skip to skip such rows"
                )
            reason = "missing_label"
        elif text is None or (isinstance(text, str) and not text.strip()):
            reason = "empty_text"
        else:
            keep.append(i)
            continue
        skipped[reason] += 1
        first.setdefault(reason, i + 1)
    if skipped:
        log.warning(
            "%s: skipped %d of %d rows: %s",
            where,
            sum(skipped.values()),
            len(ds),
            ", ".join(f"{n} with {SKIP_REASONS[r]} (first: row {first[r]})" for r, n in skipped.items()),
        )
    return (ds if len(keep) == len(ds) else ds.select(keep)), skipped


def _normalise(ds: datasets.Dataset, task: Any, labels: list[Any] | None) -> tuple[datasets.Dataset, list[Any]]:
    """Rename the task's columns to ``text``/``label`` and map labels to ``0..K-1`` (rows already cleaned)."""
    input_column = task.input_column or "text"
    feature = ds.features[task.label_column]
    names = feature.names if isinstance(feature, datasets.ClassLabel) else None  # ClassLabel rows hold ints
    if labels is None:
        labels = list(names) if names else sorted({_label_value(v) for v in ds[task.label_column]}, key=str)
    index = {v: i for i, v in enumerate(labels)}

    def convert(row: dict[str, Any]) -> dict[str, Any]:
        value = names[row[task.label_column]] if names else _label_value(row[task.label_column])
        if value not in index:
            raise ValueError(
                f"task.label_column: label {value!r} of a test row is absent from the training labels "
                f"({', '.join(map(str, labels))}); a classifier cannot learn a class it never sees"
            )
        text = row[input_column]
        return {"text": text if isinstance(text, str) else str(text), "label": index[value]}

    features = datasets.Features(
        {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=[str(x) for x in labels])}
    )
    return ds.map(convert, remove_columns=ds.column_names, features=features), labels


def _check_hold_out(label_ids: list[int], labels: list[Any], task: Any) -> None:
    """A stratified hold-out needs two classes, two rows of each, and room for every class on both sides."""
    counts = Counter(label_ids)
    _check_two_classes(counts, labels, task, "the task")
    rare = [labels[i] for i, n in counts.items() if n < 2]
    if rare:
        raise ValueError(
            f"task.label_column: label {rare[0]!r} has a single row; a stratified hold-out "
            f"(task.test_fraction) needs at least two rows of every label: add rows or drop that one"
        )
    n_test = math.ceil(task.test_fraction * len(label_ids))
    if min(n_test, len(label_ids) - n_test) < len(counts):
        raise ValueError(
            f"task.test_fraction={task.test_fraction} splits the {len(label_ids)} rows into {n_test} "
            f"test and {len(label_ids) - n_test} training rows, fewer than the {len(counts)} labels: "
            "add rows or change task.test_fraction"
        )


def _check_two_classes(counts: Counter, labels: list[Any], task: Any, where: str) -> None:
    if len(counts) < 2:
        found = f"only the label {labels[next(iter(counts))]!r}" if counts else "no usable row"
        raise ValueError(
            f"task.label_column: {where} has {found} in column {task.label_column!r}; "
            "a classifier needs at least two labels"
        )


def _split_data(
    train: datasets.Dataset, test: datasets.Dataset, labels: list[Any], task: Any, skipped: Counter
) -> TaskData:
    """Cap the training rows (``task.max_train_samples``) and check the labels both splits hold."""
    if task.max_train_samples:
        train = train.select(range(min(task.max_train_samples, len(train))))
    seen = Counter(train["label"])
    _check_two_classes(seen, labels, task, "the training split")
    unseen = sorted(set(test["label"]) - set(seen))
    if unseen:
        raise ValueError(
            f"task.label_column: label {labels[unseen[0]]!r} of a test row is absent from the training "
            "split; a classifier cannot learn a class it never sees"
        )
    return TaskData(train, test, [str(x) for x in labels], dict(skipped))


def text_task_data(task: Any) -> TaskData:
    """Train/test rows ``{"text", "label"}``: a named test split, or a seeded stratified hold-out.

    Rows with a missing label or a blank text are skipped, counted in ``skipped`` and logged.
    """
    raw = _load_raw(task)
    where = str(task.path) if task.path else task.name
    if isinstance(raw, datasets.DatasetDict):
        train_split = "train" if "train" in raw else next(iter(raw))
        if task.test_split:
            if task.test_split not in raw:
                raise KeyError(f"task.test_split: {task.test_split!r} not in {list(raw)}")
            train, skipped = _usable_rows(raw[train_split], task, f"{where} ({train_split} split)")
            test, test_skipped = _usable_rows(raw[task.test_split], task, f"{where} ({task.test_split} split)")
            train, labels = _normalise(train, task, None)
            _check_two_classes(Counter(train["label"]), labels, task, "the training split")
            test, _ = _normalise(test, task, labels)
            return _split_data(train, test, labels, task, skipped + test_skipped)
        raw = raw[train_split]
    ds, skipped = _usable_rows(raw, task, where)
    ds, labels = _normalise(ds, task, None)
    _check_hold_out(ds["label"], labels, task)
    split = ds.train_test_split(test_size=task.test_fraction, seed=task.split_seed, stratify_by_column="label")
    return _split_data(split["train"], split["test"], labels, task, skipped)


class SequenceClassifier(ClassifierModule):
    """``AutoModelForSequenceClassification`` behind the :class:`mmssl.domain.Classifier` protocol."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def logits(self, batch: Batch) -> Tensor:
        kwargs = {"input_ids": batch.units, "attention_mask": (~batch.padding_mask).long()}
        if "token_type_ids" in batch.extras and self.model.config.model_type == "bert":
            kwargs["token_type_ids"] = batch.extras[Extra.TOKEN_TYPE_IDS]
        return self.model(**kwargs).logits

    def export(self, out_dir: Path) -> None:
        self.model.save_pretrained(str(out_dir))


def sequence_classifier(export_dir: Path, label_names: list[str], init: str) -> SequenceClassifier:
    """The exported backbone with a new classification head (``init="random"``: same config, random weights).

    The label names go into the config (``id2label`` / ``label2id``), so the fine-tuned export's
    ``text-classification`` pipeline answers with them.
    """
    config = AutoConfig.from_pretrained(
        str(export_dir), id2label=dict(enumerate(label_names)), label2id={name: i for i, name in enumerate(label_names)}
    )
    if init == "random":
        model = AutoModelForSequenceClassification.from_config(config)
    else:
        model = AutoModelForSequenceClassification.from_pretrained(str(export_dir), config=config)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = model.config.eos_token_id
    return SequenceClassifier(model)
