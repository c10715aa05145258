"""Frozen-feature probes shared by every domain: pooled features of a frozen encoder, the weighted kNN
classifier, logistic regression (``--protocol linear``), cross-modal retrieval recall (``--protocol
retrieval``), and the online kNN monitor that logs to ``metrics.jsonl`` during pretraining.

The linear and kNN probes also read a domain's raw-feature baseline instead of an encoder (``init=raw``:
:meth:`mmssl.domain.DownstreamDomain.raw_features`, pixels, MFCC statistics, propagated node features,
TF-IDF), on the same rows and labels, so every probe is compared against the same floor. With a label budget
(``task.labels_per_class`` / ``task.label_fraction``) the features are computed once and each seed's probe is
fitted on the training rows that seed's subset keeps (:func:`budgeted_features`); the test rows stay whole.

Fine-tuning, which trains the encoder, is :mod:`mmssl.finetune`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from accelerate.utils import set_seed
from torch import Tensor
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from mmssl.domain import TaskData
from mmssl.encoder import Encoder
from mmssl.export import resolve_export
from mmssl.metrics import append_metrics
from mmssl.objectives.clip import ClipHeads, two_towers
from mmssl.recipe import MonitorConfig
from mmssl.tasks import (
    FinetuneConfig,
    ProbeConfig,
    TaskConfig,
    budget_record,
    check_init,
    check_label_budget,
    export_domain,
    has_label_budget,
    label_subset,
)
from mmssl.types import Batch, Extra

log = logging.getLogger(__name__)


@torch.no_grad()
def extract_features(
    encoder: Encoder,
    rows: Any,
    collate: Callable[[list[Any]], Batch],
    batch_size: int = 256,
    pooling: str = "auto",
    progress: bool = False,
    grid_cells: int = 2,
) -> tuple[Tensor, Tensor]:
    """``(features [N, D] float32 on CPU, labels [N])``: the encoder's pooled output in eval mode.

    ``pooling``: ``auto`` is :meth:`EncoderOutput.pooled` (the backbone's own summary, e.g. ViT's
    [CLS], else the mean over units); ``mean`` always averages the units (MAE's linear probe uses
    global average pooling of the patch tokens, He et al. 2022, sec. A.2); ``mean_std`` concatenates
    the mean and standard deviation over the units (:meth:`EncoderOutput.pooled_statistics`,
    statistics pooling as in speaker and keyword models); ``grid`` average-pools an image encoder's unit grid
    to ``grid_cells x grid_cells`` regions and concatenates them (:meth:`EncoderOutput.pooled_grid`).

    The encoder's train/eval mode is restored afterwards, so the monitor can call it mid-training.
    ``progress`` shows a progress bar (the frozen-feature probes; not the online monitor).
    """
    was_training = encoder.training
    encoder.eval()
    device = next(encoder.parameters()).device
    feats, labels = [], []
    try:
        loader = DataLoader(rows, batch_size=batch_size, collate_fn=collate)
        for batch in tqdm(loader, desc="extract features", unit="batch", disable=not progress, dynamic_ncols=True):
            out = encoder.encode(batch.to(device))
            if pooling == "mean_std":
                pooled = out.pooled_statistics()
            elif pooling == "grid":
                pooled = out.pooled_grid(grid_cells)
            else:
                pooled = out.pooled() if pooling == "auto" else replace(out, summary=None).pooled()
            feats.append(pooled.float().cpu())
            labels.append(batch.extras[Extra.LABELS].cpu())
    finally:
        encoder.train(was_training)
    return torch.cat(feats), torch.cat(labels)


@torch.no_grad()
def knn_predict(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    num_classes: int,
    k: int = 200,
    temperature: float = 0.07,
    chunk_size: int = 1024,
) -> Tensor:
    """Weighted kNN (Wu et al. 2018, InstDisc): each of the ``k`` most cosine-similar training
    samples votes for its class with weight ``exp(similarity / temperature)``.

    Args:
        train_features: ``[N, D]``; train_labels: ``[N]`` in ``0..num_classes-1``.
        test_features: ``[M, D]``.
        k: neighbours (capped at ``N``); temperature: vote sharpness (0.07 in InstDisc).
        chunk_size: test rows per similarity block (bounds memory to ``chunk_size x N``).

    Returns:
        ``[M]`` predicted labels.
    """
    if k < 1 or temperature <= 0:
        raise ValueError(f"kNN needs k >= 1 and temperature > 0, got k={k}, temperature={temperature}")
    train = F.normalize(train_features.float(), dim=1)
    k = min(k, train.shape[0])
    preds = []
    for start in range(0, test_features.shape[0], chunk_size):
        test = F.normalize(test_features[start : start + chunk_size].float(), dim=1)
        sims, idx = (test @ train.T).topk(k, dim=1)
        votes = torch.zeros(test.shape[0], num_classes, device=test.device)
        votes.scatter_add_(1, train_labels[idx], (sims / temperature).exp())
        preds.append(votes.argmax(1))
    return torch.cat(preds)


def knn_accuracy(
    train: tuple[Tensor, Tensor], test: tuple[Tensor, Tensor], num_classes: int, k: int = 200, temperature: float = 0.07
) -> float:
    """Accuracy of :func:`knn_predict` on ``test = (features, labels)``."""
    preds = knn_predict(train[0], train[1], test[0], num_classes, k, temperature)
    return float((preds == test[1]).float().mean())


class KNNMonitor:
    """A trainer step hook: every ``cfg.every`` steps, kNN accuracy of the encoder's frozen features.

    It also runs at the last step (``train.max_steps``) when that is not a multiple of ``cfg.every``,
    but not in a run shorter than one interval (``mmssl.pretrain`` then leaves the monitor out and says so).

    Every process computes it (identical weights give identical results), so that all of them
    take the same logging path, whose reductions are collective. Returns ``{"knn_accuracy": ...}``,
    which the trainer logs with the step.
    """

    def __init__(
        self,
        cfg: MonitorConfig,
        train_rows: Any,
        test_rows: Any,
        collate: Callable[[list[Any]], Batch],
        num_classes: int,
        encoder_of: Callable[[Any], Encoder],
    ) -> None:
        self.cfg = cfg
        self.train_rows = _head(train_rows, cfg.max_train)
        self.test_rows = _head(test_rows, cfg.max_test)
        self.collate = collate
        self.num_classes = num_classes
        self.encoder_of = encoder_of

    def __call__(self, trainer: Any, step: int) -> dict[str, float]:
        last = step == trainer.cfg.max_steps and step >= self.cfg.every
        if step % self.cfg.every and not last:
            return {}
        encoder = self.encoder_of(trainer.accelerator.unwrap_model(trainer.model))
        train = extract_features(encoder, self.train_rows, self.collate)
        test = extract_features(encoder, self.test_rows, self.collate)
        acc = knn_accuracy(train, test, self.num_classes, self.cfg.k, self.cfg.temperature)
        log.info("step %d: kNN accuracy %.4f (%s, k=%d)", step, acc, self.cfg.task, self.cfg.k)
        return {"knn_accuracy": acc}


def _head(rows: Any, n: int) -> Any:
    if hasattr(rows, "select"):
        return rows.select(range(min(n, len(rows))))
    return torch.utils.data.Subset(rows, range(min(n, len(rows))))


# ---------------------------------------------------------------------------- frozen-encoder protocols
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
    _check_budget(dom, data, cfg.task)
    set_seed(cfg.train.seed)
    encoder = dom.load_encoder(export_dir, random_init=cfg.init == "random")
    encoder.to("cuda" if torch.cuda.is_available() else "cpu")
    return FrozenSetup(export_dir, run_dir, encoder, data, dom.task_collate(dom.load_processor(export_dir), cfg.task))


@dataclass(frozen=True)
class ProbeInputs:
    """What a probe fits and scores: ``(features [N, D], labels [N])`` of the task's training rows and
    ``(features [M, D], labels [M])`` of its test rows, the task, the run its result is logged to, and
    the name of the raw-feature baseline the features are (``init=raw``; None for an encoder's)."""

    train: tuple[Tensor, Tensor]
    test: tuple[Tensor, Tensor]
    data: TaskData
    run_dir: Path | None
    baseline: str | None = None


def probe_inputs(path: Path, cfg: FinetuneConfig, domain: str | None) -> ProbeInputs:
    """``init=raw``: the domain's raw-feature baseline of the task's rows (no encoder is loaded); otherwise the
    pooled features of the export's frozen encoder on the same rows (with progress bars)."""
    if cfg.init == "raw":
        return _raw_inputs(path, cfg, domain)
    setup = frozen_setup(path, cfg, domain)
    train, test = (
        extract_features(
            setup.encoder,
            rows,
            setup.collate,
            cfg.probe.batch_size,
            cfg.probe.pooling,
            progress=True,
            grid_cells=cfg.probe.grid_cells,
        )
        for rows in (setup.data.train, setup.data.test)
    )
    return ProbeInputs(train, test, setup.data, setup.run_dir)


def _raw_inputs(path: Path, cfg: FinetuneConfig, domain: str | None) -> ProbeInputs:
    """The export's domain's :meth:`~mmssl.domain.DownstreamDomain.raw_features` of the task (the export only
    names the domain and keeps the run whose metrics the result goes to)."""
    export_dir, run_dir = resolve_export(Path(path))
    dom = export_domain(export_dir, domain, cfg.task)
    data = dom.task_data(cfg.task)
    _check_budget(dom, data, cfg.task)
    log.info("computing the %s domain's raw-feature baseline of %s", dom.name, cfg.task.name)
    raw = dom.raw_features(data, cfg.task)
    log.info(
        "raw-feature baseline %s: %d training and %d test rows of %d features",
        raw.name,
        len(raw.train[1]),
        len(raw.test[1]),
        raw.train[0].shape[1],
    )
    return ProbeInputs(raw.train, raw.test, data, run_dir, raw.name)


def _check_budget(dom: Any, data: TaskData, task: TaskConfig) -> None:
    """Refuse a label budget the training split cannot give before any feature is computed (the subset itself is
    drawn per seed from the features' labels, :func:`budgeted_features`)."""
    if has_label_budget(task):
        check_label_budget(dom.task_labels(data.train), task, data.label_names)


def budgeted_features(inputs: ProbeInputs, task: TaskConfig, seed: int) -> tuple[tuple[Tensor, Tensor], dict[str, Any]]:
    """The training ``(features [n, D], labels [n])`` that ``task``'s label budget keeps at ``seed``
    (:func:`mmssl.tasks.label_subset` on the training labels: the rows fine-tuning would keep), and
    :func:`mmssl.tasks.budget_record`. Without a budget, every row."""
    features, labels = inputs.train
    picked = label_subset(labels, task, seed, inputs.data.label_names)
    record = budget_record(task, seed, picked, len(labels))
    if not has_label_budget(task):
        return inputs.train, record
    return (features[picked], labels[picked]), record


def fit_linear_probe(train: tuple[Any, Any], test: tuple[Any, Any], probe: ProbeConfig) -> dict[str, Any]:
    """Logistic regression on standardised features ``(x [N, D], y [N])``: test and train accuracy.

    Shared by ``--protocol linear`` and the raw-input baselines (e.g. pixels) so both use one probe."""
    return fit_linear_predictions(train, test, probe)[0]


def fit_linear_predictions(
    train: tuple[Any, Any], test: tuple[Any, Any], probe: ProbeConfig
) -> tuple[dict[str, Any], Tensor]:
    """:func:`fit_linear_probe`'s result and its predictions ``[M]`` of the test rows (for paired tests)."""
    from sklearn.linear_model import LogisticRegression  # imported here: pretraining needs this module, not sklearn
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    (x_train, y_train), (x_test, y_test) = ((np.asarray(x), np.asarray(y)) for x, y in (train, test))
    log.info(
        "fitting the linear probe: logistic regression on %d x %d features (probe.C=%g, probe.max_iter=%d)",
        *x_train.shape,
        probe.C,
        probe.max_iter,
    )
    start = time.perf_counter()
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=probe.C, max_iter=probe.max_iter))
    clf.fit(x_train, y_train)
    predictions = clf.predict(x_test)
    result = {
        "accuracy": float((predictions == y_test).mean()),
        "train_accuracy": float(clf.score(x_train, y_train)),
        "n_train": len(y_train),
        "n_test": len(y_test),
        "feature_dim": int(x_train.shape[1]),
    }
    log.info(
        "linear probe fitted in %.1f s: test accuracy %.4f on %d rows (train %.4f)",
        time.perf_counter() - start,
        result["accuracy"],
        result["n_test"],
        result["train_accuracy"],
    )
    return result, torch.as_tensor(predictions)


