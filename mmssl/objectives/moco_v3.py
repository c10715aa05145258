"""MoCo v3 (Chen, Xie & He 2021): in-batch contrast of predicted queries with a momentum encoder's keys.

The teacher is a :class:`mmssl.teacher.MomentumTeacher` copy of the student's encoder and
projector, its momentum raised from ``base_momentum`` to ``final_momentum`` by a half-cycle
cosine, moved towards the student only in :meth:`MoCoV3.after_optimizer_step`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from mmssl.distributed import gather_no_grad, process_rank
from mmssl.encoder import Encoder
from mmssl.objectives.base import Objective
from mmssl.objectives.checks import check_momentum, check_positive
from mmssl.objectives.heads import HEAD_SHAPES, configured_head
from mmssl.objectives.losses import check_pair, check_temperature, f32, full_precision
from mmssl.objectives.views import Branch, contrastive_accuracy, embedding_std, represent, views_of
from mmssl.teacher import CosineSchedule, MomentumTeacher
from mmssl.types import Batch, ObjectiveOutput


@full_precision
def moco_v3_loss(q: Tensor, k: Tensor, temperature: float = 0.2, gather: bool = True) -> Tensor:
    """One direction of MoCo v3's contrastive loss (Chen, Xie & He 2021, Alg. 1).

    Keys of the whole global batch (detached, gathered from every process) are the
    candidates; the positive of local query ``i`` is key ``rank * B + i``::

        loss = 2 * tau * CE(q @ k_global.T / tau, rank * B + arange(B))

    The ``2 * tau`` factor follows the official code (it makes the gradient scale
    independent of ``tau``). MoCo v3 symmetrises: ``moco_v3_loss(q1, k2) + moco_v3_loss(q2, k1)``.

    Args:
        q: ``[B, D]`` queries from the base encoder and predictor.
        k: ``[B, D]`` keys from the momentum encoder (detached here).
        temperature: ``tau`` (MoCo v3: 0.2 for ViT, 1.0 for ResNet).
        gather: take keys from every process (no-op in one process).

    Returns:
        Scalar loss.

    Raises:
        ValueError: On mismatched shapes or ``temperature <= 0``.
    """
    check_pair(q, k, "q and k")
    check_temperature(temperature)
    q = F.normalize(f32(q), dim=1)
    k = F.normalize(f32(k.detach()), dim=1)
    keys = gather_no_grad(k) if gather else k  # [W * B, D]
    labels = torch.arange(q.shape[0], device=q.device) + q.shape[0] * (process_rank() if gather else 0)
    return F.cross_entropy(q @ keys.T / temperature, labels) * (2 * temperature)


@dataclass(frozen=True)
class MoCoV3Config:
    """MoCo v3 (Chen, Xie & He 2021)."""

    name: str = "moco_v3"
    temperature: float = 0.2  # ViT setting (ResNet: 1.0)
    base_momentum: float = 0.99  # official code: 0.99, raised to 1 by a half-cycle cosine (--moco-m-cos)
    final_momentum: float = 1.0
    projector_hidden_dim: int = HEAD_SHAPES["moco_v3_projector"].hidden_dim  # 4096, sec. 4
    projector_dim: int = HEAD_SHAPES["moco_v3_projector"].out_dim  # 256
    predictor_hidden_dim: int = HEAD_SHAPES["moco_v3_predictor"].hidden_dim  # 4096

    def __post_init__(self) -> None:
        check_positive(self, "temperature", "projector_hidden_dim", "projector_dim", "predictor_hidden_dim")
        check_momentum(self, "base_momentum", "final_momentum")


class MoCoV3(Objective):
    """In-batch contrast of predicted queries with momentum keys, symmetrised as in the paper (Alg. 1):
    ``moco_v3_loss(q1, k2) + moco_v3_loss(q2, k1)``."""

    def __init__(self, config: MoCoV3Config, encoder: Encoder) -> None:
        super().__init__(config, encoder)
        self.projector = configured_head(
            "moco_v3_projector", encoder.hidden_size, config.projector_hidden_dim, config.projector_dim
        )
        self.predictor = configured_head(
            "moco_v3_predictor", config.projector_dim, config.predictor_hidden_dim, config.projector_dim
        )
        schedule = CosineSchedule(config.base_momentum, config.final_momentum)
        self.teacher = MomentumTeacher(Branch(encoder, self.projector), schedule, train_mode=True)

    def forward(self, encoder: Encoder, batch: Batch) -> ObjectiveOutput:
        v1, v2 = views_of(batch, "moco_v3", exactly_two=True)
        z1, z2 = self.projector(represent(encoder, v1)), self.projector(represent(encoder, v2))
        q1, q2 = self.predictor(z1), self.predictor(z2)
        k1, k2 = self.teacher(v1), self.teacher(v2)
        t = self.config.temperature
        loss = moco_v3_loss(q1, k2, t) + moco_v3_loss(q2, k1, t)
        logs = {
            "contrastive_accuracy": contrastive_accuracy(q1, k2),
            "embedding_std": embedding_std(z1),
            "momentum": self.teacher.momentum.clone(),
        }
        return ObjectiveOutput(loss=loss, terms={"moco_v3": loss}, logs=logs)

    def after_optimizer_step(self, encoder: Encoder, step: int, max_steps: int) -> None:
        self.teacher.update(Branch(encoder, self.projector), step, max_steps)
