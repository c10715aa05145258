"""The figures of ``mmssl report`` that plot what a run logged: one function per figure, each returning the
:class:`Section` of ``report.md`` that embeds it, or says why it was skipped (its metric is absent).

Each function reads plain ``metrics.jsonl`` records (:mod:`mmssl.metrics`): training lines carry ``step``,
``loss``, ``loss_<term>``, ``lr``, ``grad_norm``, ``samples_per_s``, ``tokens_per_s`` / ``<unit>_per_s``, the
objective's diagnostics and the monitor's values (``knn_accuracy``); result records carry ``event``.
matplotlib is imported inside :func:`new_figure`, so importing this module needs none.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# What the trainer logs about the loop rather than the model: never drawn as a monitor.
LOOP_KEYS = {"step", "epoch", "lr", "grad_norm", "nonfinite_skipped", "elapsed_s", "samples_per_s", "tokens_per_s"}
DPI = 120
SMOOTH_ABOVE = 100  # logged points above which the loss is drawn with its moving average


@dataclass(frozen=True)
class Section:
    """One figure of the report: its title, its file in the report folder (None: skipped) and the text under it
    (a caption, or the reason it was skipped)."""

    title: str
    file: str | None
    text: str


def _value(v: Any) -> float:
    """A logged number as a float; non-finite values (logged as the strings ``nan``, ``inf``) and others are NaN."""
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return float(v) if math.isfinite(v) else math.nan
    return math.nan


def series(records: list[dict[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
    """``(steps [n], values [n])`` of the records that logged a finite ``key``."""
    pairs = [(r["step"], _value(r[key])) for r in records if key in r]
    pairs = [(s, v) for s, v in pairs if math.isfinite(v)]
    return np.array([s for s, _ in pairs], dtype=float), np.array([v for _, v in pairs], dtype=float)


def new_figure(rows: int = 1, cols: int = 1, size: tuple[float, float] = (7.0, 4.0)) -> tuple[Any, Any]:
    """A matplotlib ``Figure`` (no pyplot state; saved through the Agg canvas) and its axes ``[rows, cols]``."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, layout="constrained")
    return fig, fig.subplots(rows, cols, squeeze=False)


def save_figure(fig: Any, out: Path, name: str) -> str:
    fig.savefig(out / name, dpi=DPI)
    return name


def _log_scale_helps(*values: np.ndarray) -> bool:
    """A log axis when every value is positive and they span more than a factor of 10."""
    v = np.concatenate([np.asarray(x, dtype=float) for x in values])
    return v.size > 1 and bool((v > 0).all()) and v.max() / v.min() > 10


def _step_axes(ax: Any, title: str, ylabel: str, log: bool = False) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.set_title(title)
    ax.set_xlabel("optimizer step")
    ax.xaxis.set_major_locator(MaxNLocator(nbins=6, integer=True))
    ax.set_ylabel(ylabel + (" (log scale)" if log else ""))
    if log:
        ax.set_yscale("log")
        _plain_log_labels(ax)
    ax.grid(True, alpha=0.3, which="both" if log else "major")


def _plain_log_labels(ax: Any) -> None:
    """Label a log y axis 0.2, 0.5, 1, 2, 5 (not 2 x 10^-1): 1, 2 and 5 of each decade when it spans less than
    two decades, the powers of ten only beyond."""
    from matplotlib.ticker import FuncFormatter

    low, high = ax.get_ylim()
    wanted = (1, 2, 5) if high / low < 100 else (1,)

    def label(value: float, _: Any) -> str:
        mantissa = round(value / 10 ** math.floor(math.log10(value)), 6) if value > 0 else 0
        return f"{value:g}" if mantissa in wanted else ""

    ax.yaxis.set_major_formatter(FuncFormatter(label))
    ax.yaxis.set_minor_formatter(FuncFormatter(label))


def _missing(title: str, key: str) -> Section:
    return Section(title, None, f"no `{key}` in metrics.jsonl")


