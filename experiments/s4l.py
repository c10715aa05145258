"""S4L-Rotation against the supervised baseline on the same labels: does rotation prediction on every image help a
classifier trained on 1% or 10% of Fashion-MNIST's labels?

For each label budget (``--labels``, labels per class: 60 is 1% of Fashion-MNIST's training labels, 600 is 10%) and
each seed, this script pretrains the ``s4l`` recipe twice for the same fixed number of steps (``mmssl pretrain`` in
this process): S4L (``objective.rotation_weight=1``, the paper's) and the supervised baseline
(``objective.rotation_weight=0``: the same network, steps, seed, labelled subset and labelled minibatches, trained on
those labels alone). It then scores the trained classifier head of each run on the task's test images (Fashion-MNIST:
the 10,000 of the test split; the labelled subset is drawn from the train split) and compares the two arms: McNemar's
exact test per seed on the shared test rows and a paired t-test over seeds (:func:`mmssl.stats.compare_over_seeds`).

Results go to ``OUT/results.json`` (every run: wall time, steps, labelled-subset fingerprint, test accuracy; and the
comparison per budget) and the Markdown table ``OUT/results.md``; ``--report-only`` rebuilds both from the runs'
saved test outcomes. The last line printed is one JSON object with every figure.

Usage::

    flock /tmp/mmssl-cpu.lock python experiments/s4l.py --out runs/s4l        # 2 budgets x 3 seeds x 2 arms
    python experiments/s4l.py --report-only --out runs/s4l                    # rebuild the table
    python experiments/s4l.py --data fashion-mnist-small --labels 2 --seeds 0 --steps 3 --out /tmp/q \\
        --set encoder.resnet_width=4 --set data.labelled_batch_size=4 --set train.batch_size=8   # smoke run

Needs ``mmssl data prepare fashion-mnist`` (``fashion-mnist-small`` ships with mmssl).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from mmssl.checkpoint import SUMMARY_FILE, latest_checkpoint
from mmssl.model import build_model, load_run_recipe, load_weights
from mmssl.pretrain import pretrain
from mmssl.registry import DOMAINS
from mmssl.stats import compare_over_seeds, seeds_table
from mmssl.tasks import TaskConfig
from mmssl.types import Extra

RECIPE = "s4l"
ARMS = {"s4l": 1.0, "supervised": 0.0}  # objective.rotation_weight of each arm; the first is the reference
ARM_NAMES = {"s4l": "S4L-Rotation (w=1)", "supervised": "supervised only (w=0)"}
OUTCOMES = "test_correct.npy"  # bool [M]: which test rows the run's classifier gets right


def run_dir(out: Path, per_class: int, seed: int, arm: str) -> Path:
    return Path(out) / f"{per_class}-per-class" / f"seed-{seed}" / arm


def train_arm(out: Path, per_class: int, seed: int, arm: str, steps: int, data: str, extra: list[str]) -> Path:
    """Pretrain one arm (``--overwrite``: a run of the same cell is replaced); returns its run directory."""
    overrides = [
        f"data.name={data}",
        f"data.labels_per_class={per_class}",
        f"objective.rotation_weight={ARMS[arm]}",
        f"train.seed={seed}",
        f"train.max_steps={steps}",
        f"train.checkpoint_every={steps}",
        *extra,
    ]
    return pretrain(RECIPE, overrides, run_dir(out, per_class, seed, arm), overwrite=True)


@torch.no_grad()
def test_outcomes(run: Path, task: str, batch_size: int = 500) -> np.ndarray:
    """``bool [M]``: which of the task's test images the run's final classifier head classifies right."""
    recipe = load_run_recipe(run)
    domain = DOMAINS.get(recipe.domain)
    processor = domain.load_processor(run)
    model = build_model(recipe, processor)
    load_weights(model, latest_checkpoint(run) / "model.safetensors")
    model.eval()
    config = TaskConfig(name=task)
    rows = domain.task_data(config).test
    loader = DataLoader(rows, batch_size=batch_size, collate_fn=domain.task_collate(processor, config))
    correct = [
        (model.objective.classify(model.encoder, batch).argmax(-1) == batch.extras[Extra.LABELS]).numpy()
        for batch in loader
    ]
    return np.concatenate(correct)


def run_record(run: Path, per_class: int, seed: int, arm: str, wall_s: float | None) -> dict[str, Any]:
    """What one run gives the table: its cell, wall time, labelled-subset fingerprint and test accuracy."""
    correct = np.load(run / OUTCOMES)
    summary = json.loads((run / SUMMARY_FILE).read_text())
    steps = int((latest_checkpoint(run) / "COMPLETE").read_text())
    return {
        "labels_per_class": per_class,
        "seed": seed,
        "arm": arm,
        "rotation_weight": ARMS[arm],
        "steps": steps,
        "wall_s": wall_s,
        "labelled_subset": summary["labelled_subset"],
        "labelled_images": summary["labelled_images"],
        "test_images": int(correct.size),
        "test_accuracy": float(correct.mean()),
    }


def compare(out: Path, records: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """Per label budget, :func:`mmssl.stats.compare_over_seeds` of the arms (S4L the reference), from the saved
    outcomes; refuses arms of one seed that did not train on the same labelled subset."""
    budgets: dict[int, dict[str, Any]] = {}
    for per_class in sorted({r["labels_per_class"] for r in records}):
        cell = [r for r in records if r["labels_per_class"] == per_class]
        seeds = sorted({r["seed"] for r in cell})
        for seed in seeds:
            subsets = {r["labelled_subset"] for r in cell if r["seed"] == seed}
            if len(subsets) != 1:
                raise ValueError(f"{per_class} per class, seed {seed}: the arms trained on different labelled subsets")
        correct = {arm: [np.load(run_dir(out, per_class, s, arm) / OUTCOMES) for s in seeds] for arm in ARMS}
        budgets[per_class] = {"seeds": seeds, "summary": compare_over_seeds(correct, reference=next(iter(ARMS)))}
    return budgets


def markdown(records: list[dict[str, Any]], budgets: dict[int, dict[str, Any]]) -> str:
    """The results as Markdown: one row per run, then each budget's comparison table."""
    lines = [
        "| labels per class | seed | arm | steps | wall s | test accuracy |",
        "|---:|---:|---|---:|---:|---:|",
    ]
    for r in records:
        wall = "-" if r["wall_s"] is None else f"{r['wall_s']:.0f}"
        lines.append(
            f"| {r['labels_per_class']} | {r['seed']} | {ARM_NAMES[r['arm']]} | {r['steps']} | {wall} "
            f"| {r['test_accuracy']:.4f} |"
        )
    n_test = records[0]["test_images"]
    for per_class, budget in budgets.items():
        title = f"{per_class} labels per class, {len(budget['seeds'])} seeds, {n_test} test images"
        lines += ["", "```", seeds_table(title, ARM_NAMES, budget["summary"], n_test), "```"]
    return "\n".join(lines) + "\n"


