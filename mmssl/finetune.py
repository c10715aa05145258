"""Fine-tuning shared by every domain: the export's backbone with a new head, trained on a labelled task,
its output folder and its test predictions (compared, with ``--baseline``, by :mod:`mmssl.stats`).

The frozen-feature probes (linear, kNN, retrieval) are :mod:`mmssl.probes`; the settings both read, and the
label budget that cuts the training split, :mod:`mmssl.tasks`.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import PartialState
from accelerate.utils import set_seed
from torch.utils.data import DataLoader, Subset

from mmssl.checkpoint import CHECKPOINT_DIR, EXPORT_DIR, METRICS_FILE, TRACKER_DIR, write_atomically
from mmssl.export import resolve_export
from mmssl.metrics import append_metrics
from mmssl.recipe import TrainConfig
from mmssl.tasks import (
    FinetuneConfig,
    TaskConfig,
    budget_tag,
    budgeted_task_data,
    check_init,
    export_domain,
    has_label_budget,
    subset_rows,
)
from mmssl.trainer import BestWeights, Trainer, use_cpu
from mmssl.types import Extra

PREDICTIONS_FILE = "test_predictions.npz"  # in each fine-tuning output folder: `prediction` and `label` per test row


def load_predictions(finetune_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """The test predictions and labels a fine-tuning run saved in its output folder."""
    path = Path(finetune_dir) / PREDICTIONS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no saved test predictions (fine-tuned before they were saved?)")
    with np.load(path) as f:
        return f["prediction"], f["label"]


@torch.no_grad()
def predict_logits(model: Any, rows: Any, collate: Any, batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits ``[N, K]`` (float32, on the CPU) and true labels ``[N]`` of ``rows`` (model in eval mode)."""
    model.eval()
    device = next(model.parameters()).device
    logits, labels = [], []
    for batch in DataLoader(rows, batch_size=batch_size, collate_fn=collate):
        logits.append(model.logits(batch.to(device)).float().cpu())
        labels.append(batch.extras[Extra.LABELS])
    return torch.cat(logits), torch.cat(labels)


def predict(model: Any, rows: Any, collate: Any, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Predicted and true labels of ``rows`` (model in eval mode)."""
    logits, labels = predict_logits(model, rows, collate, batch_size)
    return logits.argmax(-1).numpy(), labels.numpy()


FINETUNE_MARKER = "finetune.json"  # written first in each fine-tuning folder: the task and init it holds
# Everything a fine-tune writes in its folder, and all that a replacement removes; the marker goes last, so a
# folder half cleaned is still recognised as a fine-tune.
FINETUNE_OUTPUTS = (EXPORT_DIR, CHECKPOINT_DIR, TRACKER_DIR, METRICS_FILE, PREDICTIONS_FILE, FINETUNE_MARKER, "report")


def finetune_dir(base: Path, cfg: FinetuneConfig) -> Path:
    """Where a fine-tune goes: ``BASE/TASK-INIT`` (``BASE`` is ``--output-dir``, or ``RUN/finetune``), so the
    pretrained and random-init runs of ``--baseline`` and fine-tunes on other tasks never share a folder.

    A label budget and its seed, or a seed other than 0, follow (``TASK-INIT-10-per-class-seed1``, see
    :func:`mmssl.tasks.budget_tag`), so the seeds of ``--seeds K`` and other budgets keep their own folders.
    """
    seed = f"-seed{cfg.train.seed}" if has_label_budget(cfg.task) or cfg.train.seed != 0 else ""
    return Path(base) / f"{cfg.task.name}-{cfg.init}{budget_tag(cfg.task)}{seed}"


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
        raise FileExistsError(
            f"{out} is not empty ({', '.join(entries[:3])}{', ...' if len(entries) > 3 else ''}) "
            "and holds no fine-tune: choose a new or empty --output-dir; nothing was changed"
        )
    if previous != kind:
        raise FileExistsError(
            f"{out} holds a fine-tune of task {previous['task']!r} ({previous['init']} init), "
            f"not of {cfg.task.name!r} ({cfg.init} init): choose another --output-dir"
        )
    if not overwrite and not (default and not foreign):
        others = f" (the other files, {', '.join(foreign[:3])}, are kept)" if foreign else ""
        raise FileExistsError(
            f"{out} holds a previous fine-tune of {cfg.task.name!r} ({cfg.init} init): pass "
            f"--overwrite to replace it{others}, or choose another --output-dir"
        )


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


def split_labels(dom: Any, rows: Any) -> np.ndarray:
    """``int64 [N]``: the labels of a task split's rows (:meth:`mmssl.domain.DownstreamDomain.task_labels`),
    also where a label budget cut the split to a ``Subset`` of them."""
    if isinstance(rows, Subset):
        return split_labels(dom, rows.dataset)[np.asarray(rows.indices, dtype=np.int64)]
    return dom.task_labels(rows)


def stratified_holdout(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split the rows whose labels are ``labels [N]`` into kept and held-out rows, class by class.

    Of every class, ``fraction`` of its rows (rounded) is held out: at least one where the class has two rows
    or more, and never its last one, so every class keeps training rows however small the data. The rows come
    from one permutation per class drawn with ``seed`` (numpy's ``default_rng``).

    Returns:
        Sorted indices ``(kept [N - M], held [M])``; ``M`` is 0 when ``fraction`` is 0.
    """
    rng = np.random.default_rng(seed)
    kept, held = [np.zeros(0, dtype=np.int64)], [np.zeros(0, dtype=np.int64)]
    for c in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == c))
        take = min(max(round(fraction * len(rows)), 1), len(rows) - 1) if fraction > 0 else 0
        held.append(rows[:take])
        kept.append(rows[take:])
    return np.sort(np.concatenate(kept)), np.sort(np.concatenate(held))