def plot_loss(training: list[dict[str, Any]], out: Path) -> Section:
    """The training loss and each of its terms (``loss_<term>``) over steps; a term equal to the loss is not
    drawn again (an objective with one term logs it under its name too)."""
    steps, loss = series(training, "loss")
    if not steps.size:
        return _missing("Training loss", "loss")
    terms = sorted({k for r in training for k in r if k.startswith("loss_")})
    drawn = [(k, *series(training, k)) for k in terms]
    drawn = [(k, s, v) for k, s, v in drawn if v.size and not (v.shape == loss.shape and np.allclose(v, loss))]
    fig, ax = new_figure()
    ax = ax[0, 0]
    if len(loss) > SMOOTH_ABOVE:  # hundreds of noisy points: the raw line faint, its moving average on top
        window = len(loss) // 25
        ax.plot(steps, loss, color="black", linewidth=0.6, alpha=0.3)
        smooth = np.convolve(loss, np.ones(window) / window, mode="valid")
        ax.plot(steps[window - 1 :], smooth, label=f"loss (total), mean of {window} log lines", color="black")
    else:
        ax.plot(steps, loss, label="loss (total)", color="black", linewidth=1.6)
    for key, s, v in drawn:
        ax.plot(s, v, label=key.removeprefix("loss_"), linewidth=1.0)
    _step_axes(
        ax, "Training loss", "loss (mean over each logging window)", _log_scale_helps(loss, *(v for *_, v in drawn))
    )
    ax.legend(fontsize="small")
    named = ", ".join(k.removeprefix("loss_") for k in terms) or "none"
    return Section(
        "Training loss", save_figure(fig, out, "loss.png"), f"Total loss and its terms (logged terms: {named})."
    )


def plot_lr(training: list[dict[str, Any]], out: Path) -> Section:
    """The learning rate over steps (linear warmup, cosine decay: :mod:`mmssl.optim`)."""
    steps, lr = series(training, "lr")
    if not steps.size:
        return _missing("Learning rate", "lr")
    fig, ax = new_figure()
    ax[0, 0].plot(steps, lr, color="tab:blue")
    ax[0, 0].ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    _step_axes(ax[0, 0], "Learning rate schedule", "learning rate")
    return Section("Learning rate", save_figure(fig, out, "lr.png"), f"Peak {lr.max():.3g}, last {lr[-1]:.3g}.")


def plot_grad_norm(training: list[dict[str, Any]], out: Path, max_grad_norm: float = 0.0) -> Section:
    """The gradient norm before clipping over steps, with the clipping threshold ``train.max_grad_norm`` if any."""
    steps, norm = series(training, "grad_norm")
    if not steps.size:
        return _missing("Gradient norm", "grad_norm")
    fig, ax = new_figure()
    ax = ax[0, 0]
    ax.plot(steps, norm, color="tab:red", linewidth=1.0, label="global L2 norm")
    if max_grad_norm > 0:
        ax.axhline(max_grad_norm, color="gray", linestyle="--", label=f"clipping at {max_grad_norm:g}")
        ax.legend(fontsize="small")
    log = _log_scale_helps(norm)
    _step_axes(ax, "Gradient norm (before clipping)", "L2 norm of all gradients", log)
    text = "Mean over the optimizer steps of each logging window."
    return Section("Gradient norm", save_figure(fig, out, "grad_norm.png"), text)


def _unit_key(training: list[dict[str, Any]]) -> str:
    """``<unit>_per_s`` of a domain whose units are not tokens (``patches_per_s``), else ``tokens_per_s``."""
    keys = {k for r in training for k in r if k.endswith("_per_s")} - {"samples_per_s", "tokens_per_s"}
    return sorted(keys)[0] if keys else "tokens_per_s"


def plot_throughput(training: list[dict[str, Any]], out: Path) -> Section:
    """Samples and units (tokens, patches, frames, nodes) per second over steps, two panels."""
    unit_key = _unit_key(training)
    unit = unit_key.removesuffix("_per_s")
    panels = [(k, label) for k, label in (("samples_per_s", "samples / s"), (unit_key, f"{unit} / s"))]
    panels = [(label, *series(training, k)) for k, label in panels if series(training, k)[0].size]
    if not panels:
        return _missing("Throughput", "samples_per_s")
    fig, axes = new_figure(len(panels), 1, (7.0, 2.6 * len(panels) + 0.6))
    for ax, (label, steps, rate) in zip(axes[:, 0], panels):
        ax.plot(steps, rate, color="tab:green")
        ax.set_ylim(bottom=0)
        _step_axes(ax, f"Throughput: {label}", label)
    tail = panels[-1][2][1:] if panels[-1][2].size > 1 else panels[-1][2]
    text = f"All processes together. Median {np.median(tail):,.0f} {panels[-1][0]} after the first logging window."
    return Section("Throughput", save_figure(fig, out, "throughput.png"), text)


