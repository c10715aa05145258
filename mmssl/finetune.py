"""Fine-tuning shared by every domain: the export's backbone with a new head, trained on a labelled task,
its output folder, its test predictions and the paired comparison of two fine-tunes (``--baseline``).

The frozen-feature probes (linear, kNN, retrieval) are :mod:`mmssl.probes`; the settings both read,
:mod:`mmssl.tasks`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import PartialState
from accelerate.utils import set_seed
from torch.utils.data import DataLoader

from mmssl.checkpoint import CHECKPOINT_DIR, EXPORT_DIR, METRICS_FILE, TRACKER_DIR
from mmssl.export import resolve_export
from mmssl.metrics import append_metrics
from mmssl.tasks import FinetuneConfig, check_init, export_domain
from mmssl.trainer import Trainer, use_cpu
from mmssl.types import Extra

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
    return {
        "gain": gain,
        "se": se,
        "ci95": [gain - 1.96 * se, gain + 1.96 * se],
        "only_a": only_a,
        "only_b": only_b,
        "n": n,
        "p_value": float(p),
    }


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
        labels.append(batch.extras[Extra.LABELS].numpy())
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
    record = {
        "event": "finetune",
        "task": cfg.task.name,
        "init": cfg.init,
        "accuracy": float((pred == true).mean()),
        "n_train": len(data.train),
        "n_test": len(true),
        **data.skipped_record(),
        "steps": cfg.train.max_steps,
        "final_train_loss": last.get("loss"),
        "output_dir": str(out),
    }
    if trainer.accelerator.is_main_process:
        append_metrics(run_dir or out, record)
    trainer.accelerator.wait_for_everyone()
    trainer.close()
    return record
