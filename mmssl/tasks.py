"""Downstream tasks: the settings of ``mmssl finetune`` / ``mmssl evaluate``, and the check that an export's
domain takes the task, and label budgets: the stratified, seeded subset of a task's training split that
``task.labels_per_class`` / ``task.label_fraction`` keep (:func:`label_subset`).

Fine-tuning (:mod:`mmssl.finetune`) and the frozen-feature probes (:mod:`mmssl.probes`) both read a
:class:`FinetuneConfig` and both start with :func:`export_domain`; a task itself is registered by its
domain in :data:`mmssl.registry.TASKS` as a :class:`mmssl.registry.TaskSpec`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from mmssl.config import short_repr
from mmssl.export import export_meta
from mmssl.recipe import TrainConfig
from mmssl.registry import DOMAINS


@dataclass(frozen=True)
class TaskConfig:
    """Which labelled data to use. ``name`` is a registered task, or ``file`` / ``hub`` with ``path``."""

    name: str = "rotten-tomatoes"
    path: str | None = None  # task=file: a .csv/.json(l)/.parquet file; task=hub: a dataset name or folder
    input_column: str | None = None  # None: the domain's own column name ("text", "image", ...)
    label_column: str = "label"
    test_split: str | None = None  # use this split as the test set (task=hub); otherwise hold out test_fraction
    test_fraction: float = 0.2
    split_seed: int = 0
    max_length: int = 128  # truncate inputs (tokens, frames, ...)
    max_train_samples: int | None = None
    missing_labels: Literal["skip", "error"] = "skip"  # rows without a label: skipped and counted, or an error
    # mmssl finetune: this fraction of every class's training rows (drawn with split_seed) is held out to choose
    # the epoch kept; never the test split. 0: no validation slice, the last epoch is kept
    validation_fraction: float = 0.1
    # a label budget (set one at most): a stratified subset of the training split, drawn with train.seed
    # (label_subset); the test split is never cut
    labels_per_class: int | None = None  # N training rows of every class
    label_fraction: float | None = None  # this fraction, in (0, 1], of every class's training rows

    def __post_init__(self) -> None:
        if self.labels_per_class is not None and self.label_fraction is not None:
            raise ValueError(
                "task.labels_per_class and task.label_fraction are both set; set one of them "
                "(a number of training rows per class, or a fraction of every class's training rows)"
            )
        if self.labels_per_class is not None and self.labels_per_class < 1:
            raise ValueError(f"task.labels_per_class must be 1 or more, got {self.labels_per_class}")
        if self.label_fraction is not None and not 0 < self.label_fraction <= 1:
            raise ValueError(
                f"task.label_fraction must be in (0, 1] (the fraction of every class's training rows "
                f"to keep), got {self.label_fraction}"
            )
        if not 0 <= self.validation_fraction < 1:
            raise ValueError(
                f"task.validation_fraction must be at least 0 and below 1 (0: no validation slice, the last "
                f"epoch is kept), got {self.validation_fraction}"
            )


@dataclass(frozen=True)
class ProbeConfig:
    """Frozen-feature probes of the encoder's pooled output: logistic regression on standardised
    features (``linear``) or the weighted kNN classifier (``knn``)."""

    C: float = 1.0  # inverse L2 strength
    max_iter: int = 2000
    batch_size: int = 64
    k: int = 200  # --protocol knn: neighbours and vote temperature (Wu et al. 2018)
    temperature: float = 0.07
    # auto: the backbone's summary (ViT [CLS]) if any; mean: average of units; mean_std: [mean, std] of units;
    # grid: an image encoder's unit grid average-pooled to grid_cells x grid_cells regions (the convnet protocol)
    pooling: Literal["auto", "mean", "mean_std", "grid"] = "auto"
    grid_cells: int = 2

    def __post_init__(self) -> None:
        if self.grid_cells < 1:
            raise ValueError(
                f"probe.grid_cells must be 1 or more (regions per side of the pooled grid), got {self.grid_cells}"
            )


def _finetune_train_defaults() -> TrainConfig:
    # Sized by the data, as transformers' run_glue.py is: 3 epochs (its num_train_epochs default), the best
    # by validation accuracy kept, warmup over the first 10% of the steps. train.max_steps, when set, wins.
    # lr 3e-4 suits the recipes' small encoders: on Rotten Tomatoes it gave +4 points over 1e-4 for both
    # the pretrained and the random-init BERT (docs/recipes.md); BERT-base's papers use 2e-5 to 5e-5
    return TrainConfig(
        max_steps=None,
        epochs=3,
        batch_size=32,
        lr=3e-4,
        warmup_steps=0.1,
        weight_decay=0.01,
        log_every=20,
        checkpoint_every=1000,  # and at the end
        keep_checkpoints=1,
    )


@dataclass(frozen=True)
class FinetuneConfig:
    """``mmssl finetune`` / ``mmssl evaluate`` settings (override with ``--set task.path=...``)."""

    task: TaskConfig = field(default_factory=TaskConfig)
    # random: same architecture, untrained; raw: the domain's raw features, no encoder (both baselines)
    init: Literal["pretrained", "random", "raw"] = "pretrained"
    train: TrainConfig = field(default_factory=_finetune_train_defaults)
    probe: ProbeConfig = field(default_factory=ProbeConfig)


RAW_PROTOCOLS = ("linear", "knn")  # the probes that read a domain's raw features (init=raw) instead of an encoder's


def check_init(init: str, protocol: str) -> None:
    """Refuse ``init=raw`` for a protocol that needs an encoder (``finetune``, ``retrieval``), before anything loads.

    ``init=raw`` fits a probe on the task's raw features (:meth:`mmssl.domain.DownstreamDomain.raw_features`:
    pixels, MFCC statistics, propagated node features, TF-IDF) instead of an encoder's.
    """
    if init == "raw" and protocol not in RAW_PROTOCOLS:
        what = "fine-tuning" if protocol == "finetune" else f"--protocol {protocol}"
        raise ValueError(
            f"init=raw probes the task's raw features (pixels, MFCC statistics, ...) with --protocol "
            f"linear or knn; {what} needs an encoder: use init=pretrained or init=random"
        )


def _domain_of(export_dir: Path, domain: str | None) -> Any:
    name = domain or export_meta(export_dir).get("domain")
    if name is None:
        raise ValueError(f"{export_dir} has no mmssl.json naming its domain; pass --domain (e.g. --domain text)")
    return DOMAINS.get(name)


def check_task(dom: Any, task: TaskConfig, export_dir: Path) -> None:
    """Refuse, before anything is loaded, a task of another domain than the export's (or an unknown one).

    A domain takes the tasks registered for it and its own names for the user's data (``file``, ``hub``,
    ``folder``): :meth:`mmssl.domain.DownstreamDomain.task_names`.
    """
    names = dom.task_names()
    if task.name in names:
        return
    takes = f"the {dom.name} domain's tasks: {', '.join(names)}"
    owners = [d for d in DOMAINS.names() if task.name in DOMAINS.get(d).task_names()]
    if owners:
        raise ValueError(
            f"{export_dir} is an export of the {dom.name} domain and task {task.name!r} belongs to the "
            f"{' / '.join(owners)} domain; {takes}"
        )
    raise KeyError(f"unknown task {short_repr(task.name)}; {takes}")


def export_domain(export_dir: Path, domain: str | None, task: TaskConfig) -> Any:
    """The export's domain (``mmssl.json``, or ``--domain``), after checking that it takes ``task``."""
    dom = _domain_of(export_dir, domain)
    check_task(dom, task, export_dir)
    return dom