def _fit_knn(
    train: tuple[Tensor, Tensor], test: tuple[Tensor, Tensor], probe: ProbeConfig, num_classes: int
) -> tuple[dict[str, Any], Tensor]:
    """The weighted kNN's accuracy (k=``probe.k``, temperature ``probe.temperature``) and its predictions ``[M]``."""
    predictions = knn_predict(train[0], train[1], test[0], num_classes, probe.k, probe.temperature)
    result = {
        "accuracy": float((predictions == test[1]).float().mean()),
        "k": probe.k,
        "temperature": probe.temperature,
        "n_train": len(train[1]),
        "n_test": len(test[1]),
    }
    return result, predictions


@dataclass(frozen=True)
class ProbeResult:
    """A probe's result record (what ``mmssl evaluate`` prints and appends to the run's ``metrics.jsonl``) and its
    ``predictions [M]`` of the test rows with their ``labels [M]``, for paired comparisons (``--baseline``)."""

    record: dict[str, Any]
    predictions: Tensor
    labels: Tensor


def run_probes(
    protocol: str, path: Path, cfg: FinetuneConfig, domain: str | None = None, seeds: tuple[int, ...] = ()
) -> list[ProbeResult]:
    """``mmssl evaluate --protocol linear|knn``: the probe on the features ``cfg.init`` names (the export's
    encoder, the same architecture untrained, or the domain's raw features), scored on the task's test rows.

    The features are computed once (a random-init encoder is drawn once, with ``train.seed``); with a label budget
    (``task.labels_per_class`` / ``task.label_fraction``) the probe is fitted on the subset each of ``seeds`` draws
    (default: ``train.seed`` alone), one result per seed.
    """
    check_init(cfg.init, protocol)
    inputs = probe_inputs(path, cfg, domain)
    return [probe_at_seed(protocol, inputs, cfg, seed) for seed in seeds or (cfg.train.seed,)]


