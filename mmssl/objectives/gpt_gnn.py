"""Generative pretraining of attributes and links: GPT-GNN (Hu et al. 2020).

Modality-agnostic: the domain's transform chooses the generation task of each batch (for
graphs, :func:`domains.graph.augment.generation_split`: a random node permutation splits
the nodes into attribute generation and edge generation nodes, and removes some edges of
the latter) and passes it as

* ``extras[Extra.GEN_ATTR]`` -- ``[B, T]`` bool: units whose features are hidden (replaced by
  the encoder's mask embedding) and regenerated from their context;
* ``extras[Extra.GEN_PAIRS]`` -- ``[2, P]`` flat unit indices ``b * T + t``: pairs ``(i, j)``
  whose link was removed; ``i``'s vector must single out ``j``;
* optionally ``extras[Extra.NODE_ID]`` -- ``[B, T]`` item ids: units of one item in several
  rows (a node in two ego networks) are not each other's negatives.

Attribute generation regresses the hidden features with an MLP decoder
(:func:`masked_regression_loss`, MSE). Edge generation is contrastive link prediction
(sec. 3.3): a matcher maps ``h_i`` and ``h_j`` to a query and a key, and ``j`` is
classified against the other keys of the batch and an *adaptive queue* of keys from
previous batches (:class:`MemoryQueue`, first in first out). The loss is
``attr_weight * attr + edge_weight * edge``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmssl.encoder import Encoder
from mmssl.objectives.base import Objective
from mmssl.objectives.heads import MLPHead
from mmssl.objectives.losses import masked_regression_loss
from mmssl.objectives.memory import MemoryQueue
from mmssl.types import Batch, Extra, ObjectiveOutput


def link_contrastive_loss(
    query: Tensor, key: Tensor, queue: Tensor | None, temperature: float, key_ids: Tensor | None = None
) -> Tensor:
    """Cross entropy of each query's own key against the batch's other keys and the queue.

    Logits of query ``q_i`` are ``[q_i . k_1, ..., q_i . k_P, q_i . queue_1, ...] / tau`` on
    L2-normalised vectors, the positive at ``i``. With ``key_ids``, a batch key of the same
    item as the positive (the same node reached from two ego networks) is no negative.

    Args:
        query: ``[P, D]``; key: ``[P, D]`` (``key[i]`` is ``query[i]``'s removed neighbour).
        queue: ``[K, D]`` keys of earlier batches, or None.
        temperature: ``tau``.
        key_ids: ``[P]`` item id of each key, or None (all keys distinct).

    Returns:
        Scalar loss (0 with no pairs).
    """
    if query.shape != key.shape or query.ndim != 2:
        raise ValueError(f"query and key must both be [P, D], got {tuple(query.shape)} and {tuple(key.shape)}")
    if query.shape[0] == 0:
        return query.sum() * 0.0
    q, k = F.normalize(query.float(), dim=1), F.normalize(key.float(), dim=1)
    candidates = k if queue is None else torch.cat([k, F.normalize(queue.detach().float(), dim=1)])
    logits = q @ candidates.T / temperature
    if key_ids is not None:
        same = key_ids[:, None] == key_ids[None, :]
        same.fill_diagonal_(False)
        logits[:, : k.shape[0]] = logits[:, : k.shape[0]].masked_fill(same, float("-inf"))
    return F.cross_entropy(logits, torch.arange(q.shape[0], device=q.device))


@dataclass(frozen=True)
class GPTGNNConfig:
    """GPT-GNN (Hu et al. 2020)."""

    name: str = "gpt_gnn"
    attr_weight: float = 1.0  # the paper sums the two losses
    edge_weight: float = 1.0
    temperature: float = 0.2
    queue_size: int = 256  # the adaptive queue of negative keys (sec. 3.4)
    decoder_hidden_dim: int = 256

    def __post_init__(self) -> None:
        for name in ("attr_weight", "edge_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"objective.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("temperature", "queue_size", "decoder_hidden_dim"):
            if getattr(self, name) <= 0:
                raise ValueError(f"objective.{name} must be > 0, got {getattr(self, name)}")


class GPTGNN(Objective):
    """Attribute generation (masked regression) plus edge generation (contrastive, with a queue)."""

    def __init__(self, config: GPTGNNConfig, encoder: Encoder) -> None:
        super().__init__(config, encoder)
        if encoder.unit_dim is None:
            raise ValueError("gpt_gnn regenerates [B, T, C] feature units; the encoder has no unit_dim")
        d = encoder.hidden_size
        self.attr_decoder = MLPHead(d, config.decoder_hidden_dim, encoder.unit_dim, num_layers=2, batch_norm=False)
        self.query = nn.Linear(d, d)  # the matcher: h_i -> query, h_j -> key
        self.key = nn.Linear(d, d)
        self.queue = MemoryQueue(d, config.queue_size)

    def forward(self, encoder: Encoder, batch: Batch) -> ObjectiveOutput:
        attr, pairs = batch.extras.get(Extra.GEN_ATTR), batch.extras.get(Extra.GEN_PAIRS)
        if attr is None or pairs is None:
            raise ValueError("gpt_gnn needs batch.extras['gen_attr'] and ['gen_pairs']; set data.views=gpt_gnn")
        hidden = encoder.encode(batch, mask=attr).hidden  # [B, T, D]; the removed links are absent here
        attr_loss = masked_regression_loss(
            self.attr_decoder(hidden[attr]),
            batch.units[attr],
            torch.ones(int(attr.sum()), dtype=torch.bool, device=attr.device),
        )
        flat = hidden.reshape(-1, hidden.shape[-1])
        q, k = self.query(flat[pairs[0]]), self.key(flat[pairs[1]])
        ids = batch.extras.get(Extra.NODE_ID)
        key_ids = ids.reshape(-1)[pairs[1]] if ids is not None else None
        edge_loss = link_contrastive_loss(q, k, self.queue.negatives(), self.config.temperature, key_ids)
        if self.training and k.shape[0] > 0:
            self.queue.enqueue(F.normalize(k.detach().float(), dim=1))
        cfg = self.config
        loss = cfg.attr_weight * attr_loss + cfg.edge_weight * edge_loss
        logs = {"generated_links": torch.tensor(float(pairs.shape[1]))}
        return ObjectiveOutput(loss=loss, terms={"attr": attr_loss, "edge": edge_loss}, logs=logs)
