"""MoCo v2 (He et al. 2020; Chen et al. 2020b): InfoNCE of queries against a momentum encoder's keys and a queue.

The teacher is a :class:`mmssl.teacher.MomentumTeacher` copy of the student's encoder and
projector with a constant momentum, made at construction and moved towards the student only in
:meth:`MoCoV2.after_optimizer_step`; the negatives are a :class:`MemoryQueue` of past keys.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from mmssl.encoder import Encoder
from mmssl.objectives.base import Objective
from mmssl.objectives.checks import check_momentum, check_positive
from mmssl.objectives.heads import HEAD_SHAPES, configured_head
from mmssl.objectives.losses import check_pair, check_temperature, f32, full_precision
from mmssl.objectives.memory import MemoryQueue
from mmssl.objectives.views import Branch, contrastive_accuracy, embedding_std, represent, views_of
from mmssl.teacher import CosineSchedule, MomentumTeacher
from mmssl.types import Batch, ObjectiveOutput


@full_precision
def info_nce(query: Tensor, key: Tensor, queue: Tensor | None = None, temperature: float = 0.2) -> Tensor:
    """InfoNCE of MoCo (He et al. 2020, eq. 1; v2 settings: Chen et al. 2020b).

    ``query``, ``key`` and ``queue`` are L2-normalised here. With a queue, the logits of
    query ``q_i`` are ``[q_i . k_i, q_i . queue_1, ..., q_i . queue_K] / tau`` (the other
    keys of the batch are not negatives); without one, ``[q_i . k_1, ..., q_i . k_B] / tau``
    with the positive at ``i``. The loss is the mean cross entropy with the positive as
    the class. Keys come from a momentum encoder and are detached here.

    Args:
        query: ``[B, D]`` queries (the gradient flows through these).
        key: ``[B, D]`` keys; ``key[i]`` is the positive of ``query[i]``.
        queue: ``[K, D]`` negative keys, e.g. :meth:`MemoryQueue.negatives`; ``None`` for
            in-batch negatives.
        temperature: ``tau`` (MoCo v2: 0.2).

    Returns:
        Scalar loss.

    Raises:
        ValueError: On mismatched shapes or ``temperature <= 0``.
    """
    check_pair(query, key, "query and key")
    check_temperature(temperature)
    q = F.normalize(f32(query), dim=1)
    k = F.normalize(f32(key.detach()), dim=1)
    if queue is None:
        logits = q @ k.T  # [B, B], positives on the diagonal
        labels = torch.arange(q.shape[0], device=q.device)
    else:
        if queue.ndim != 2 or queue.shape[1] != q.shape[1]:
            raise ValueError(f"queue must be [K, {q.shape[1]}], got {tuple(queue.shape)}")
        negatives = F.normalize(f32(queue.detach()), dim=1)
        logits = torch.cat([(q * k).sum(1, keepdim=True), q @ negatives.T], dim=1)  # [B, 1 + K]
        labels = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
    return F.cross_entropy(logits / temperature, labels)


@dataclass(frozen=True)
class MoCoV2Config:
    """MoCo v2 (He et al. 2020; Chen et al. 2020b)."""

    name: str = "moco_v2"
    temperature: float = 0.2  # MoCo v2
    momentum: float = 0.99  # the official MoCo CIFAR-10 demo (ImageNet: 0.999)
    queue_size: int = 4096  # the official MoCo CIFAR-10 demo (ImageNet: 65536)
    projector_hidden_dim: int = HEAD_SHAPES["moco_v2_projector"].hidden_dim  # 2048, MLP head without BN
    projector_dim: int = HEAD_SHAPES["moco_v2_projector"].out_dim  # 128

    def __post_init__(self) -> None:
        check_positive(self, "temperature", "queue_size", "projector_hidden_dim", "projector_dim")
        check_momentum(self, "momentum")


class MoCoV2(Objective):
    """InfoNCE of queries against a momentum encoder's keys and a queue of past keys.

    Symmetrised as in the official CIFAR-10 demo's ``symmetric`` option: both views are
    queries, ``(info_nce(q1, k2, queue) + info_nce(q2, k1, queue)) / 2`` (the mean keeps the
    scale of the paper's one-direction loss), and the keys of both views are enqueued, after
    the loss is computed and only in training mode. The momentum is constant.
    """

    def __init__(self, config: MoCoV2Config, encoder: Encoder) -> None:
        super().__init__(config, encoder)
        self.projector = configured_head(
            "moco_v2_projector", encoder.hidden_size, config.projector_hidden_dim, config.projector_dim
        )
        schedule = CosineSchedule(config.momentum, config.momentum)  # constant
        self.teacher = MomentumTeacher(Branch(encoder, self.projector), schedule, train_mode=True)
        self.queue = MemoryQueue(config.projector_dim, config.queue_size)

    def forward(self, encoder: Encoder, batch: Batch) -> ObjectiveOutput:
        v1, v2 = views_of(batch, "moco_v2", exactly_two=True)
        q1, q2 = self.projector(represent(encoder, v1)), self.projector(represent(encoder, v2))
        k1, k2 = self.teacher(v1), self.teacher(v2)
        negatives = self.queue.negatives()  # [K, P], a copy: enqueue below overwrites the buffer
        t = self.config.temperature
        loss = (info_nce(q1, k2, negatives, t) + info_nce(q2, k1, negatives, t)) / 2
        if self.training:
            self.queue.enqueue(F.normalize(torch.cat([k1, k2]).float(), dim=1))
        logs = {
            "contrastive_accuracy": contrastive_accuracy(q1, k2, negatives),
            "embedding_std": embedding_std(q1),
            "momentum": self.teacher.momentum.clone(),
        }
        return ObjectiveOutput(loss=loss, terms={"info_nce": loss}, logs=logs)

    def after_optimizer_step(self, encoder: Encoder, step: int, max_steps: int) -> None:
        self.teacher.update(Branch(encoder, self.projector), step, max_steps)