def run_probe(protocol: str, path: Path, cfg: FinetuneConfig, domain: str | None = None) -> ProbeResult:
    """:func:`run_probes` at ``train.seed``."""
    return run_probes(protocol, path, cfg, domain)[0]


def probe_at_seed(protocol: str, inputs: ProbeInputs, cfg: FinetuneConfig, seed: int) -> ProbeResult:
    """Fit and score the probe on the training rows ``cfg.task``'s label budget keeps at ``seed``; log the record
    to the run. ``inputs`` (:func:`probe_inputs`) can be reused across budgets and seeds: the features are computed
    once."""
    train, budget = budgeted_features(inputs, cfg.task, seed)
    if protocol == "linear":
        result, predictions = fit_linear_predictions(train, inputs.test, cfg.probe)
    else:
        result, predictions = _fit_knn(train, inputs.test, cfg.probe, len(inputs.data.label_names))
    baseline = {"baseline": inputs.baseline} if inputs.baseline else {}
    record = {
        "event": "evaluate",
        "protocol": protocol,
        "task": cfg.task.name,
        "init": cfg.init,
        **baseline,
        **result,
        **budget,
        **inputs.data.skipped_record(),
    }
    if inputs.run_dir is not None:
        append_metrics(inputs.run_dir, record)
    return ProbeResult(record, torch.as_tensor(predictions), torch.as_tensor(inputs.test[1]))


