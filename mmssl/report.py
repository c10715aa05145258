"""``mmssl report RUN``: PNG figures of a run's metrics and results in ``RUN/report/``, and a one-page
``RUN/report/report.md`` that embeds them under the run's key facts and results table.

Everything is read from what the run wrote: ``config.yaml``, ``data_summary.json``, ``metrics.jsonl``
(training lines, the online monitor's values, the ``evaluate`` / ``finetune`` result records) and each
fine-tune folder ``RUN/finetune/*/``. The figures of logged metrics are :mod:`mmssl.report_figures`; the one
figure that computes something, the t-SNE map of the export's frozen features, is :mod:`mmssl.feature_map`.
matplotlib is imported only when a figure is drawn.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmssl.checkpoint import CONFIG_FILE, EXPORT_DIR, METRICS_FILE, SUMMARY_FILE
from mmssl.config import MmsslError, apply_overrides, from_dict, read_yaml, to_dict
from mmssl.feature_map import MAP_POINTS, MIN_POINTS, TITLE, plot_feature_map
from mmssl.finetune import FINETUNE_MARKER
from mmssl.registry import registered_tasks
from mmssl.report_figures import (
    RESULT_SETTINGS,
    Section,
    plot_finetunes,
    plot_grad_norm,
    plot_loss,
    plot_lr,
    plot_monitors,
    plot_results,
    plot_throughput,
    result_rows,
)
from mmssl.tasks import FinetuneConfig

log = logging.getLogger(__name__)

REPORT_DIR = "report"  # RUN/report/: the PNG files and report.md
REPORT_FILE = "report.md"
FINETUNE_DIR = "finetune"  # RUN/finetune/TASK-INIT/: mmssl finetune's default folders
RESULT_EVENTS = ("evaluate", "finetune")  # one result each; the *_summary records of --seeds restate them
# what the figure functions write into RUN/report/ (an earlier report's are removed, so a skipped one is not left over)
FIGURE_FILES = tuple(
    f"{name}.png"
    for name in ("loss", "lr", "grad_norm", "throughput", "monitors", "finetune", "results", "feature_map")
)


@dataclass(frozen=True)
class RunLog:
    """What a run wrote, as the report reads it.

    Attributes:
        run_dir: a pretraining run (``config.yaml``) or a fine-tune folder (``finetune.json``).
        recipe: the run's resolved recipe (``config.yaml``); ``{}`` for a fine-tune folder.
        finetune: a fine-tune folder's marker (task, init, domain); ``{}`` for a pretraining run.
        summary: the pretraining data's facts (``data_summary.json``), or ``{}``.
        training: the logged training lines (those with a ``step``), in order.
        results: the latest evaluate / fine-tune record of each setting and seed (:data:`RESULT_SETTINGS`).
        finetunes: each fine-tune folder's name and its training lines.
        unreadable: lines of the ``metrics.jsonl`` files that are not JSON (a run killed mid-write), skipped.
    """

    run_dir: Path
    recipe: dict[str, Any]
    finetune: dict[str, Any]
    summary: dict[str, Any]
    training: list[dict[str, Any]]
    results: list[dict[str, Any]]
    finetunes: dict[str, list[dict[str, Any]]]
    unreadable: int = 0


def _read_lines(path: Path) -> tuple[list[dict[str, Any]], int]:
    """The JSON records of a ``metrics.jsonl``, and how many of its lines were not (each one is named)."""
    if not path.is_file():
        return [], 0
    records, bad = [], 0
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if isinstance(record, dict):
            records.append(record)
        else:
            bad += 1
            log.warning("%s line %d is not a JSON record (a run stopped mid-write?); skipped", path, number)
    return records, bad


def _latest_results(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The last record of each setting and seed (a rerun replaces a result), in the order settings first appear."""
    latest: dict[tuple, dict[str, Any]] = {}
    for r in records:
        latest[(*(str(r.get(k)) for k in RESULT_SETTINGS), str(r.get("seed")))] = r
    return list(latest.values())


def _check_run_dir(run_dir: Path) -> None:
    if not run_dir.is_dir():
        error = NotADirectoryError if run_dir.exists() else FileNotFoundError
        raise error(f"{run_dir} is not a folder: pass a run directory (the --output-dir of mmssl pretrain)")
    if not (run_dir / CONFIG_FILE).is_file() and not (run_dir / FINETUNE_MARKER).is_file():
        raise FileNotFoundError(
            f"{run_dir} is not an mmssl run: it holds neither {CONFIG_FILE} (a pretraining run) nor "
            f"{FINETUNE_MARKER} (a fine-tune); pass the --output-dir of mmssl pretrain or mmssl finetune"
        )