def validation_split(dom: Any, rows: Any, task: TaskConfig) -> tuple[Any, Any]:
    """The training rows, and the validation slice carved from them that chooses the epoch kept:
    ``task.validation_fraction`` of every class drawn with ``task.split_seed`` (:func:`stratified_holdout`).
    The test split is never touched."""
    if task.validation_fraction == 0:
        return rows, []
    kept, held = stratified_holdout(split_labels(dom, rows), task.validation_fraction, task.split_seed)
    return subset_rows(rows, kept), subset_rows(rows, held)


def validation_metrics(rows: Any, collate: Callable[[list[Any]], Any]) -> Callable[[Any], dict[str, float]]:
    """An evaluation for :class:`mmssl.trainer.BestWeights`: a model's accuracy and mean cross-entropy on ``rows``."""

    def evaluate(model: Any) -> dict[str, float]:
        logits, labels = predict_logits(model, rows, collate)
        accuracy = (logits.argmax(-1) == labels).float().mean()
        return {"val_accuracy": float(accuracy), "val_loss": float(F.cross_entropy(logits, labels))}

    return evaluate


def accuracy_then_loss(metrics: dict[str, float]) -> tuple[float, float]:
    """How fine-tuning ranks epochs: the validation accuracy, and among equal accuracies the lower validation
    loss (transformers' default ``metric_for_best_model``), since a small slice gives several epochs the same
    accuracy (often all of its rows right); an exact tie keeps the earlier epoch."""
    return metrics["val_accuracy"], -metrics["val_loss"]


def finetune_trainer(
    model: Any, train: Any, validation: Any, collate: Callable[[list[Any]], Any], cfg: TrainConfig, out: Path
) -> tuple[Trainer, BestWeights | None]:
    """The fine-tune's Trainer: every training row each epoch (the last, smaller batch too), and with a
    validation slice, its accuracy and loss at the end of every epoch (logged as ``val_accuracy`` and
    ``val_loss``) and the best epoch's weights kept (:class:`mmssl.trainer.BestWeights`, saved with the
    checkpoints; :func:`accuracy_then_loss` ranks them)."""
    best = BestWeights(validation_metrics(validation, collate), accuracy_then_loss) if len(validation) else None
    trainer = Trainer(model, train, collate, cfg, out, epoch_hooks=[best] if best else [], drop_last=False)
    if best is not None:
        trainer.register_state("best", best)
    return trainer, best


def keep_best_epoch(trainer: Trainer, best: BestWeights | None) -> dict[str, Any]:
    """Load the best epoch's weights into the trained model; returns the epochs run, the epoch kept and its
    validation accuracy and loss (without a validation slice: the last epoch, and no validation scores)."""
    ran = trainer.epochs_done()
    if best is None:
        return {"epochs": ran, "best_epoch": ran, "best_val_accuracy": None}
    best.restore(trainer.accelerator.unwrap_model(trainer.model))
    scores = {"best_val_accuracy": best.metrics["val_accuracy"], "best_val_loss": best.metrics["val_loss"]}
    return {"epochs": ran, "best_epoch": best.epoch, "best_step": best.step, **scores}