def linear_probe(path: Path, cfg: FinetuneConfig, domain: str | None = None) -> dict[str, Any]:
    """Logistic regression on frozen pooled encoder features (``init=raw``: on the domain's raw features);
    accuracy on the held-out split."""
    return run_probe("linear", path, cfg, domain).record


def knn_probe(path: Path, cfg: FinetuneConfig, domain: str | None = None) -> dict[str, Any]:
    """Weighted kNN (k=``probe.k``, temperature ``probe.temperature``) on frozen pooled features (``init=raw``:
    on the domain's raw features)."""
    return run_probe("knn", path, cfg, domain).record


# ---------------------------------------------------------------------------- retrieval
def retrieval_recall(queries: Tensor, keys: Tensor, ks: tuple[int, ...] = (1, 5)) -> dict[int, float]:
    """Recall@k of cross-modal retrieval: query ``i``'s match is key ``i``.

    Rows are L2-normalised and ranked by cosine similarity; the rank of a query's match is the
    number of keys scoring strictly higher than it (ties count in the query's favour).

    Args:
        queries: ``[N, D]``; keys: ``[N, D]`` (``keys[i]`` pairs with ``queries[i]``).
        ks: the cut-offs.

    Returns:
        ``{k: fraction of queries whose match ranks in the top k}``.
    """
    if queries.ndim != 2 or queries.shape != keys.shape:
        raise ValueError(f"queries and keys must both be [N, D], got {tuple(queries.shape)} and {tuple(keys.shape)}")
    sims = F.normalize(queries.float(), dim=1) @ F.normalize(keys.float(), dim=1).T  # [N, N]
    rank = (sims > sims.diagonal()[:, None]).sum(1)  # [N]
    return {k: float((rank < k).float().mean()) for k in ks}