def monitor_keys(training: list[dict[str, Any]]) -> list[str]:
    """The numeric keys that are neither the loop's, a loss nor a throughput: the monitor's values
    (``knn_accuracy``) and the objective's diagnostics (``mlm_accuracy``, ``embedding_std``, ...)."""
    keys = {k for r in training for k, v in r.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return sorted(k for k in keys - LOOP_KEYS if not k.startswith("loss") and not k.endswith("_per_s"))


def plot_monitors(training: list[dict[str, Any]], out: Path) -> Section:
    """Every monitor and diagnostic over steps, one panel each (their scales differ)."""
    keys = [k for k in monitor_keys(training) if series(training, k)[0].size]
    if not keys:
        return Section("Monitors and diagnostics", None, "no monitor (`knn_accuracy`) or diagnostic in metrics.jsonl")
    cols = min(3, len(keys))
    rows = math.ceil(len(keys) / cols)
    fig, axes = new_figure(rows, cols, (4.2 * cols, 3.0 * rows + 0.4))
    last = max(r["step"] for r in training)
    for ax, key in zip(axes.flat, keys):
        steps, values = series(training, key)
        ax.plot(steps, values, marker="o" if len(steps) < 30 else None, markersize=3)
        ax.set_xlim(0, last * 1.02)  # every panel spans the run, so a monitor's sparse points line up
        _step_axes(ax, key, key.replace("_", " "))
    for ax in list(axes.flat)[len(keys) :]:
        ax.set_visible(False)
    text = (
        f"Drawn: {', '.join(keys)}. The online monitor (`knn_accuracy`) runs every `monitor.every` steps; the "
        "objective's diagnostics are means over each logging window."
    )
    return Section("Monitors and diagnostics", save_figure(fig, out, "monitors.png"), text)


def plot_finetunes(finetunes: dict[str, list[dict[str, Any]]], out: Path) -> Section:
    """Each fine-tune folder's training loss over its steps and, where it logged one, its validation accuracy at
    each epoch's end (``val_accuracy``: the fine-tune keeps its best epoch), one line per folder."""
    named = [(name, records) for name, records in finetunes.items() if series(records, "loss")[0].size]
    if not named:
        return Section("Fine-tuning", None, "no fine-tune folder with a logged loss (RUN/finetune/*/)")
    validated = any(series(records, "val_accuracy")[0].size for _, records in named)
    panels = [("loss", "Training loss", "cross-entropy (mean over each logging window)")]
    panels += [("val_accuracy", "Validation accuracy at each epoch's end", "accuracy")] if validated else []
    fig, axes = new_figure(1, len(panels), (6.0 * len(panels), 4.2))
    for ax, (key, title, ylabel) in zip(axes[0], panels):
        drawn = [(name, *series(records, key)) for name, records in named]
        for name, steps, values in drawn:
            ax.plot(steps, values, label=name, marker="o" if key != "loss" else None, markersize=3)
        _step_axes(ax, title, ylabel, key == "loss" and _log_scale_helps(*(v for *_, v in drawn)))
    axes[0, -1].set_xlim(axes[0, 0].get_xlim())  # both panels on one step axis
    axes[0, -1].legend(fontsize="x-small", ncol=1 + len(named) // 10)
    text = f"{len(named)} fine-tune folder(s) under RUN/finetune/."
    return Section("Fine-tuning", save_figure(fig, out, "finetune.png"), text)


# ---------------------------------------------------------------------------- results
# The settings that tell one result record from another; a record that repeats a setting with another ``seed``
# is another draw of it (a mean and a spread), one with the same seed replaces the earlier record (a rerun).
RESULT_SETTINGS = ("event", "protocol", "task", "init", "baseline", "labels_per_class", "label_fraction")
INIT_COLOURS = {"pretrained": "tab:blue", "random": "tab:orange", "raw": "tab:gray"}


@dataclass(frozen=True)
class ResultRow:
    """One setting's score over its seeds: ``mean``, sample standard deviation ``sd`` (0 for one seed), ``n`` seeds."""

    task: str
    protocol: str
    init: str
    features: str
    budget: str
    metric: str
    mean: float
    sd: float
    n: int
    n_test: int | None


def _budget(record: dict[str, Any]) -> str:
    if record.get("labels_per_class") is not None:
        return f"{record['labels_per_class']} per class"
    if record.get("label_fraction") is not None:
        return f"{100 * record['label_fraction']:g}%"
    return "all"


def _scores(record: dict[str, Any]) -> list[str]:
    """The record's scores: ``accuracy``, or a retrieval's recall@k both ways (not their chance levels)."""
    if "accuracy" in record:
        return ["accuracy"]
    return sorted(k for k in record if "recall@" in k and not k.startswith("chance"))


def result_rows(results: list[dict[str, Any]]) -> list[ResultRow]:
    """Each setting and score of the result records (one record per setting and seed), in order of appearance."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in results:
        for metric in _scores(r):
            groups.setdefault((*(r.get(k) for k in RESULT_SETTINGS), metric), []).append(r)
    rows = []
    for key, records in groups.items():
        values = np.array([_value(r[key[-1]]) for r in records])
        first = records[0]
        init = str(first.get("init", "pretrained"))
        rows.append(
            ResultRow(
                task=str(first.get("task")),
                protocol=str(first.get("protocol", first["event"])),
                init=init,
                features=f"raw {first['baseline']}" if first.get("baseline") else init,
                budget=_budget(first),
                metric=key[-1],
                mean=float(np.nanmean(values)) if np.isfinite(values).any() else math.nan,
                sd=float(np.nanstd(values, ddof=1)) if np.isfinite(values).sum() > 1 else 0.0,
                n=len(records),
                n_test=first.get("n_test"),
            )
        )
    return rows


def plot_results(results: list[dict[str, Any]], out: Path) -> Section:
    """Probe, evaluate and fine-tune scores as horizontal bars, error bars = sd over seeds where there are several."""
    rows = [row for row in result_rows(results) if math.isfinite(row.mean)]
    if not rows:
        return Section("Downstream results", None, "no evaluate or fine-tune result in metrics.jsonl")
    fig, ax = new_figure(size=(8.0, 0.45 * len(rows) + 1.6))
    ax = ax[0, 0]
    y = np.arange(len(rows))[::-1]
    labels = [
        f"{r.task} · {r.protocol} · {r.features} · {r.budget}" + ("" if r.metric == "accuracy" else f" · {r.metric}")
        for r in rows
    ]
    ax.barh(y, [r.mean for r in rows], color=[INIT_COLOURS.get(r.init, "tab:purple") for r in rows], height=0.6)
    spread = [(yi, r) for yi, r in zip(y, rows) if r.n > 1]
    if spread:
        at, seeds = zip(*spread)
        ax.errorbar([r.mean for r in seeds], at, xerr=[r.sd for r in seeds], fmt="none", ecolor="black", capsize=4)
    for yi, r in zip(y, rows):
        spread = f" ± {r.sd:.3f} ({r.n} seeds)" if r.n > 1 else ""
        ax.text(min(r.mean + (r.sd if r.n > 1 else 0) + 0.01, 1.0), yi, f"{r.mean:.3f}{spread}", va="center")
    ax.set_yticks(y, labels, fontsize="small")
    ax.set_xlim(0, 1.25)
    ax.set_xticks(np.linspace(0, 1, 6))
    ax.set_xlabel("test score (accuracy; recall@k for retrieval)")
    ax.set_title("Downstream results (task · protocol · features · labels)")
    ax.grid(True, axis="x", alpha=0.3)
    text = "Bars: the mean over seeds; error bars: the standard deviation over seeds where a setting has several."
    return Section("Downstream results", save_figure(fig, out, "results.png"), text)
