"""The feature map of ``mmssl report``: a 2-D t-SNE of an export's frozen features of a labelled split, coloured
by label.

Method (:data:`METHOD`, also written under the figure): the export's frozen encoder gives the pooled features
(:func:`mmssl.probes.extract_features` with ``probe.pooling``) of a stratified sample of about
:data:`MAP_POINTS` rows of the task's test split, drawn with seed :data:`MAP_SEED` (:func:`map_rows`); PCA reduces them to
:data:`PCA_DIMS` dimensions, and t-SNE (van der Maaten & Hinton 2008, scikit-learn's ``TSNE``: perplexity 30,
PCA initialisation, learning rate ``auto``, the same seed) maps them to two. The encoder, scikit-learn and
matplotlib are imported when a map is drawn.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from mmssl.report_figures import Section
from mmssl.tasks import FinetuneConfig, TaskConfig, export_domain, label_subset, subset_rows

log = logging.getLogger(__name__)

TITLE = "Frozen features (t-SNE)"
MAP_POINTS = 2000  # t-SNE takes seconds at this size on 2 CPU cores and shows the structure of the classes
MIN_POINTS = 10
LEGEND_CLASSES = 40  # distinct colours and a legend up to this many classes
MAP_SEED = 0
PCA_DIMS = 50  # scikit-learn's TSNE docs: reduce to ~50 dimensions first (the paper used 30); fast and denoised
PERPLEXITY = 30.0  # scikit-learn's default; lowered to (n - 1) / 3 for fewer than 91 rows
METHOD = (
    "Method: the export's frozen encoder's pooled features (`probe.pooling`) of a stratified sample of the task's "
    "test rows (seed {seed}), reduced to {pca} dimensions by PCA, then mapped to 2-D by t-SNE (scikit-learn "
    "`TSNE`, perplexity {perplexity:.3g}, PCA initialisation, seed {seed}). t-SNE keeps neighbourhoods, not "
    "distances: classes that form separate groups are separable in the features; the sizes of the groups and "
    "the gaps between them mean little."
)


def map_rows(labels: np.ndarray, max_points: int, seed: int = MAP_SEED) -> np.ndarray:
    """Sorted indices of about ``max_points`` of the rows whose labels are ``labels [N]`` (all of them if fewer):
    the stratified, seeded subset a label budget of that fraction keeps (:func:`mmssl.tasks.label_subset`)."""
    if max_points >= len(labels):
        return np.arange(len(labels))
    return label_subset(labels, TaskConfig(label_fraction=max_points / len(labels)), seed)


def perplexity(n: int) -> float:
    """t-SNE's perplexity for ``n`` rows: :data:`PERPLEXITY`, or ``(n - 1) / 3`` when that is smaller (scikit-learn
    needs it below ``n``; 3 perplexities is the neighbourhood its nearest-neighbour search covers)."""
    return min(PERPLEXITY, (n - 1) / 3)


def tsne_map(features: np.ndarray, seed: int = MAP_SEED) -> np.ndarray:
    """``[N, 2]`` t-SNE coordinates of ``[N, D]`` features, after PCA to :data:`PCA_DIMS` dimensions."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    x = np.asarray(features, dtype=np.float64)
    if x.shape[1] > PCA_DIMS and len(x) > PCA_DIMS:
        x = PCA(n_components=PCA_DIMS, random_state=seed).fit_transform(x)
    tsne = TSNE(n_components=2, perplexity=perplexity(len(x)), init="pca", learning_rate="auto", random_state=seed)
    # One OpenMP thread: with torch loaded, the Barnes-Hut gradient's threads slow it down up to 50x on a busy
    # machine (150 rows: 78 s instead of 1.7 s on 2 shared cores); 2,000 rows take seconds on one thread.
    with threadpool_limits(1, user_api="openmp"):
        return tsne.fit_transform(x)


def _colours(k: int) -> list[Any]:
    """``k`` distinct colours: tab10, tab20, tab20 then tab20b up to :data:`LEGEND_CLASSES`, else samples of turbo."""
    from matplotlib import colormaps

    qualitative = [colormaps["tab10"](i) for i in range(10)] if k <= 10 else []
    qualitative = qualitative or [colormaps[name](i) for name in ("tab20", "tab20b") for i in range(20)]
    if k <= len(qualitative):
        return qualitative[:k]
    return [colormaps["turbo"](i / (k - 1)) for i in range(k)]


def _draw(xy: np.ndarray, labels: np.ndarray, names: list[str], title: str, out: Path) -> str:
    """Scatter ``xy [N, 2]`` coloured by ``labels [N]`` (a legend of ``names`` up to :data:`LEGEND_CLASSES`, in two
    columns beyond 20) into ``feature_map.png``."""
    from mmssl.report_figures import new_figure, save_figure

    fig, ax = new_figure(size=(8.0 if len(names) <= 20 else 9.5, 6.0))
    ax = ax[0, 0]
    colours = _colours(len(names))
    size = 8 if len(xy) > 500 else 20
    for k, name in enumerate(names):
        at = labels == k
        if at.any():
            ax.scatter(xy[at, 0], xy[at, 1], s=size, color=colours[k], label=f"{name} ({at.sum()})", alpha=0.8)
    if len(names) <= LEGEND_CLASSES:
        small = "small" if len(names) <= 20 else "x-small"
        ax.legend(fontsize=small, markerscale=1.5, loc="center left", bbox_to_anchor=(1.01, 0.5), title="label",
                  ncol=1 if len(names) <= 20 else 2)  # fmt: skip
    ax.set_title(title)
    ax.set_xlabel("t-SNE dimension 1 (no unit)")
    ax.set_ylabel("t-SNE dimension 2 (no unit)")
    ax.set_xticks([])
    ax.set_yticks([])
    return save_figure(fig, out, "feature_map.png")


def plot_feature_map(run_dir: Path, cfg: FinetuneConfig, out: Path, max_points: int = MAP_POINTS) -> Section:
    """Load the run's export (exporting it first if needed) and draw the t-SNE map of ``cfg.task``'s test rows."""
    from mmssl.probes import extract_features, frozen_setup

    start = time.perf_counter()
    setup = frozen_setup(run_dir, cfg, None)
    names = list(setup.data.label_names)
    if not names:
        return Section(TITLE, None, f"task {cfg.task.name} has no class labels (a paired task)")
    labels = export_domain(setup.export_dir, None, cfg.task).task_labels(setup.data.test)
    keep = map_rows(labels, max_points)
    if len(keep) < MIN_POINTS:
        return Section(TITLE, None, f"task {cfg.task.name} has {len(keep)} test rows; t-SNE needs {MIN_POINTS}")
    rows = subset_rows(setup.data.test, keep)
    features, sampled = extract_features(
        setup.encoder, rows, setup.collate, cfg.probe.batch_size, cfg.probe.pooling, grid_cells=cfg.probe.grid_cells
    )
    log.info("feature map: t-SNE of %d x %d features of %s", *features.shape, cfg.task.name)
    xy = tsne_map(features.numpy())
    title = f"{cfg.task.name}: {len(keep):,} of {len(labels):,} test rows\nfrozen features (probe.pooling={cfg.probe.pooling})"
    file = _draw(xy, sampled.numpy(), names, title, out)
    log.info("feature map drawn in %.1f s", time.perf_counter() - start)
    text = f"{len(names)} classes. " + METHOD.format(seed=MAP_SEED, pca=PCA_DIMS, perplexity=perplexity(len(keep)))
    return Section(
        TITLE, file, text + ("" if len(names) <= LEGEND_CLASSES else " Colours follow the label order (no legend).")
    )
