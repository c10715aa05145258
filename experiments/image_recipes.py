"""Image recipe quality at the CPU budget: pretrain each recipe, then probe its frozen encoder.

For every recipe named (default: all eight image recipes) this script

1. runs ``mmssl pretrain RECIPE`` with the recipe's own defaults (at most 10 minutes on this
   machine: ``train.max_minutes``) in a fresh process, and records the wall time and the step reached;
2. probes the exported encoder on the Fashion-MNIST test set (10,000 images) with the two
   protocols of ``mmssl evaluate``: a linear probe (logistic regression on standardised pooled
   features, all 60,000 training images) and a weighted kNN (k=200, T=0.07); ViT encoders
   trained by masked modelling (``mae``, ``data2vec_image``) are pooled by the mean of their
   patch tokens (``--set probe.pooling=mean``), the others by their own summary;
3. probes the same architecture from random weights (``init=random``) with the same protocols.

``--pooling mean_std`` (repeatable; ``default`` is the recipe's own pooling above) probes other
pooled features as well: ``mean_std`` concatenates the mean and the standard deviation of the
units (patch tokens, or the ResNet's final 4x4 feature map), a parameter-free statistics pooling
that keeps the spatial spread a mean averages away; ``grid`` average-pools the unit grid to 2x2 regions
(``probe.grid_cells``) and concatenates them, the convnet probe of Zhang et al. 2016 and Goyal et al. 2019.
Each pooling is its own row, pretrained and random init alike.

Once per output directory it also fits the same linear probe and kNN on raw pixels (784 values in
[0, 1]), the floor the issue asks every recipe to beat; both these and the random-encoder probes (one per
architecture and pooling) are cached there (``raw_pixels.json``, ``random_probes.json``).

Results go to ``OUT/results.jsonl`` (one line per probe), a Markdown table ``OUT/results.md``,
and a figure of the online kNN monitor against wall time (``--figure``, default
``docs/figures/image_recipes_knn.png``). The table and figure cover every recipe recorded in
``OUT``, the latest run of each, so recipes measured by separate invocations share one report
(``--report-only`` rebuilds them without training). The last line printed is one JSON object
with every figure.

Usage::

    python experiments/image_recipes.py                               # all recipes (~100 min)
    python experiments/image_recipes.py simclr byol mae               # the issue's quality check
    python experiments/image_recipes.py --skip-pretrain --pooling mean_std byol mae   # re-probe those runs
    python experiments/image_recipes.py rotation --set train.max_steps=20 --out /tmp/q   # smoke run

Run it on a quiet machine: the pretraining budget is wall time, so another busy process costs
the recipe steps and accuracy.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
from pretraining import pretrain

from mmssl.metrics import read_metrics
from mmssl.probes import fit_linear_predictions, knn_accuracy, probe_at_seed, probe_inputs
from mmssl.stats import format_p, paired_comparison
from mmssl.tasks import FinetuneConfig, TaskConfig

IMAGE_RECIPES = ["simclr", "moco", "byol", "simsiam", "barlow_twins", "vicreg", "mae", "rotation"]


# MAE-style encoders are probed on the mean of their patch tokens (He et al. 2022, sec. A.2: global
# average pooling); their [CLS] token is not trained by a pixel-reconstruction loss
POOLING = {"mae": "mean", "data2vec_image": "mean", "ijepa": "mean"}


def probes(run: Path, init: str, pooling: str = "auto") -> tuple[dict[str, float], np.ndarray]:
    """Linear-probe and kNN accuracy, and the linear probe's per-test-image outcomes (True: right) for paired tests."""
    cfg = FinetuneConfig(task=TaskConfig(name="fashion-mnist"), init=init)
    cfg = dataclasses.replace(cfg, probe=dataclasses.replace(cfg.probe, pooling=pooling))
    inputs = probe_inputs(run, cfg, None)  # the frozen features of all 70,000 images, once for both probes
    linear, knn = (probe_at_seed(protocol, inputs, cfg, cfg.train.seed) for protocol in ("linear", "knn"))
    correct = (linear.predictions == linear.labels).numpy()
    return {"linear": linear.record["accuracy"], "knn": knn.record["accuracy"]}, correct


def pixel_probes() -> tuple[dict[str, float], np.ndarray]:
    """The same linear probe and kNN on the image domain's raw features (pixels scaled to [0, 1])."""
    from domains.image.baselines import pixel_baseline
    from domains.image.builders import load_fashion_mnist

    raw = pixel_baseline(load_fashion_mnist("train"), load_fashion_mnist("test"))
    train, test = raw.train, raw.test
    linear, predictions = fit_linear_predictions(train, test, FinetuneConfig().probe)
    correct = predictions.numpy() == np.asarray(test[1])
    return {"linear": linear["accuracy"], "knn": knn_accuracy(train, test, num_classes=10)}, correct


