"""Downstream tasks: the settings of ``mmssl finetune`` / ``mmssl evaluate``, and the check that an export's
domain takes the task.

Fine-tuning (:mod:`mmssl.finetune`) and the frozen-feature probes (:mod:`mmssl.probes`) both read a
:class:`FinetuneConfig` and both start with :func:`export_domain`; a task itself is registered by its
domain in :data:`mmssl.registry.TASKS` as a :class:`mmssl.registry.TaskSpec`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

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


@dataclass(frozen=True)
class ProbeConfig:
    """Frozen-feature probes of the encoder's pooled output: logistic regression on standardised
    features (``linear``) or the weighted kNN classifier (``knn``)."""

    C: float = 1.0  # inverse L2 strength
    max_iter: int = 2000
    batch_size: int = 64
    k: int = 200  # --protocol knn: neighbours and vote temperature (Wu et al. 2018)
    temperature: float = 0.07
    # auto: the backbone's summary (ViT [CLS]) if any; mean: average of units; mean_std: [mean, std] of units
    pooling: Literal["auto", "mean", "mean_std"] = "auto"


def _finetune_train_defaults() -> TrainConfig:
    # lr 3e-4 suits the recipes' small encoders: on Rotten Tomatoes it gave +4 points over 1e-4 for both
    # the pretrained and the random-init BERT (docs/recipes.md); BERT-base's papers use 2e-5 to 5e-5
    return TrainConfig(
        max_steps=400,
        batch_size=32,
        lr=3e-4,
        warmup_steps=40,
        weight_decay=0.01,
        log_every=20,
        checkpoint_every=400,
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
