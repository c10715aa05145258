"""Frozen-feature evaluation shared by every domain: features, the weighted kNN classifier, and
the online kNN monitor that logs to ``metrics.jsonl`` during pretraining.
"""

from __future__ import annotations


import logging
from dataclasses import replace
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from mmssl.encoder import Encoder
from mmssl.recipe import MonitorConfig
from mmssl.types import Batch

log = logging.getLogger(__name__)


@torch.no_grad()
def extract_features(encoder: Encoder, rows: Any, collate: Callable[[list[Any]], Batch],
                     batch_size: int = 256, pooling: str = "auto", progress: bool = False) -> tuple[Tensor, Tensor]:
    """``(features [N, D] float32 on CPU, labels [N])``: the encoder's pooled output in eval mode.

    ``pooling``: ``auto`` is :meth:`EncoderOutput.pooled` (the backbone's own summary, e.g. ViT's
    [CLS], else the mean over units); ``mean`` always averages the units (MAE's linear probe uses
    global average pooling of the patch tokens, He et al. 2022, sec. A.2); ``mean_std`` concatenates
    the mean and standard deviation over the units (:meth:`EncoderOutput.pooled_statistics`,
    statistics pooling as in speaker and keyword models).

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
            else:
                pooled = out.pooled() if pooling == "auto" else replace(out, summary=None).pooled()
            feats.append(pooled.float().cpu())
            labels.append(batch.extras["labels"].cpu())
    finally:
        encoder.train(was_training)
    return torch.cat(feats), torch.cat(labels)


@torch.no_grad()
def knn_predict(train_features: Tensor, train_labels: Tensor, test_features: Tensor, num_classes: int,
                k: int = 200, temperature: float = 0.07, chunk_size: int = 1024) -> Tensor:
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
        test = F.normalize(test_features[start:start + chunk_size].float(), dim=1)
        sims, idx = (test @ train.T).topk(k, dim=1)
        votes = torch.zeros(test.shape[0], num_classes, device=test.device)
        votes.scatter_add_(1, train_labels[idx], (sims / temperature).exp())
        preds.append(votes.argmax(1))
    return torch.cat(preds)


def knn_accuracy(train: tuple[Tensor, Tensor], test: tuple[Tensor, Tensor], num_classes: int,
                 k: int = 200, temperature: float = 0.07) -> float:
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

    def __init__(self, cfg: MonitorConfig, train_rows: Any, test_rows: Any, collate: Callable[[list[Any]], Batch],
                 num_classes: int, encoder_of: Callable[[Any], Encoder]) -> None:
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
def paired_embeddings(encoder: Any, heads: Any, rows: Any, collate: Callable[[list[Any]], Batch],
                      batch_size: int = 64) -> tuple[Tensor, Tensor]:
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


def retrieval_probe(path: Any, cfg: Any, domain: str | None = None) -> dict[str, Any]:
    """``mmssl evaluate --protocol retrieval``: recall@1/5 both ways on a paired task's held-out pairs.

    Reads a two-tower export (:class:`mmssl.objectives.cross_modal.TwoTowerEncoder` and its
    projection heads); ``cfg.init == "random"`` evaluates the same architecture untrained.
    """
    from mmssl.finetune import frozen_setup
    from mmssl.metrics import append_metrics
    from mmssl.objectives.cross_modal import ClipHeads, two_towers

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
