"""Text classification tasks for ``mmssl finetune/evaluate``: registered sets and the user's own data."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import datasets
from torch import Tensor, nn
from transformers import AutoConfig, AutoModelForSequenceClassification

from mmssl.domain import ClassifierModule, TaskData
from mmssl.registry import TASKS
from mmssl.types import Batch

from domains.text.corpus import LOADERS


def _rotten_tomatoes() -> datasets.Dataset:
    from domains.text.builders import load_rotten_tomatoes

    return load_rotten_tomatoes()


TASKS.add("rotten-tomatoes", _rotten_tomatoes)  # Pang & Lee (2005) sentence polarity, 12,752 snippets


def _load_raw(task: Any) -> datasets.Dataset | datasets.DatasetDict:
    if task.name in ("file", "hub") and not task.path:
        raise ValueError(f"task.path is required with --task {task.name}")
    if task.name == "file":
        path = Path(task.path)
        if not path.is_file():
            raise FileNotFoundError(f"task.path: {path} does not exist")
        builder = LOADERS.get(path.suffix.lower())
        if builder in (None, "text"):
            raise ValueError(f"task.path: {path} must be .csv, .json, .jsonl or .parquet")
        return datasets.load_dataset(builder, data_files=str(path), split="train")
    if task.name == "hub":
        return datasets.load_dataset(task.path)
    loader: Callable[[], datasets.Dataset] = TASKS.get(task.name)
    return loader()


def _normalise(ds: datasets.Dataset, task: Any, labels: list[Any] | None) -> tuple[datasets.Dataset, list[Any]]:
    """Rename the task's columns to ``text``/``label`` and map labels to ``0..K-1``."""
    input_column = task.input_column or "text"
    for key, col in (("task.input_column", input_column), ("task.label_column", task.label_column)):
        if col not in ds.column_names:
            raise KeyError(f"{key}: column {col!r} not found; available: {', '.join(ds.column_names)}")
    feature = ds.features[task.label_column]
    names = feature.names if isinstance(feature, datasets.ClassLabel) else None  # ClassLabel rows hold ints
    if labels is None:
        labels = list(names) if names else sorted(set(ds[task.label_column]), key=str)
    index = {v: i for i, v in enumerate(labels)}

    def convert(row: dict[str, Any]) -> dict[str, Any]:
        value = names[row[task.label_column]] if names else row[task.label_column]
        if value not in index:
            raise ValueError(f"task.label_column: label {value!r} of a test row is absent from the training labels")
        return {"text": str(row[input_column]), "label": index[value]}

    return ds.map(convert, remove_columns=ds.column_names), labels


def text_task_data(task: Any) -> TaskData:
    """Train/test rows ``{"text", "label"}``: a named test split, or a seeded stratified hold-out."""
    raw = _load_raw(task)
    if isinstance(raw, datasets.DatasetDict):
        train_split = "train" if "train" in raw else next(iter(raw))
        if task.test_split:
            if task.test_split not in raw:
                raise KeyError(f"task.test_split: {task.test_split!r} not in {list(raw)}")
            train, labels = _normalise(raw[train_split], task, None)
            test, _ = _normalise(raw[task.test_split], task, labels)
            return TaskData(train, test, [str(x) for x in labels])
        raw = raw[train_split]
    ds, labels = _normalise(raw, task, None)
    ds = ds.cast_column("label", datasets.ClassLabel(num_classes=len(labels)))
    split = ds.train_test_split(test_size=task.test_fraction, seed=task.split_seed, stratify_by_column="label")
    train = split["train"]
    if task.max_train_samples:
        train = train.select(range(min(task.max_train_samples, len(train))))
    return TaskData(train, split["test"], [str(x) for x in labels])


class SequenceClassifier(ClassifierModule):
    """``AutoModelForSequenceClassification`` behind the :class:`mmssl.domain.Classifier` protocol."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def logits(self, batch: Batch) -> Tensor:
        kwargs = {"input_ids": batch.units, "attention_mask": (~batch.padding_mask).long()}
        if "token_type_ids" in batch.extras and self.model.config.model_type == "bert":
            kwargs["token_type_ids"] = batch.extras["token_type_ids"]
        return self.model(**kwargs).logits


    def export(self, out_dir: Path) -> None:
        self.model.save_pretrained(str(out_dir))


def sequence_classifier(export_dir: Path, num_labels: int, init: str) -> SequenceClassifier:
    """The exported backbone with a new classification head (``init="random"``: same config, random weights)."""
    config = AutoConfig.from_pretrained(str(export_dir), num_labels=num_labels)
    if init == "random":
        model = AutoModelForSequenceClassification.from_config(config)
    else:
        model = AutoModelForSequenceClassification.from_pretrained(str(export_dir), config=config)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = model.config.eos_token_id
    return SequenceClassifier(model)