def _json_file(path: Path) -> dict[str, Any]:
    """A JSON object file, or ``{}`` when it is missing or damaged (the report then leaves its facts out)."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def read_run(run_dir: Path) -> RunLog:
    """Read a pretraining run or a fine-tune folder, with the fine-tune folders under ``RUN/finetune/``."""
    run_dir = Path(run_dir)
    _check_run_dir(run_dir)
    recipe = read_yaml(run_dir / CONFIG_FILE) if (run_dir / CONFIG_FILE).is_file() else {}
    records, unreadable = _read_lines(run_dir / METRICS_FILE)
    finetunes: dict[str, list[dict[str, Any]]] = {}
    for marker in sorted((run_dir / FINETUNE_DIR).glob(f"*/{FINETUNE_MARKER}")):
        lines, bad = _read_lines(marker.parent / METRICS_FILE)
        finetunes[marker.parent.name] = [r for r in lines if "step" in r and "event" not in r]
        records, unreadable = records + [r for r in lines if r.get("event") in RESULT_EVENTS], unreadable + bad
    return RunLog(
        run_dir=run_dir,
        recipe=recipe,
        finetune={} if recipe else _json_file(run_dir / FINETUNE_MARKER),
        summary=_json_file(run_dir / SUMMARY_FILE),
        training=[r for r in records if "step" in r and "event" not in r],
        results=_latest_results(r for r in records if r.get("event") in RESULT_EVENTS),
        finetunes=finetunes,
        unreadable=unreadable,
    )


def default_task(recipe: dict[str, Any]) -> str | None:
    """The labelled task of a run's feature map when ``--task`` is not given: the recipe's monitor task, else its
    data set when that is a task of its domain (``fashion-mnist``, ``karate-club``), else the domain's first task."""
    tasks = registered_tasks(str(recipe.get("domain")))
    for candidate in ((recipe.get("monitor") or {}).get("task"), (recipe.get("data") or {}).get("name")):
        if candidate in tasks:
            return candidate
    return tasks[0] if tasks else None


def feature_section(
    run: RunLog, out: Path, task: str | None, overrides: list[str], features: bool, max_points: int
) -> Section:
    """The feature map of ``task`` (``--set task.*=...``, ``probe.*``), or of the run's default task, where a
    problem of the default task (not prepared, of another level than the encoder) becomes a note, not an error."""
    if not features:
        return Section(TITLE, None, "--no-features was given")
    if not run.recipe:
        return Section(TITLE, None, "a fine-tune folder; `mmssl report` on the pretraining run draws the map")
    name = task or default_task(run.recipe)
    if name is None:
        return Section(TITLE, None, f"the {run.recipe.get('domain')} domain has no labelled task (pass --task)")
    cfg = from_dict(FinetuneConfig, apply_overrides(to_dict(FinetuneConfig()), [f"task.name={name}", *overrides]))
    try:
        return plot_feature_map(run.run_dir, cfg, out, max_points)
    except (MmsslError, ValueError, KeyError, OSError) as e:
        if task is not None:  # the user's choice: an error, as in mmssl evaluate
            raise
        why = e.args[0] if isinstance(e, KeyError) and e.args else e
        return Section(TITLE, None, f"the default task {name} cannot be mapped: {why} (choose one with --task)")


def write_report(
    run_dir: Path,
    task: str | None = None,
    overrides: Iterable[str] = (),
    features: bool = True,
    max_points: int = MAP_POINTS,
) -> Path:
    """Draw every figure of a run into ``RUN/report/`` and write ``RUN/report/report.md``; returns its path.

    Args:
        run_dir: a pretraining run directory, or a fine-tune folder.
        task: the labelled task of the feature map (default: :func:`default_task`); ``overrides``: ``--set``
            strings for it (``task.*``, ``probe.pooling``, ...), as ``mmssl evaluate`` reads them.
        features: draw the feature map (it loads the export's encoder and runs t-SNE: seconds to a minute).
        max_points: rows of the feature map, a stratified sample of the task's test split.
    """
    if max_points < MIN_POINTS:
        raise ValueError(f"--max-points must be at least {MIN_POINTS} for a t-SNE map (got {max_points})")
    run = read_run(Path(run_dir))
    out = run.run_dir / REPORT_DIR
    out.mkdir(exist_ok=True)
    # first the figure that a --task or --set can make fail, before anything else is drawn
    feature_map = feature_section(run, out, task, list(overrides), features, max_points)
    for name in set(FIGURE_FILES) - {feature_map.file}:  # an earlier report's figures must not stay behind
        (out / name).unlink(missing_ok=True)
    t = run.training
    clip = float((run.recipe.get("train") or {}).get("max_grad_norm") or 0.0)
    sections = [plot_loss(t, out), plot_lr(t, out), plot_grad_norm(t, out, clip), plot_throughput(t, out)]
    sections += [plot_monitors(t, out), plot_finetunes(run.finetunes, out), plot_results(run.results, out)]
    sections.append(feature_map)
    for s in sections:
        if s.file is None:
            log.info("report: %s skipped: %s", s.title, s.text)
    path = out / REPORT_FILE
    path.write_text(render_markdown(run, sections))
    return path


