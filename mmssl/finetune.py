"""Downstream evaluation shared by every domain: full fine-tuning and frozen-feature linear probes."""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from accelerate import PartialState
from accelerate.utils import set_seed
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch.utils.data import DataLoader

from mmssl.config import short_repr
from mmssl.evaluation import extract_features, knn_accuracy
from mmssl.domain import TaskData
from mmssl.export import EXPORT_DIR, export_meta, resolve_export
from mmssl.metrics import METRICS_FILE, append_metrics
from mmssl.recipe import TrainConfig
from mmssl.registry import DOMAINS, TASKS
from mmssl.trainer import CHECKPOINT_DIR, TRACKER_DIR, Trainer, use_cpu

log = logging.getLogger(__name__)


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
    return TrainConfig(max_steps=400, batch_size=32, lr=3e-4, warmup_steps=40, weight_decay=0.01,
                       log_every=20, checkpoint_every=400, keep_checkpoints=1)


@dataclass(frozen=True)
class FinetuneConfig:
    """``mmssl finetune`` / ``mmssl evaluate`` settings (override with ``--set task.path=...``)."""

    task: TaskConfig = field(default_factory=TaskConfig)
    init: Literal["pretrained", "random"] = "pretrained"  # random: same architecture, untrained (baseline)
    train: TrainConfig = field(default_factory=_finetune_train_defaults)
    probe: ProbeConfig = field(default_factory=ProbeConfig)


def _domain_of(export_dir: Path, domain: str | None) -> Any:
    name = domain or export_meta(export_dir).get("domain")
    if name is None:
        raise ValueError(f"{export_dir} has no mmssl.json naming its domain; pass --domain (e.g. --domain text)")
    return DOMAINS.get(name)


def _task_names(dom: Any) -> tuple[str, ...] | None:
    """The ``--task`` names a domain takes, or None for a domain that does not list them."""
    names = getattr(dom, "task_names", None)
    return tuple(names()) if names else None


def check_task(dom: Any, task: TaskConfig, export_dir: Path) -> None:
    """Refuse, before anything is loaded, a task of another domain than the export's (or an unknown one).

    A task registered by a plugin whose domain lists no task names is left to the domain's own loader.
    """
    names = _task_names(dom)
    if names is None or task.name in names:
        return
    takes = f"the {dom.name} domain's tasks: {', '.join(names)}"
    owners = [d for d in DOMAINS.names() if task.name in (_task_names(DOMAINS.get(d)) or ())]
    if owners:
        raise ValueError(f"{export_dir} is an export of the {dom.name} domain and task {task.name!r} belongs to the "
                         f"{' / '.join(owners)} domain; {takes}")
    if task.name not in TASKS:
        raise KeyError(f"unknown task {short_repr(task.name)}; {takes}")


def export_domain(export_dir: Path, domain: str | None, task: TaskConfig) -> Any:
    """The export's domain (``mmssl.json``, or ``--domain``), after checking that it takes ``task``."""
    dom = _domain_of(export_dir, domain)
    check_task(dom, task, export_dir)
    return dom


PREDICTIONS_FILE = "test_predictions.npz"  # in each fine-tuning output folder: `prediction` and `label` per test row


def paired_comparison(correct_a: np.ndarray, correct_b: np.ndarray) -> dict[str, Any]:
    """How sure is "model A is more accurate than model B" when both were scored on the same test rows?

    ``correct_*`` are the per-row 0/1 outcomes. The gain is the difference of the accuracies; its
    standard error is that of the mean of the per-row differences (-1, 0 or 1), which only the
    rows where exactly one model is right make non-zero. ``p_value`` is McNemar's exact test: a
    two-sided binomial test of those discordant rows against an even split.
    """
    from scipy.stats import binomtest

    a, b = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"paired outcomes need two equal, non-empty 1-D arrays; got shapes {a.shape} and {b.shape}")
    n = a.size
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    gain = (only_a - only_b) / n
    se = float(np.sqrt(max(only_a + only_b - (only_a - only_b) ** 2 / n, 0.0)) / n)
    p = binomtest(only_a, only_a + only_b, 0.5).pvalue if only_a + only_b else 1.0
    return {"gain": gain, "se": se, "ci95": [gain - 1.96 * se, gain + 1.96 * se], "only_a": only_a, "only_b": only_b,
            "n": n, "p_value": float(p)}