# ---------------------------------------------------------------------------- label budgets
def has_label_budget(task: TaskConfig) -> bool:
    """Whether ``task`` cuts its training split to a label budget (``labels_per_class`` or ``label_fraction``)."""
    return task.labels_per_class is not None or task.label_fraction is not None


def budget_name(task: TaskConfig) -> str:
    """The budget in words: ``10 labels per class``, ``1% of the labels``, or ``all labels``."""
    if task.labels_per_class is not None:
        return f"{task.labels_per_class} label{'s' if task.labels_per_class > 1 else ''} per class"
    if task.label_fraction is not None:
        return f"{task.label_fraction * 100:g}% of the labels"
    return "all labels"


def budget_tag(task: TaskConfig) -> str:
    """The budget in a folder name: ``-10-per-class``, ``-fraction-0.01``, or ``""`` without one."""
    if task.labels_per_class is not None:
        return f"-{task.labels_per_class}-per-class"
    return f"-fraction-{task.label_fraction:g}" if task.label_fraction is not None else ""


def check_label_budget(labels: Any, task: TaskConfig, label_names: Sequence[str] = ()) -> None:
    """Refuse ``task.labels_per_class`` above the training rows of the smallest class of ``labels [N]``."""
    if task.labels_per_class is None:
        return
    classes, counts = np.unique(np.asarray(labels), return_counts=True)
    smallest = int(counts.argmin())
    if counts[smallest] < task.labels_per_class:
        c = int(classes[smallest])
        name = label_names[c] if c < len(label_names) else str(c)
        raise ValueError(
            f"task.labels_per_class={task.labels_per_class}: class {name!r} has only {counts[smallest]} training "
            f"row{'s' if counts[smallest] > 1 else ''}; choose at most {counts[smallest]}, or a fraction with "
            "task.label_fraction"
        )