# ---------------------------------------------------------------------------- report.md
def _number(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.4g}" if math.isfinite(value) else str(value)


def _what_ran(run: RunLog) -> list[tuple[str, str]]:
    r = run.recipe
    if not r:
        ft = run.finetune
        return [("fine-tune", f"task {ft.get('task')}, {ft.get('init')} init"), ("domain", str(ft.get("domain")))]
    size = _export_weights(run.run_dir / EXPORT_DIR)
    return [
        ("recipe", f"{r.get('name')}: {' '.join(str(r.get('description', '')).split())}"),
        ("domain", str(r.get("domain"))),
        ("objective", str((r.get("objective") or {}).get("name"))),
        ("encoder", f"{(r.get('encoder') or {}).get('arch')}" + (f", {size:,} weights in the export" if size else "")),
    ]


def _export_weights(export_dir: Path) -> int | None:
    """The number of weights in an export's safetensors files (read from their headers), or None without any."""
    from safetensors import SafetensorError, safe_open

    total = 0
    for path in sorted(Path(export_dir).rglob("*.safetensors")):
        try:
            with safe_open(str(path), framework="numpy") as f:
                total += sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
        except (OSError, SafetensorError) as e:
            log.warning("%s cannot be read (%s); its weights are not counted", path, e)
    return total or None


def _facts(run: RunLog) -> list[tuple[str, str]]:
    """The run's key facts as ``(name, value)`` rows: what ran, how far, where it ended, on what data."""
    rows = [("run", f"`{run.run_dir}`"), *_what_ran(run)]
    last = run.training[-1] if run.training else {}
    max_steps = (run.recipe.get("train") or {}).get("max_steps")
    if last:
        of = f" of {_number(max_steps)}" if max_steps else ""
        rows.append(("steps", f"{_number(last['step'])}{of} (epoch {_number(last.get('epoch'))})"))
        rows.append(("final loss", f"{_number(last.get('loss'))} (mean over the last logging window)"))
        if isinstance(last.get("elapsed_s"), (int, float)):
            took = last["elapsed_s"]
            took = f"{took / 60:.1f} min" if took >= 120 else f"{took:.0f} s"
            rows.append(("training time", f"{took} (since the last start or resume)"))
        if last.get("nonfinite_skipped"):
            rows.append(("non-finite steps skipped", _number(last["nonfinite_skipped"])))
    else:
        rows.append(("steps", "none logged yet"))
    if run.summary:
        rows.append(("data", ", ".join(f"{k} {_number(v)}" for k, v in run.summary.items())))
    if (run.run_dir / EXPORT_DIR).is_dir():
        rows.append(("export", f"`{run.run_dir / EXPORT_DIR}`"))
    return rows


def _results_table(results: list[dict[str, Any]]) -> list[str]:
    rows = result_rows(results)
    if not rows:
        return ["No evaluate or fine-tune results yet (`mmssl evaluate RUN --task ...`, `mmssl finetune RUN ...`)."]
    lines = ["| task | protocol | features | labels | metric | mean | sd | seeds | test rows |", "|" + "---|" * 9]
    for row in rows:
        sd = f"{row.sd:.4f}" if row.n > 1 else "-"
        lines.append(
            f"| {row.task} | {row.protocol} | {row.features} | {row.budget} | {row.metric} | {row.mean:.4f} "
            f"| {sd} | {row.n} | {_number(row.n_test)} |"
        )
    return lines


def render_markdown(run: RunLog, sections: list[Section]) -> str:
    """``report.md``: the key facts, the results table, then each figure (or the note saying why it is missing)."""
    title = run.recipe.get("name") or f"fine-tune {run.run_dir.name}"
    lines = [f"# Run report: {title}", "", "| | |", "|---|---|"]
    lines += [f"| {name} | {value.replace('|', '/')} |" for name, value in _facts(run)]
    if run.unreadable:
        lines += ["", f"{run.unreadable} line(s) of metrics.jsonl were not JSON records and were skipped."]
    lines += ["", "## Results", "", *_results_table(run.results), "", "## Figures", ""]
    for s in sections:
        lines += [f"### {s.title}", ""]
        lines += [f"![{s.title}]({s.file})", "", s.text, ""] if s.file else [f"*Skipped: {s.text}*", ""]
    return "\n".join(lines)