def load_predictions(finetune_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """The test predictions and labels a fine-tuning run saved in its output folder."""
    path = Path(finetune_dir) / PREDICTIONS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no saved test predictions (fine-tuned before they were saved?)")
    with np.load(path) as f:
        return f["prediction"], f["label"]


@torch.no_grad()
def predict(model: Any, rows: Any, collate: Any, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Predicted and true labels of ``rows`` (model in eval mode)."""
    model.eval()
    device = next(model.parameters()).device
    preds, labels = [], []
    for batch in DataLoader(rows, batch_size=batch_size, collate_fn=collate):
        preds.append(model.logits(batch.to(device)).argmax(-1).cpu().numpy())
        labels.append(batch.extras["labels"].numpy())
    return np.concatenate(preds), np.concatenate(labels)


FINETUNE_MARKER = "finetune.json"  # written first in each fine-tuning folder: the task and init it holds
# Everything a fine-tune writes in its folder, and all that a replacement removes; the marker goes last, so a
# folder half cleaned is still recognised as a fine-tune.
FINETUNE_OUTPUTS = (EXPORT_DIR, CHECKPOINT_DIR, TRACKER_DIR, METRICS_FILE, PREDICTIONS_FILE, FINETUNE_MARKER)


def finetune_dir(base: Path, cfg: FinetuneConfig) -> Path:
    """Where a fine-tune goes: ``BASE/TASK-INIT`` (``BASE`` is ``--output-dir``, or ``RUN/finetune``), so the
    pretrained and random-init runs of ``--baseline`` and fine-tunes on other tasks never share a folder."""
    return Path(base) / f"{cfg.task.name}-{cfg.init}"


def _previous_finetune(out: Path) -> dict[str, Any] | None:
    """The task and init of the fine-tune whose marker ``out`` holds, if any."""
    try:
        marker = json.loads((out / FINETUNE_MARKER).read_text())
    except (OSError, ValueError):
        return None
    return {"task": marker.get("task"), "init": marker.get("init")} if isinstance(marker, dict) else None


def check_output_dir(out: Path, cfg: FinetuneConfig, overwrite: bool, default: bool) -> None:
    """Refuse a fine-tuning folder that holds anything but a previous fine-tune of the same task and init.

    That previous fine-tune is replaced with ``overwrite``, or without it in mmssl's own default folder
    (``RUN/finetune/TASK-INIT``) when it holds nothing else. Nothing is removed here (:func:`clear_output_dir`).
    """
    for folder in (out, *out.parents):
        if folder.exists():
            if not folder.is_dir():
                raise NotADirectoryError(f"{folder} is a file, not a folder: choose another --output-dir")
            break
    entries = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if not entries:
        return
    foreign = [name for name in entries if name not in FINETUNE_OUTPUTS]
    kind = {"task": cfg.task.name, "init": cfg.init}
    previous = _previous_finetune(out) or (kind if default and not foreign else None)  # no marker: older mmssl
    if previous is None:
        raise FileExistsError(f"{out} is not empty ({', '.join(entries[:3])}{', ...' if len(entries) > 3 else ''}) "
                              "and holds no fine-tune: choose a new or empty --output-dir; nothing was changed")
    if previous != kind:
        raise FileExistsError(f"{out} holds a fine-tune of task {previous['task']!r} ({previous['init']} init), "
                              f"not of {cfg.task.name!r} ({cfg.init} init): choose another --output-dir")
    if not overwrite and not (default and not foreign):
        others = f" (the other files, {', '.join(foreign[:3])}, are kept)" if foreign else ""
        raise FileExistsError(f"{out} holds a previous fine-tune of {cfg.task.name!r} ({cfg.init} init): pass "
                              f"--overwrite to replace it{others}, or choose another --output-dir")


def clear_output_dir(out: Path, cfg: FinetuneConfig, domain: str) -> None:
    """Remove what a previous fine-tune wrote in ``out`` (only :data:`FINETUNE_OUTPUTS`), then mark the folder."""
    for name in FINETUNE_OUTPUTS:
        path = out / name
        if path.is_symlink() or path.is_file():
            path.unlink()
        elif path.is_dir():
            shutil.rmtree(path)
    out.mkdir(parents=True, exist_ok=True)
    marker = {"task": cfg.task.name, "init": cfg.init, "domain": domain}
    (out / FINETUNE_MARKER).write_text(json.dumps(marker, indent=2) + "\n")


def _skipped_rows(data: TaskData) -> dict[str, Any]:
    """``{"skipped_rows": {reason: count}}`` for a task that skipped unusable rows, else ``{}``."""
    return {"skipped_rows": dict(data.skipped)} if data.skipped else {}


def save_classifier_head(head: torch.nn.Linear, label_names: list[str], out_dir: Path) -> None:
    """A linear head beside its backbone: ``classifier_head.safetensors`` (weight ``[K, D]``, bias ``[K]``) and
    ``classifier_head.json`` (its sizes, ``id2label`` and ``label2id``, as in a transformers config)."""
    from safetensors.torch import save_file

    save_file(head.state_dict(), str(Path(out_dir) / "classifier_head.safetensors"))
    config = {"in_features": head.in_features, "num_labels": head.out_features,
              "id2label": {str(i): name for i, name in enumerate(label_names)},
              "label2id": {name: i for i, name in enumerate(label_names)}}
    (Path(out_dir) / "classifier_head.json").write_text(json.dumps(config, indent=2) + "\n")


def finetune(path: Path, cfg: FinetuneConfig, output_dir: Path | None = None, domain: str | None = None,
             overwrite: bool = False) -> dict[str, Any]:
    """Fine-tune the export of ``path`` (a run or an export) on ``cfg.task``; returns the result record.

    The run goes to ``OUTPUT_DIR/TASK-INIT`` (default ``RUN/finetune/TASK-INIT``, see :func:`finetune_dir`);
    a folder there that holds anything but a previous fine-tune of the same kind is refused, and such a
    fine-tune is replaced only with ``overwrite`` (or in the default folder). Its ``export/`` holds the
    classifier, the preprocessor and the label names.
    """
    export_dir, run_dir = resolve_export(Path(path))
    dom = export_domain(export_dir, domain, cfg.task)
    base = Path(output_dir) if output_dir else (run_dir or export_dir.parent) / "finetune"
    out = finetune_dir(base, cfg)
    check_output_dir(out, cfg, overwrite, default=output_dir is None)
    data = dom.task_data(cfg.task)
    state = PartialState(cpu=use_cpu())
    state.wait_for_everyone()  # every process has checked the folder before the main one clears it
    if state.is_main_process:
        clear_output_dir(out, cfg, dom.name)
    state.wait_for_everyone()
    set_seed(cfg.train.seed)
    model = dom.classifier(export_dir, list(data.label_names), cfg.init)
    processor = dom.load_processor(export_dir)
    collate = dom.task_collate(processor, cfg.task)
    trainer = Trainer(model, data.train, collate, cfg.train, out)
    last = trainer.fit()
    model = trainer.accelerator.unwrap_model(trainer.model)
    pred, true = predict(model, data.test, collate)
    if trainer.accelerator.is_main_process:
        model.export(out / EXPORT_DIR)
        processor.save_pretrained(str(out / EXPORT_DIR))  # the export is used without mmssl (pipelines)
        np.savez(out / PREDICTIONS_FILE, prediction=pred, label=true)
    record = {"event": "finetune", "task": cfg.task.name, "init": cfg.init, "accuracy": float((pred == true).mean()),
              "n_train": len(data.train), "n_test": len(true), **_skipped_rows(data), "steps": cfg.train.max_steps,
              "final_train_loss": last.get("loss"), "output_dir": str(out)}
    if trainer.accelerator.is_main_process:
        append_metrics(run_dir or out, record)
    trainer.accelerator.wait_for_everyone()
    trainer.close()
    return record


@dataclass
class FrozenSetup:
    """What a frozen-encoder protocol reads: the export, its encoder on the device, the task and its collate."""

    export_dir: Path
    run_dir: Path | None
    encoder: Any
    data: TaskData
    collate: Any


def frozen_setup(path: Path, cfg: FinetuneConfig, domain: str | None) -> FrozenSetup:
    """Resolve ``RUN_OR_EXPORT``, load its encoder (``cfg.init=random``: same shape, fresh weights,
    seeded by ``cfg.train.seed``) on the accelerator if any, and the task's rows and collate."""
    export_dir, run_dir = resolve_export(Path(path))
    dom = export_domain(export_dir, domain, cfg.task)
    data = dom.task_data(cfg.task)
    set_seed(cfg.train.seed)
    encoder = dom.load_encoder(export_dir, random_init=cfg.init == "random")
    encoder.to("cuda" if torch.cuda.is_available() else "cpu")
    return FrozenSetup(export_dir, run_dir, encoder, data, dom.task_collate(dom.load_processor(export_dir), cfg.task))


def _frozen_features(path: Path, cfg: FinetuneConfig, domain: str | None) -> tuple[Any, Any, TaskData, Path | None]:
    """Pooled features of the export's frozen encoder on the task's train and test rows (with progress bars)."""
    setup = frozen_setup(path, cfg, domain)
    encoder, data, collate, run_dir = setup.encoder, setup.data, setup.collate, setup.run_dir
    train, test = (extract_features(encoder, rows, collate, cfg.probe.batch_size, cfg.probe.pooling, progress=True)
                   for rows in (data.train, data.test))
    return train, test, data, run_dir


def fit_linear_probe(train: tuple[Any, Any], test: tuple[Any, Any], probe: ProbeConfig) -> dict[str, Any]:
    """Logistic regression on standardised features ``(x [N, D], y [N])``: test and train accuracy.

    Shared by ``--protocol linear`` and the raw-input baselines (e.g. pixels) so both use one probe."""
    (x_train, y_train), (x_test, y_test) = ((np.asarray(x), np.asarray(y)) for x, y in (train, test))
    log.info("fitting the linear probe: logistic regression on %d x %d features (probe.C=%g, probe.max_iter=%d)",
             *x_train.shape, probe.C, probe.max_iter)
    start = time.perf_counter()
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=probe.C, max_iter=probe.max_iter))
    clf.fit(x_train, y_train)
    result = {"accuracy": float(clf.score(x_test, y_test)), "train_accuracy": float(clf.score(x_train, y_train)),
              "n_train": len(y_train), "n_test": len(y_test), "feature_dim": int(x_train.shape[1])}
    log.info("linear probe fitted in %.1f s: test accuracy %.4f on %d rows (train %.4f)",
             time.perf_counter() - start, result["accuracy"], result["n_test"], result["train_accuracy"])
    return result