def label_subset(labels: Any, task: TaskConfig, seed: int, label_names: Sequence[str] = ()) -> np.ndarray:
    """The training rows a label budget keeps: sorted indices ``[n]`` into the rows whose labels are ``labels [N]``.

    Stratified: of every class, ``task.labels_per_class`` rows, or ``task.label_fraction`` of its rows rounded
    to the nearest row (at least one), so every class of the training split stays. Each class's rows are taken
    from the front of one permutation drawn with ``seed`` (numpy's ``default_rng``), so the subset depends only
    on the labels, the budget and the seed: every init of one command gets the same rows, and at one seed a
    smaller budget's rows are among a larger one's. Without a budget, every row.
    """
    labels = np.asarray(labels)
    if not has_label_budget(task):
        return np.arange(len(labels))
    check_label_budget(labels, task, label_names)
    rng = np.random.default_rng(seed)
    picked = []
    for c in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == c))
        take = task.labels_per_class or max(1, round(task.label_fraction * len(rows)))
        picked.append(rows[:take])
    return np.sort(np.concatenate(picked))


def subset_rows(rows: Any, indices: np.ndarray) -> Any:
    """``rows`` at ``indices``: a ``datasets.Dataset``'s own ``select``, else a ``torch.utils.data.Subset``
    (every domain's task rows are map-style)."""
    if hasattr(rows, "select"):
        return rows.select(indices.tolist())
    from torch.utils.data import Subset

    return Subset(rows, indices.tolist())


def budget_record(task: TaskConfig, seed: int, indices: np.ndarray, split_rows: int) -> dict[str, Any]:
    """What a result records of its training rows: the seed and, with a budget, the budget, the rows of the
    whole training split and ``train_subset``, a fingerprint of the rows kept (equal fingerprints: the same rows)."""
    if not has_label_budget(task):
        return {"seed": seed}
    budget = (
        {"labels_per_class": task.labels_per_class}
        if task.labels_per_class is not None
        else {"label_fraction": task.label_fraction}
    )
    digest = hashlib.sha1(np.asarray(indices, dtype=np.int64).tobytes()).hexdigest()[:12]
    return {**budget, "seed": seed, "train_split_rows": split_rows, "train_subset": digest}


def budgeted_task_data(dom: Any, task: TaskConfig, seed: int) -> tuple[Any, dict[str, Any]]:
    """``dom.task_data(task)`` with the training split cut to ``task``'s label budget drawn with ``seed``
    (:func:`label_subset`, on :meth:`mmssl.domain.DownstreamDomain.task_labels`), and :func:`budget_record`.

    Fine-tuning calls it before training; the probes cut their extracted feature rows instead (same subset).
    """
    data = dom.task_data(task)
    if not has_label_budget(task):
        return data, budget_record(task, seed, np.arange(0), len(data.train))
    labels = dom.task_labels(data.train)
    picked = label_subset(labels, task, seed, data.label_names)
    return replace(data, train=subset_rows(data.train, picked)), budget_record(task, seed, picked, len(labels))