def write_report(out: Path, records: list[dict[str, Any]]) -> dict[str, Any]:
    """``OUT/results.json`` and ``OUT/results.md``; returns what the JSON holds."""
    budgets = compare(out, records)
    result = {"runs": records, "comparison": {str(k): v for k, v in budgets.items()}}
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "results.md").write_text(markdown(records, budgets))
    return result


def saved_records(out: Path) -> list[dict[str, Any]]:
    """The records of every run under ``out`` whose test outcomes were saved (``--report-only``)."""
    old = json.loads((out / "results.json").read_text())["runs"] if (out / "results.json").is_file() else []
    walls = {(r["labels_per_class"], r["seed"], r["arm"]): r["wall_s"] for r in old}
    records = []
    for path in sorted(out.glob(f"*-per-class/seed-*/*/{OUTCOMES}")):
        run = path.parent
        per_class, seed = int(run.parent.parent.name.split("-")[0]), int(run.parent.name.split("-")[1])
        records.append(run_record(run, per_class, seed, run.name, walls.get((per_class, seed, run.name))))
    return records


def run_all(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every budget x seed x arm: pretrain, score the test images, save the outcomes; the records."""
    records = []
    for per_class in args.labels:
        for seed in args.seeds:
            for arm in ARMS:
                start = time.perf_counter()
                run = train_arm(args.out, per_class, seed, arm, args.steps, args.data, args.set)
                wall = round(time.perf_counter() - start, 1)
                np.save(run / OUTCOMES, test_outcomes(run, args.data))
                records.append(run_record(run, per_class, seed, arm, wall))
                print(json.dumps(records[-1]), flush=True)
    return records


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--labels", type=int, nargs="+", default=[60, 600], help="labels per class (60: 1%%, 600: 10%%)"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=1000, help="optimizer steps of every run (the recipe's)")
    parser.add_argument("--data", default="fashion-mnist", help="a prepared image dataset that is also a task")
    parser.add_argument("--set", action="append", default=[], help="extra --set override of every run")
    parser.add_argument("--out", type=Path, default=Path("runs/s4l"))
    parser.add_argument("--report-only", action="store_true", help="rebuild results.json/md from the saved runs")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    records = saved_records(args.out) if args.report_only else run_all(args)
    result = write_report(args.out, records)
    print((args.out / "results.md").read_text())
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
