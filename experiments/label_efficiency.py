"""Label efficiency: does a pretrained encoder need fewer labels than random weights or the raw features?

For each modality named (default: all four) this script

1. pretrains the modality's study recipe (``STUDIES``: the recipe that does best in the docs at the CPU budget,
   with a fixed number of steps) with ``mmssl pretrain`` in a fresh process, recording wall time and steps
   (``--run MODALITY=DIR`` probes an existing run instead, ``--skip-pretrain`` the one already in ``OUT``);
2. computes the frozen features of the task's training and test rows once per init: the pretrained encoder,
   the same architecture from random weights (drawn once, ``train.seed`` 0) and the domain's raw-feature
   baseline (pixels, MFCC statistics, TF-IDF, propagated node features: ``DownstreamDomain.raw_features``);
3. fits the linear probe of ``mmssl evaluate --protocol linear`` (logistic regression on standardised
   features) on 1%, 10% and 100% of every class's training rows (``task.label_fraction``; stratified,
   seeded, nested; the test split untouched), three seeds per budget below 100% (each draws its own subset;
   at 100% every seed fits the same rows, so one is fitted), and scores every fit on the same test rows;
4. compares the pretrained encoder with each baseline at each budget: McNemar's exact test per seed on the
   shared test rows and a paired t-test of the per-seed accuracies (:func:`mmssl.stats.compare_over_seeds`).

Results go to ``OUT/results.jsonl`` (one line per modality and budget; later lines replace earlier ones), a
Markdown table ``OUT/results.md`` and a figure (``--figure``, default ``docs/figures/label_efficiency.png``):
one panel per modality, test accuracy against the number of training labels on a log axis, one line per init,
error bars one standard deviation over the seeds. ``--report-only`` rebuilds both from ``OUT``. The last line
printed is one JSON object with every figure.

Usage::

    python experiments/label_efficiency.py                    # all four modalities (~50 min on 2 CPU cores)
    python experiments/label_efficiency.py image --run image=runs/vicreg-small   # probe an existing run
    python experiments/label_efficiency.py --report-only      # rebuild the table and figure
    python experiments/label_efficiency.py image --set train.max_steps=5 --out /tmp/q   # smoke run

The pretraining is a fixed number of steps, so a busy machine costs time, not accuracy. The audio and graph
studies need ``mmssl data prepare kws`` and ``mmssl data prepare wordnet-graph``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
from pretraining import pretrain

from mmssl.probes import ProbeInputs, probe_at_seed, probe_inputs
from mmssl.stats import compare_over_seeds, format_p
from mmssl.tasks import FinetuneConfig, ProbeConfig, TaskConfig


@dataclasses.dataclass(frozen=True)
class Study:
    """One modality's study: the recipe, the settings it is pretrained with, the task and the probe's pooling."""

    recipe: str
    task: str
    overrides: tuple[str, ...] = ()
    pooling: str = "auto"
    note: str = ""


# The recipes that do best at the CPU budget in docs/recipes.md, docs/audio.md and docs/graphs.md, at a fixed
# number of steps that fits about 10 minutes on this 2-core machine (AVX2, fp32).
STUDIES = {
    "image": Study(
        "vicreg",
        "fashion-mnist-small",
        ("data.name=fashion-mnist-small", "train.max_steps=450", "train.batch_size=128", "data.crop_scale=[0.5,1.0]"),
        note="the README's first command: VICReg on the 10,000 embedded training images",
    ),
    "audio": Study(
        "tera",
        "kws",
        ("data.name=kws", "train.max_steps=500"),
        pooling="mean_std",
        note="TERA on the KWS training clips (labels unused), statistics pooling as the MFCC baseline",
    ),
    "graph": Study("graphmae", "wordnet-graph", ("train.max_steps=500",), note="GraphMAE on the WordNet noun graph"),
    "text": Study("bert", "rotten-tomatoes", (), note="the bert recipe on the embedded Austen corpus"),
}
BUDGETS = (0.01, 0.1, 1.0)  # task.label_fraction
INITS = {"pretrained": "pretrained init", "random": "random init", "raw": "raw features"}


def budget_curve(inputs: dict[str, ProbeInputs], cfg: FinetuneConfig, fraction: float, seeds: int) -> dict[str, Any]:
    """Every init's linear probe at ``fraction`` of the labels over ``seeds`` seeds (one at 100%), compared with
    the pretrained init; also the number of training labels of each seed."""
    task = dataclasses.replace(cfg.task, label_fraction=fraction)
    correct: dict[str, list[np.ndarray]] = {name: [] for name in INITS.values()}
    n_train = []
    for seed in range(seeds if fraction < 1 else 1):
        for init, name in INITS.items():
            result = probe_at_seed("linear", inputs[init], dataclasses.replace(cfg, task=task, init=init), seed)
            correct[name].append((result.predictions == result.labels).numpy())
        n_train.append(result.record["n_train"])
    return {"label_fraction": fraction, "n_train": n_train, "summary": compare_over_seeds(correct, "pretrained init")}


def study(modality: str, run: Path, seeds: int) -> list[dict[str, Any]]:
    """The modality's budget curves on ``run``'s export, one record per budget."""
    spec = STUDIES[modality]
    cfg = FinetuneConfig(task=TaskConfig(name=spec.task), probe=ProbeConfig(pooling=spec.pooling))
    inputs = {init: probe_inputs(run, dataclasses.replace(cfg, init=init), None) for init in INITS}
    records = []
    for fraction in BUDGETS:
        curve = budget_curve(inputs, cfg, fraction, seeds)
        records.append({"modality": modality, "recipe": spec.recipe, "task": spec.task, "run": str(run), **curve})
        print(json.dumps({k: v for k, v in records[-1].items() if k != "summary"}), flush=True)
    return records


def latest(results_path: Path) -> dict[tuple[str, float], dict[str, Any]]:
    """The latest record of every (modality, budget) in ``results.jsonl``."""
    rows: dict[tuple[str, float], dict[str, Any]] = {}
    if results_path.exists():
        for line in results_path.read_text().splitlines():
            row = json.loads(line)
            rows[row["modality"], row["label_fraction"]] = row
    return rows


def _cell(summary: dict[str, Any], name: str) -> str:
    row = summary[name]
    sd = f" ± {row['sd']:.3f}" if row["sd"] is not None else ""
    cell = f"{row['mean']:.3f}{sd}"
    if "vs_reference" in row:  # the paired t-test over seeds; McNemar's test where one seed was fitted (100%)
        p = row["vs_reference"]["over_seeds"]["p_value"]
        test, p = ("p", p) if p is not None else ("McNemar p", row["vs_reference"]["mcnemar_p_median"])
        cell += f" ({test} {format_p(p)})"
    return cell


def table(rows: dict[tuple[str, float], dict[str, Any]]) -> str:
    """Markdown: per modality and budget, the mean ± sd of each init and the p of pretrained against it (the paired
    t-test over seeds, or McNemar's exact test on the shared test rows where one seed was fitted)."""
    lines = [
        "| modality (recipe, task) | labels | " + " | ".join(INITS.values()) + " |",
        "|---|---|" + "---|" * len(INITS),
    ]
    for (modality, fraction), row in sorted(rows.items(), key=lambda kv: (list(STUDIES).index(kv[0][0]), kv[0][1])):
        labels = f"{fraction:.0%} ({int(np.median(row['n_train'])):,})"
        cells = " | ".join(_cell(row["summary"], name) for name in INITS.values())
        lines.append(f"| {modality} ({row['recipe']}, {row['task']}) | {labels} | {cells} |")
    return "\n".join(lines) + "\n"


def plot(rows: dict[tuple[str, float], dict[str, Any]], path: Path) -> None:
    """One panel per modality: accuracy against training labels (log axis), one line per init, sd error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modalities = [m for m in STUDIES if any(key[0] == m for key in rows)]
    fig, axes = plt.subplots(1, len(modalities), figsize=(4.2 * len(modalities), 3.8), squeeze=False)
    for ax, modality in zip(axes[0], modalities):
        points = sorted((f, r) for (m, f), r in rows.items() if m == modality)
        x = [float(np.median(r["n_train"])) for _, r in points]
        for name in INITS.values():
            mean = [r["summary"][name]["mean"] for _, r in points]
            sd = [r["summary"][name]["sd"] or 0.0 for _, r in points]
            ax.errorbar(x, mean, yerr=sd, marker="o", markersize=4, capsize=3, label=name)
        ax.set_xscale("log")
        ax.set_xlabel("training labels (1%, 10%, 100%)")
        ax.set_ylabel("test accuracy (linear probe)")
        ax.set_title(f"{modality}: {points[0][1]['recipe']} on {points[0][1]['task']}", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def report(out: Path, figure: Path) -> dict[str, Any]:
    """Table (``OUT/results.md``) and figure of every record in ``OUT/results.jsonl``."""
    rows = latest(out / "results.jsonl")
    if not rows:
        raise SystemExit(f"no results in {out / 'results.jsonl'}: run the study first")
    (out / "results.md").write_text(table(rows))
    plot(rows, figure)
    print(table(rows))
    return {
        f"{m} {f:.0%}": {name: round(r["summary"][name]["mean"], 4) for name in INITS.values()}
        for (m, f), r in rows.items()
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("modalities", nargs="*", metavar="MODALITY", help=f"{', '.join(STUDIES)} (default: all)")
    parser.add_argument("--out", type=Path, default=Path("runs/label-efficiency"))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--run", action="append", default=[], metavar="MODALITY=DIR", help="probe this run")
    parser.add_argument("--skip-pretrain", action="store_true", help="probe the runs already in OUT")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="pretraining override")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--figure", type=Path, default=Path("docs/figures/label_efficiency.png"))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    unknown = sorted(set(args.modalities) - set(STUDIES))
    if unknown:
        raise SystemExit(f"unknown modality {', '.join(unknown)}; choose from {', '.join(STUDIES)}")
    runs = dict(item.split("=", 1) for item in args.run)
    args.out.mkdir(parents=True, exist_ok=True)
    for modality in [] if args.report_only else args.modalities or list(STUDIES):
        run = Path(runs.get(modality, args.out / modality))
        if modality not in runs and not args.skip_pretrain:
            spec = STUDIES[modality]
            trained = pretrain(spec.recipe, run, [*spec.overrides, *args.set])
            print(json.dumps({"modality": modality, "recipe": spec.recipe, **trained}), flush=True)
        with open(args.out / "results.jsonl", "a") as f:
            for record in study(modality, run, args.seeds):
                f.write(json.dumps(record) + "\n")
    print(json.dumps(report(args.out, args.figure)))


if __name__ == "__main__":
    main()