def paired(correct: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """McNemar's exact test of the linear probe against a reference's on the same test images."""
    test = paired_comparison(correct, reference)
    return {"gain": test["gain"], "p_value": test["p_value"]}


def knn_curve(run: Path) -> tuple[list[float], list[float]]:
    """Online kNN monitor accuracy against minutes since the start of training."""
    rows = [r for r in read_metrics(run) if "knn_accuracy" in r]
    if not rows:
        return [], []
    return [r["elapsed_s"] / 60 for r in rows], [r["knn_accuracy"] for r in rows]


def plot(curves: dict[str, tuple[list[float], list[float]]], pixel_knn: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, (x, y) in curves.items():
        ax.plot(x, y, marker="o", markersize=3, label=name)
    ax.axhline(pixel_knn, color="grey", linestyle="--", label=f"raw pixels ({pixel_knn:.3f})")
    ax.set_xlabel("wall time (min, 2 CPU cores)")
    ax.set_ylabel("online kNN accuracy (2,000 test images)")
    ax.set_title("Fashion-MNIST image recipes: online kNN monitor")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def row_name(row: dict[str, Any]) -> str:
    """``recipe``, or ``recipe (pooling)`` for a pooling other than the recipe's own."""
    pooling = row.get("pooling", "auto")
    return row["model"] if pooling == POOLING.get(row["model"], "auto") else f"{row['model']} ({pooling})"


def latest_rows(results_path: Path) -> dict[str, dict[str, Any]]:
    """The latest recorded row of every recipe and pooling in ``results.jsonl`` (later runs replace
    earlier ones)."""
    rows: dict[str, dict[str, Any]] = {}
    if results_path.exists():
        for line in results_path.read_text().splitlines():
            row = json.loads(line)
            if row.get("model") != "raw pixels":
                rows[row_name(row)] = row
    return rows


def report(out: Path, pixels: dict[str, float], figure: Path) -> dict[str, Any]:
    """Table (``OUT/results.md``) and kNN-monitor figure of every recipe recorded in ``OUT``."""
    rows = latest_rows(out / "results.jsonl")
    models = dict.fromkeys(r["model"] for r in rows.values())  # one curve per run, whatever its poolings
    plot({m: knn_curve(out / m) for m in models}, pixels["knn"], figure)
    lines = [
        "| recipe | pooling | steps | wall time | linear (pretrained / random) | kNN (pretrained / random) "
        "| linear vs pixels (McNemar) |",
        "|---|---|---:|---:|---|---|---|",
    ]
    for r in rows.values():
        wall = f"{r['wall_s'] / 60:.1f} min" if "wall_s" in r else "-"
        lines.append(
            f"| {r['model']} | {r.get('pooling', 'auto')} | {r.get('steps', '-')} | {wall} | "
            f"{r['pretrained']['linear']:.4f} / "
            f"{r['random']['linear']:.4f} | {r['pretrained']['knn']:.4f} / {r['random']['knn']:.4f} | "
            + (
                f"{100 * r['vs_pixels']['gain']:+.2f} points, p {format_p(r['vs_pixels']['p_value'])} |"
                if "vs_pixels" in r
                else "- |"
            )
        )
    lines.append(f"| raw pixels | | | | {pixels['linear']:.4f} | {pixels['knn']:.4f} | |")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return {"raw_pixels": pixels, **rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("recipes", nargs="*", default=IMAGE_RECIPES)
    parser.add_argument("--out", type=Path, default=Path("runs/image-recipes"))
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override for every recipe, e.g. train.max_steps=20 for a smoke run",
    )
    parser.add_argument("--figure", type=Path, default=Path("docs/figures/image_recipes_knn.png"))
    parser.add_argument(
        "--pooling",
        action="append",
        choices=["default", "auto", "mean", "mean_std", "grid"],
        help="poolings to probe (repeatable); default: the recipe's own (mean for MAE-style ViTs)",
    )
    parser.add_argument("--skip-pretrain", action="store_true", help="probe existing runs in OUT only")
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="train and probe nothing: rebuild the table and figure from OUT's results",
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results_path = args.out / "results.jsonl"

    def record(row: dict[str, Any]) -> None:
        print(json.dumps(row), flush=True)
        with results_path.open("a") as f:
            f.write(json.dumps(row) + "\n")

    # the pixel probes take minutes and never change: cached with their per-image outcomes for paired tests
    pixels_path, pixels_correct_path = args.out / "raw_pixels.json", args.out / "raw_pixels_correct.npy"
    if pixels_path.exists() and pixels_correct_path.exists():
        pixels, pixels_correct = json.loads(pixels_path.read_text()), np.load(pixels_correct_path)
    else:
        pixels, pixels_correct = pixel_probes()
        pixels_path.write_text(json.dumps(pixels))
        np.save(pixels_correct_path, pixels_correct)
        record({"model": "raw pixels", **pixels})
    # a random encoder depends only on the architecture and the pooling (same seed): probed once per OUT, cached
    random_path = args.out / "random_probes.json"
    random_probes: dict[str, dict[str, float]] = json.loads(random_path.read_text()) if random_path.exists() else {}
    for recipe in [] if args.report_only else args.recipes:
        run = args.out / recipe
        if args.skip_pretrain:  # keep the pretraining figures recorded for the run being re-probed
            info = {
                k: v
                for k, v in latest_rows(results_path).get(recipe, {}).items()
                if k in ("wall_s", "steps", "final_loss")
            }
        else:
            info = pretrain(recipe, run, args.set)
        for pooling in dict.fromkeys(
            POOLING.get(recipe, "auto") if p == "default" else p for p in args.pooling or ["default"]
        ):
            arch = (run / "export" / "config.json").read_text() + pooling
            random_correct_path = args.out / f"random_{hashlib.sha1(arch.encode()).hexdigest()[:12]}_correct.npy"
            if arch not in random_probes:
                random_probes[arch], random_correct = probes(run, "random", pooling)
                random_path.write_text(json.dumps(random_probes))
                np.save(random_correct_path, random_correct)
            pretrained, correct = probes(run, "pretrained", pooling)
            tests = {"vs_pixels": paired(correct, pixels_correct)}  # the linear probes, McNemar
            if random_correct_path.exists():
                tests["vs_random"] = paired(correct, np.load(random_correct_path))
            record(
                {"model": recipe, **info, "pooling": pooling, "pretrained": pretrained, "random": random_probes[arch]}
                | tests
            )
    # the table and figure cover every recipe recorded in OUT, so several invocations build one report
    print(json.dumps(report(args.out, pixels, args.figure)))


if __name__ == "__main__":
    main()