def kept_summary(record: dict[str, Any], validation_fraction: float) -> str:
    """The line ``mmssl finetune`` prints: how many epochs ran, which was kept and why, and the test accuracy."""
    ran = f"fine-tuned {record['epochs']:g} epochs ({record['steps']} steps)"
    test = f"test accuracy {record['accuracy']:.4f} on {record['n_test']} rows"
    if record["best_val_accuracy"] is None:
        why = "task.validation_fraction=0" if validation_fraction == 0 else "every class has a single training row"
        return f"{ran}; kept the last: no validation slice ({why}); {test}"
    return (
        f"{ran}; kept epoch {record['best_epoch']:g}, validation accuracy {record['best_val_accuracy']:.4f} "
        f"(loss {record['best_val_loss']:.4f}) on {record['n_validation']} rows; {test}"
    )


def write_result(out: Path, record: dict[str, Any]) -> None:
    """Add the result to the folder's marker (:data:`FINETUNE_MARKER`), after the task, init and domain it names."""
    marker = json.loads((out / FINETUNE_MARKER).read_text())
    fields = {k: v for k, v in record.items() if k not in ("event", "output_dir")}
    write_atomically(out / FINETUNE_MARKER, json.dumps({**marker, **fields}, indent=2) + "\n")  # never half a marker


def finetune(
    path: Path, cfg: FinetuneConfig, output_dir: Path | None = None, domain: str | None = None, overwrite: bool = False
) -> dict[str, Any]:
    """Fine-tune the export of ``path`` (a run or an export) on ``cfg.task``; returns the result record.

    The run goes to ``OUTPUT_DIR/TASK-INIT`` (default ``RUN/finetune/TASK-INIT``, see :func:`finetune_dir`);
    a folder there that holds anything but a previous fine-tune of the same kind is refused, and such a
    fine-tune is replaced only with ``overwrite`` (or in the default folder). Its ``export/`` holds the
    classifier, the preprocessor and the label names.
    """
    check_init(cfg.init, "finetune")
    export_dir, run_dir = resolve_export(Path(path))
    dom = export_domain(export_dir, domain, cfg.task)
    base = Path(output_dir) if output_dir else (run_dir or export_dir.parent) / "finetune"
    out = finetune_dir(base, cfg)
    check_output_dir(out, cfg, overwrite, default=output_dir is None)
    data, budget = budgeted_task_data(dom, cfg.task, cfg.train.seed)  # the training rows a label budget keeps
    state = PartialState(cpu=use_cpu())
    state.wait_for_everyone()  # every process has checked the folder before the main one clears it
    if state.is_main_process:
        clear_output_dir(out, cfg, dom.name)
    state.wait_for_everyone()
    set_seed(cfg.train.seed)
    model = dom.classifier(export_dir, list(data.label_names), cfg.init)
    processor = dom.load_processor(export_dir)
    collate = dom.task_collate(processor, cfg.task)
    train, validation = validation_split(dom, data.train, cfg.task)
    trainer, best = finetune_trainer(model, train, validation, collate, cfg.train, out)
    last = trainer.fit()
    model = trainer.accelerator.unwrap_model(trainer.model)
    kept = keep_best_epoch(trainer, best)
    pred, true = predict(model, data.test, collate)
    if trainer.accelerator.is_main_process:
        model.export(out / EXPORT_DIR)
        processor.save_pretrained(str(out / EXPORT_DIR))  # the export is used without mmssl (pipelines)
        np.savez(out / PREDICTIONS_FILE, prediction=pred, label=true)
    record = {
        "event": "finetune",
        "task": cfg.task.name,
        "init": cfg.init,
        "accuracy": float((pred == true).mean()),
        "n_train": len(data.train),
        "n_validation": len(validation),  # of the n_train rows, held out to choose the epoch kept
        "n_test": len(true),
        **budget,
        **data.skipped_record(),
        "steps": trainer.state.step,
        **kept,
        "final_train_loss": last.get("loss"),
        "output_dir": str(out),
    }
    trainer.accelerator.print(kept_summary(record, cfg.task.validation_fraction))
    if trainer.accelerator.is_main_process:
        append_metrics(run_dir or out, record)
        write_result(out, record)
    trainer.accelerator.wait_for_everyone()
    trainer.close()
    return record
