"""Run metrics: one JSON object per line in ``metrics.jsonl`` (plus TensorBoard through Accelerate)."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mmssl.checkpoint import METRICS_FILE, write_atomically


def _clean(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf
    return value


def append_metrics(run_dir: Path, record: dict[str, Any]) -> None:
    """Append one record to ``run_dir/metrics.jsonl`` (call on the main process only)."""
    with open(Path(run_dir) / METRICS_FILE, "a") as f:
        f.write(json.dumps({k: _clean(v) for k, v in record.items()}) + "\n")


def read_metrics(run_dir: Path) -> Iterator[dict[str, Any]]:
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return
    with open(path) as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def truncate_after(run_dir: Path, step: int) -> None:
    """Drop training lines logged after ``step`` (they will be logged again by a resumed run).

    Lines without a ``step`` (evaluation and fine-tuning results) are kept. The file is replaced
    atomically, so an interruption leaves either the old or the truncated file, never a partial one.
    """
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return
    kept = [r for r in read_metrics(run_dir) if "event" in r or r.get("step", 0) <= step]
    write_atomically(path, "".join(json.dumps(r) + "\n" for r in kept))


def last_training_record(run_dir: Path) -> dict[str, Any] | None:
    records = [r for r in read_metrics(run_dir) if "event" not in r and "loss" in r]
    return records[-1] if records else None