@torch.no_grad()
def paired_embeddings(
    encoder: Any, heads: Any, rows: Any, collate: Callable[[list[Any]], Batch], batch_size: int = 64
) -> tuple[Tensor, Tensor]:
    """``([N, P], [N, P])`` joint embeddings of paired rows: ``heads.project(encoder, batch)`` in eval mode, on CPU."""
    device = next(encoder.parameters()).device
    encoder.eval()
    heads.eval().to(device)
    main, paired = [], []
    for batch in DataLoader(rows, batch_size=batch_size, collate_fn=collate):
        a, b = heads.project(encoder, batch.to(device))
        main.append(a.float().cpu())
        paired.append(b.float().cpu())
    return torch.cat(main), torch.cat(paired)


def retrieval_probe(path: Path, cfg: FinetuneConfig, domain: str | None = None) -> dict[str, Any]:
    """``mmssl evaluate --protocol retrieval``: recall@1/5 both ways on a paired task's held-out pairs.

    Reads a two-tower export (:class:`mmssl.encoder.TwoTowerEncoder` and its
    projection heads); ``cfg.init == "random"`` evaluates the same architecture untrained (``raw`` is refused).
    """
    check_init(cfg.init, "retrieval")
    setup = frozen_setup(path, cfg, domain)
    encoder = two_towers(setup.encoder)
    heads = ClipHeads.load(setup.export_dir, random_init=cfg.init == "random")
    data, collate, run_dir = setup.data, setup.collate, setup.run_dir
    a, b = paired_embeddings(encoder, heads, data.test, collate, cfg.probe.batch_size)
    first, second = encoder.tower_names
    record: dict[str, Any] = {"event": "evaluate", "protocol": "retrieval", "task": cfg.task.name, "init": cfg.init}
    for (q, k), (name_q, name_k) in (((a, b), (first, second)), ((b, a), (second, first))):
        record.update({f"{name_q}_to_{name_k}_recall@{n}": r for n, r in retrieval_recall(q, k).items()})
    record.update({"n_test": len(a), "chance_recall@1": 1 / len(a), "chance_recall@5": min(5 / len(a), 1.0)})
    if run_dir is not None:
        append_metrics(run_dir, record)
    return record
