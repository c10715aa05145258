"""SwAV (Caron et al. 2020): swapped prediction of Sinkhorn-Knopp cluster codes between views, with multi-crop.

Each view's projection is L2-normalised and scored against ``K`` prototypes (a bias-free linear layer whose
rows stay on the unit sphere). The codes of each global view are the Sinkhorn-Knopp equipartition of its
scores over the *global* batch (sums reduced over every process), optionally together with a queue of
earlier global-view projections; every other view, local crops included, predicts those codes with a
softmax at ``temperature``. The prototypes take no gradient for the first ``freeze_prototypes_steps``
optimizer steps, and are renormalised after every step, both as in the official ``main_swav.py``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmssl.distributed import global_sum, world_size
from mmssl.encoder import Encoder
from mmssl.objectives.base import Objective
from mmssl.objectives.checks import check_positive
from mmssl.objectives.heads import HEAD_SHAPES, MLPHead, configured_head
from mmssl.objectives.losses import f32, full_precision
from mmssl.objectives.memory import MemoryQueue
from mmssl.objectives.views import embedding_std, represent, views_of
from mmssl.types import Batch, ObjectiveOutput

NUM_ASSIGNED = 2  # the global views whose codes are computed (crops_for_assign = [0, 1])


@torch.no_grad()
def sinkhorn(
    scores: Tensor, epsilon: float = 0.05, iterations: int = 3, shared: Tensor | None = None, gather: bool = True
) -> Tensor:
    """SwAV's codes: the Sinkhorn-Knopp equipartition of the scores (Caron et al. 2020, sec. 3.1, eq. 3).

    ``Q = exp(scores / epsilon)`` over the ``N`` samples of the global batch (plus ``L`` shared
    rows) is scaled alternately so that every prototype holds ``1/K`` of the mass and every sample
    ``1/N``; the codes are ``N * Q``, each row summing to 1. With ``gather``, the sums over samples
    add every process's rows (:func:`mmssl.distributed.global_sum`): the codes of this process's rows
    are then those of one process on the global batch. The codes are targets, so no gradient flows
    and a non-differentiable reduction is right here.

    Args:
        scores: ``[B, K]`` this process's scores (cosines of normalised projections and prototypes).
        epsilon: entropy regularisation (paper: 0.05).
        iterations: Sinkhorn-Knopp iterations (paper: 3).
        shared: ``[L, K]`` scores of rows every process holds alike (SwAV's queue, gathered when it
            was filled): counted once, not summed over processes.
        gather: reduce the sums over every process (no-op in one process).

    Returns:
        ``[B, K]`` float32 codes of this process's rows.

    Raises:
        ValueError: On scores that are not ``[B, K]`` or shared scores of another width.
    """
    if scores.ndim != 2:
        raise ValueError(f"scores must be [B, K], got {tuple(scores.shape)}")
    k = scores.shape[1]
    if shared is not None and (shared.ndim != 2 or shared.shape[1] != k):
        raise ValueError(f"shared scores must be [L, {k}], got {tuple(shared.shape)}")
    reduce = global_sum if gather else torch.clone
    q = torch.exp(f32(scores) / epsilon)  # [B, K]
    s = torch.exp(f32(shared) / epsilon) if shared is not None else q.new_zeros(0, k)  # [L, K]
    n = q.shape[0] * (world_size() if gather else 1) + s.shape[0]
    total = reduce(q.sum()) + s.sum()
    q, s = q / total, s / total
    for _ in range(iterations):
        per_prototype = (reduce(q.sum(0)) + s.sum(0)) * k  # [K]: each prototype's mass -> 1/K
        q, s = q / per_prototype, s / per_prototype
        q = q / (q.sum(1, keepdim=True) * n)  # each sample's mass -> 1/N
        s = s / (s.sum(1, keepdim=True) * n)
    return q * n


@full_precision
def prototype_scores(z: Tensor, prototypes: Tensor) -> Tensor:
    """``[B, K]`` scores: the cosines of the projections ``z`` (``[B, P]``, normalised here) to the ``[K, P]``
    prototypes (kept on the unit sphere by :meth:`SwAV.normalise_prototypes`), in float32 under autocast."""
    return F.normalize(f32(z), dim=1) @ f32(prototypes).T


@full_precision
def swapped_prediction_loss(scores: Sequence[Tensor], codes: Sequence[Tensor], temperature: float = 0.1) -> Tensor:
    """SwAV's swapped prediction with multi-crop (Caron et al. 2020, eq. 1-2; ``main_swav.py``).

    With ``p_v = softmax(scores_v / tau)`` and ``q_i`` the codes of global view ``i``::

        loss = mean_i  sum_{v != i} CE(q_i, p_v) / (V - 1),   CE(q, p) = -mean_b sum_k q_bk log p_bk

    over the ``G`` views with codes and all ``V`` views (local crops included). The cross entropy is
    a mean over this process's samples; DDP's averaging makes it the mean over the global batch.

    Args:
        scores: ``V`` tensors ``[B, K]``, every view's prototype scores, the ``G`` coded views first.
        codes: ``G`` tensors ``[B, K]``, the targets of the first ``G`` views (detached here).
        temperature: ``tau`` of the softmax (paper: 0.1).

    Returns:
        Scalar loss.

    Raises:
        ValueError: With fewer than 2 views, no codes or more codes than views, mismatched shapes or
            ``temperature <= 0``.
    """
    if len(scores) < 2 or not 1 <= len(codes) <= len(scores):
        raise ValueError(f"need at least 2 views and 1 to {len(scores)} codes, got {len(scores)} and {len(codes)}")
    if any(s.ndim != 2 or s.shape != scores[0].shape for s in (*scores, *codes)):
        raise ValueError(f"scores and codes must all be [B, K] of one shape, got {[tuple(s.shape) for s in scores]}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    log_p = [F.log_softmax(f32(s) / temperature, dim=1) for s in scores]
    total = scores[0].new_zeros((), dtype=log_p[0].dtype)
    for i, q in enumerate(codes):
        q = f32(q.detach())
        cross = [-(q * log_p[v]).sum(1).mean() for v in range(len(scores)) if v != i]
        total = total + torch.stack(cross).sum() / (len(scores) - 1)
    return total / len(codes)


def check_prototypes_fit(num_prototypes: int, global_batch: int, queue_size: int) -> None:
    """``num_prototypes`` is at most the samples Sinkhorn-Knopp spreads over them: the global batch plus the queue.

    The equipartition gives each prototype ``N / K`` samples; with fewer samples than prototypes no
    sample can be assigned to one prototype, and the codes stay close to uniform (the paper adds a
    queue when the batch is small, sec. 4.1 and appendix A).

    Raises:
        ValueError: Naming ``objective.num_prototypes``, ``train.batch_size`` and ``objective.queue_size``.
    """
    if num_prototypes > global_batch + queue_size:
        raise ValueError(
            f"objective.num_prototypes={num_prototypes} is more than the {global_batch + queue_size} samples "
            f"Sinkhorn-Knopp spreads over them (the global batch, train.batch_size x processes = {global_batch}, "
            f"plus objective.queue_size={queue_size}): lower objective.num_prototypes, or raise "
            "objective.queue_size or train.batch_size"
        )


@dataclass(frozen=True)
class SwAVConfig:
    """SwAV (Caron et al. 2020); defaults are the official ``main_swav.py`` ones."""

    name: str = "swav"
    temperature: float = 0.1  # tau of the swapped prediction
    epsilon: float = 0.05  # Sinkhorn-Knopp entropy regularisation
    sinkhorn_iterations: int = 3
    num_prototypes: int = 3000  # K (ImageNet)
    queue_size: int = 0  # earlier global-view projections in the codes; the 256-batch ImageNet run: 3840
    queue_start_step: int = 0  # optimizer steps before the (full) queue is used; official: epoch 15
    freeze_prototypes_steps: int = 313  # prototypes take no gradient for this many optimizer steps (bs 4096: 1 epoch)
    projector_hidden_dim: int = HEAD_SHAPES["swav_projector"].hidden_dim  # hidden_mlp 2048
    projector_dim: int = HEAD_SHAPES["swav_projector"].out_dim  # feat_dim 128

    def __post_init__(self) -> None:
        check_positive(
            self,
            "temperature",
            "epsilon",
            "sinkhorn_iterations",
            "num_prototypes",
            "projector_hidden_dim",
            "projector_dim",
        )
        for name in ("queue_size", "queue_start_step", "freeze_prototypes_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"objective.{name} must be >= 0, got {getattr(self, name)}")

    def check_recipe(self, recipe: Any) -> None:
        """Settings of other sections that must fit: the prototypes and the batch (``train.batch_size`` on the
        ``WORLD_SIZE`` processes a launcher starts, 1 without one; the forward pass checks the real one)."""
        processes = int(os.environ.get("WORLD_SIZE", "1"))
        check_prototypes_fit(self.num_prototypes, recipe.train.batch_size * processes, self.queue_size)


class SwAV(Objective):
    """Swapped prediction of the global views' Sinkhorn-Knopp codes from every other view (see module docstring).

    State beyond the weights, all in the checkpoint: ``steps_done`` (optimizer steps, for the prototype
    freeze and the queue start), one :class:`MemoryQueue` per global view and ``queued`` (how many
    projections it has received, so that its random initial rows are never used).
    """

    steps_done: Tensor
    queued: Tensor

    def __init__(self, config: SwAVConfig, encoder: Encoder) -> None:
        super().__init__(config, encoder)
        self.projector: MLPHead = configured_head(
            "swav_projector", encoder.hidden_size, config.projector_hidden_dim, config.projector_dim
        )
        self.prototypes = nn.Linear(config.projector_dim, config.num_prototypes, bias=False)
        self.normalise_prototypes()
        queues = NUM_ASSIGNED if config.queue_size else 0  # one per coded view
        self.queues = nn.ModuleList([MemoryQueue(config.projector_dim, config.queue_size) for _ in range(queues)])
        self.register_buffer("steps_done", torch.zeros((), dtype=torch.long))
        self.register_buffer("queued", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def normalise_prototypes(self) -> None:
        """Put every prototype back on the unit sphere (the official code does so before each step)."""
        self.prototypes.weight.copy_(F.normalize(self.prototypes.weight, dim=1))

    def queue_in_use(self) -> bool:
        """The queue is full of real projections and ``queue_start_step`` optimizer steps have passed."""
        cfg = self.config
        return bool(self.queues) and int(self.steps_done) >= cfg.queue_start_step and int(self.queued) >= cfg.queue_size

    def codes(self, scores: Sequence[Tensor]) -> list[Tensor]:
        """``[B, K]`` Sinkhorn-Knopp codes of each of the first :data:`NUM_ASSIGNED` views, with the queue's
        projections scored by the current prototypes when it is in use."""
        cfg = self.config
        use_queue = self.queue_in_use()
        out = []
        for i, s in enumerate(scores[:NUM_ASSIGNED]):
            shared = (
                prototype_scores(self.queues[i].negatives(), self.prototypes.weight.detach()) if use_queue else None
            )
            out.append(sinkhorn(s.detach(), cfg.epsilon, cfg.sinkhorn_iterations, shared))
        return out

    def forward(self, encoder: Encoder, batch: Batch) -> ObjectiveOutput:
        cfg = self.config
        views = views_of(batch, "swav")
        check_prototypes_fit(cfg.num_prototypes, views[0].batch_size * world_size(), cfg.queue_size)
        z = [F.normalize(f32(self.projector(represent(encoder, v))), dim=1) for v in views]  # V x [B, P]
        frozen = self.training and int(self.steps_done) < cfg.freeze_prototypes_steps
        weight = self.prototypes.weight.detach() if frozen else self.prototypes.weight  # [K, P]
        scores = [prototype_scores(zi, weight) for zi in z]  # V x [B, K]
        codes = self.codes(scores)
        loss = swapped_prediction_loss(scores, codes, cfg.temperature)
        if self.training and self.queues:
            for queue, zi in zip(self.queues, z):
                queue.enqueue(zi.detach())
            self.queued.add_(z[0].shape[0] * world_size()).clamp_(max=cfg.queue_size)
        logs = {
            "embedding_std": embedding_std(z[0]),
            "code_confidence": codes[0].max(1).values.mean(),  # 1 / K when uniform, 1 when one-hot
            # the fraction of prototypes that are some sample's best code in this process's batch
            "prototypes_used": F.one_hot(codes[0].argmax(1), cfg.num_prototypes).amax(0).float().mean(),
        }
        return ObjectiveOutput(loss=loss, terms={"swav": loss}, logs=logs)

    def after_optimizer_step(self, encoder: Encoder, step: int, max_steps: int) -> None:
        """Count the step and renormalise the prototypes the optimizer moved."""
        self.steps_done.fill_(step)
        self.normalise_prototypes()