def linear_probe(path: Path, cfg: FinetuneConfig, domain: str | None = None) -> dict[str, Any]:
    """Logistic regression on frozen pooled encoder features; accuracy on the held-out split."""
    train, test, data, run_dir = _frozen_features(path, cfg, domain)
    record = {"event": "evaluate", "protocol": "linear", "task": cfg.task.name, "init": cfg.init,
              **fit_linear_probe(train, test, cfg.probe), **_skipped_rows(data)}
    if run_dir is not None:
        append_metrics(run_dir, record)
    return record


def knn_probe(path: Path, cfg: FinetuneConfig, domain: str | None = None) -> dict[str, Any]:
    """Weighted kNN (k=``probe.k``, temperature ``probe.temperature``) on frozen pooled features."""
    train, test, data, run_dir = _frozen_features(path, cfg, domain)
    accuracy = knn_accuracy(train, test, len(data.label_names), cfg.probe.k, cfg.probe.temperature)
    record = {"event": "evaluate", "protocol": "knn", "task": cfg.task.name, "init": cfg.init, "accuracy": accuracy,
              "k": cfg.probe.k, "temperature": cfg.probe.temperature, "n_train": len(train[1]), "n_test": len(test[1]),
              **_skipped_rows(data)}
    if run_dir is not None:
        append_metrics(run_dir, record)
    return record
