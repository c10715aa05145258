"""DINO (Caron et al. 2021): self-distillation with no labels, a student matching a centred, sharpened EMA teacher.

The student sees every view (two global crops, then any multi-crop local ones); the teacher, a
:class:`mmssl.teacher.MomentumTeacher` copy of the student's encoder and :class:`DINOHead`, sees the
global views only. Each student view is trained towards the teacher's distribution over ``K``
prototypes of every *other* global view (:func:`dino_loss`). Collapse is avoided by centring the
teacher's scores with an EMA of their batch mean (:class:`TeacherCentre`, reduced over every process)
and sharpening them with a low temperature, warmed up linearly (:func:`teacher_temperature`).

Training details of the paper, each a setting: the teacher momentum rises from 0.996 to 1 by a cosine;
the last layer of the head is frozen for the first steps (:meth:`WeightNormLinear.forward`: its
parameters get no gradient, so AdamW leaves them untouched); the weight decay follows a cosine from
``train.weight_decay`` to ``objective.weight_decay_end`` (:meth:`DINO.scheduled_weight_decay`, which the
trainer applies before each optimizer step). Crops of one resolution are encoded together, as DINO's
``MultiCropWrapper`` does (:func:`encode_crops`), so a ResNet's batch norm sees both global crops at once.

Schedules count optimizer steps; the paper's counts are in epochs (ImageNet at batch 1024: 1,251 steps
each). The step, the centre and the teacher are module state, so a resumed run continues exactly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmssl.distributed import global_sum
from mmssl.encoder import Encoder
from mmssl.objectives.base import Objective
from mmssl.objectives.checks import check_momentum, check_positive
from mmssl.objectives.heads import DINOHead
from mmssl.objectives.losses import f32, full_precision
from mmssl.objectives.views import Branch, embedding_std, encode_crops, stack_views, views_of
from mmssl.teacher import CosineSchedule, MomentumTeacher
from mmssl.types import Batch, ObjectiveOutput

IMAGENET_EPOCH = 1251  # optimizer steps per ImageNet epoch at DINO's batch of 1024 (1,281,167 images)

# ---------------------------------------------------------------- the loss


def teacher_targets(teacher_logits: Tensor, center: Tensor, temperature: float) -> Tensor:
    """DINO's teacher distribution: ``softmax((t - c) / tau_t)`` over the last dim, float32, without a gradient.

    Args:
        teacher_logits: ``[..., K]`` teacher scores.
        center: ``[K]`` the running centre.
        temperature: ``tau_t`` (sharpening: DINO 0.04 -> 0.07).
    """
    return F.softmax((f32(teacher_logits.detach()) - center) / temperature, dim=-1)


@full_precision
def dino_loss(
    teacher_logits: Tensor, student_logits: Tensor, center: Tensor, teacher_temp: float, student_temp: float
) -> Tensor:
    """DINO's loss (Caron et al. 2021, eq. 3 and Algorithm 1), as in the official ``DINOLoss``.

    With ``P_t = softmax((t - c) / tau_t)`` the teacher's targets of global view ``g`` and
    ``log P_s = log_softmax(s / tau_s)`` the student's scores of view ``v``::

        loss = mean over pairs (g, v), v != g, of  mean_b  - sum_k P_t[g, b, k] log P_s[v, b, k]

    The student's first ``G`` views are the teacher's ``G`` global views, so ``v != g`` leaves out a
    view matched with itself: two global and ``L`` local views make ``2 (L + 1)`` pairs. The mean over
    the local batch becomes the global mean under DDP's gradient averaging.

    Args:
        teacher_logits: ``[G, B, K]`` teacher scores of the global views (no gradient).
        student_logits: ``[V, B, K]`` student scores of every view, the ``G`` global ones first.
        center: ``[K]`` the teacher centre ``c``.
        teacher_temp: ``tau_t``.
        student_temp: ``tau_s`` (DINO: 0.1).

    Returns:
        Scalar loss.

    Raises:
        ValueError: On shapes that do not fit, no pair of different views, or a temperature <= 0.
    """
    if teacher_logits.ndim != 3 or student_logits.ndim != 3 or student_logits.shape[1:] != teacher_logits.shape[1:]:
        raise ValueError(
            "teacher_logits [G, B, K] and student_logits [V, B, K] do not fit: "
            f"{tuple(teacher_logits.shape)} and {tuple(student_logits.shape)}"
        )
    (g, b, k), v = teacher_logits.shape, student_logits.shape[0]
    if center.shape != (k,):
        raise ValueError(
            f"center must be [K] for teacher scores {tuple(teacher_logits.shape)}, got {tuple(center.shape)}"
        )
    if v < g or v < 2:
        raise ValueError(f"dino_loss needs the G={g} teacher views among V >= 2 student views, got V={v}")
    if teacher_temp <= 0 or student_temp <= 0:
        raise ValueError(f"temperatures must be > 0, got teacher {teacher_temp}, student {student_temp}")
    targets = teacher_targets(teacher_logits, center, teacher_temp)  # [G, B, K]
    log_p = F.log_softmax(f32(student_logits) / student_temp, dim=-1)  # [V, B, K]
    cross = -torch.einsum("gbk,vbk->gv", targets, log_p) / b  # [G, V]: mean over the batch
    other = ~torch.eye(g, v, dtype=torch.bool, device=cross.device)
    return cross[other].mean()


class TeacherCentre(nn.Module):
    """DINO's centre: ``c <- m c + (1 - m) mean(t)``, the mean over every teacher score of the global batch.

    :meth:`accumulate` adds a forward's teacher scores; :meth:`update` (after the optimizer step) sums them over
    every process (one all-reduce of ``K + 1`` numbers) and moves the centre. Micro-batches of one step under
    gradient accumulation thus make one update with their common mean.

    Args:
        dim: ``K``.
        momentum: ``m`` (DINO: 0.9).

    Attributes:
        center: ``[K]`` float32, a persistent buffer (in every checkpoint).
    """

    center: Tensor

    def __init__(self, dim: int, momentum: float) -> None:
        super().__init__()
        self.momentum = momentum
        self.register_buffer("center", torch.zeros(dim))
        self._sum: Tensor | None = None  # [K + 1]: the scores' sum, then their count

    @torch.no_grad()
    def accumulate(self, teacher_logits: Tensor) -> None:
        """Add ``[..., K]`` teacher scores to the pending batch mean."""
        flat = teacher_logits.detach().float().reshape(-1, self.center.shape[0])
        row = torch.cat([flat.sum(0), flat.new_tensor([flat.shape[0]])])
        self._sum = row if self._sum is None else self._sum + row

    @torch.no_grad()
    def update(self) -> None:
        """Move the centre towards the global mean of the accumulated scores (nothing pending: no change)."""
        if self._sum is None:
            return
        total = global_sum(self._sum)  # the same on every process
        self.center.mul_(self.momentum).add_(total[:-1] / total[-1].clamp(min=1.0), alpha=1.0 - self.momentum)
        self._sum = None


# ---------------------------------------------------------------- schedules


def teacher_temperature(position: int, warmup_steps: int, start: float, end: float) -> float:
    """``start -> end`` linearly over ``warmup_steps`` optimizer steps, then ``end`` (DINO: 0.04 -> 0.07, 30 epochs)."""
    if position >= warmup_steps:
        return end
    return start + (end - start) * position / warmup_steps


def cosine_value(position: int, max_steps: int, start: float, end: float) -> float:
    """``start -> end`` by a half cosine over ``max_steps`` (DINO's ``cosine_scheduler``, without warmup)."""
    progress = min(position, max_steps) / max(max_steps, 1)
    return end + (start - end) * (1.0 + math.cos(math.pi * progress)) / 2.0


# ---------------------------------------------------------------- the objective


@dataclass(frozen=True)
class DINOConfig:
    """DINO (Caron et al. 2021); defaults are the paper's ViT-S/16 settings (sec. 3.1, appendix, ``main_dino.py``)."""

    name: str = "dino"
    projector_hidden_dim: int = 2048  # the head's 3-layer MLP
    bottleneck_dim: int = 256  # L2-normalised bottleneck before the last layer
    projector_dim: int = 65536  # K, the prototypes (outputs of the weight-normalised last layer)
    head_layers: int = 3
    head_batch_norm: bool = False  # use_bn_in_head (off for ViTs)
    norm_last_layer: bool = True  # prototypes of norm 1 (main_dino default; False is better for ViT-S, less stable)
    student_temp: float = 0.1
    teacher_temp: float = 0.07  # after warmup (main_dino default 0.04; the paper's ViT-S runs 0.07)
    warmup_teacher_temp: float = 0.04
    teacher_temp_warmup_steps: int = 30 * IMAGENET_EPOCH  # 30 epochs
    center_momentum: float = 0.9
    base_momentum: float = 0.996  # teacher EMA, raised to final_momentum by a cosine
    final_momentum: float = 1.0
    freeze_last_layer_steps: int = IMAGENET_EPOCH  # the first epoch
    weight_decay_end: float | None = 0.4  # cosine from train.weight_decay (paper 0.04); None keeps it constant

    def __post_init__(self) -> None:
        check_dino_settings(self)


def check_dino_settings(config: DINOConfig) -> None:
    """The checks of :class:`DINOConfig` (iBOT's config shares them); messages name ``objective.<key>``."""
    check_positive(config, "projector_hidden_dim", "bottleneck_dim", "projector_dim", "head_layers")
    check_positive(config, "student_temp", "teacher_temp", "warmup_teacher_temp")
    check_momentum(config, "center_momentum", "base_momentum", "final_momentum")
    for key in ("teacher_temp_warmup_steps", "freeze_last_layer_steps"):
        if getattr(config, key) < 0:
            raise ValueError(f"objective.{key} must be >= 0, got {getattr(config, key)}")
    if config.weight_decay_end is not None and config.weight_decay_end < 0:
        raise ValueError(f"objective.weight_decay_end must be >= 0 (or null), got {config.weight_decay_end}")


def dino_head(config: DINOConfig, in_dim: int, batch_norm: bool) -> DINOHead:
    """The configured :class:`DINOHead` reading ``in_dim`` features."""
    return DINOHead(
        in_dim,
        config.projector_hidden_dim,
        config.bottleneck_dim,
        config.projector_dim,
        config.head_layers,
        batch_norm,
        config.norm_last_layer,
    )


class DINO(Objective):
    """Student views match the centred, sharpened teacher distribution of every other global view (:func:`dino_loss`).

    Attributes:
        head: the student's :class:`DINOHead`.
        teacher: EMA copy of encoder + head (a :class:`Branch`), updated in :meth:`after_optimizer_step`.
        centre: the :class:`TeacherCentre`.
        step: completed optimizer steps (a persistent buffer): the position of the schedules.
    """

    step: Tensor

    def __init__(self, config: DINOConfig, encoder: Encoder) -> None:
        super().__init__(config, encoder)
        self.head = dino_head(config, encoder.hidden_size, config.head_batch_norm)
        schedule = CosineSchedule(config.base_momentum, config.final_momentum)
        self.teacher = MomentumTeacher(Branch(encoder, self.head), schedule, train_mode=True)
        self.centre = TeacherCentre(config.projector_dim, config.center_momentum)
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    def teacher_temp(self) -> float:
        """``tau_t`` at the current step."""
        c = self.config
        return teacher_temperature(int(self.step), c.teacher_temp_warmup_steps, c.warmup_teacher_temp, c.teacher_temp)

    def last_layer_frozen(self) -> bool:
        return int(self.step) < self.config.freeze_last_layer_steps

    def forward(self, encoder: Encoder, batch: Batch) -> ObjectiveOutput:
        views = views_of(batch, "dino")
        features = [out.pooled() for out in encode_crops(encoder, views)]  # V x [B, D]
        student = self.head(torch.cat(features), self.last_layer_frozen()).unflatten(0, (len(views), -1))
        teacher = self.teacher_logits(views[:2])  # [2, B, K]
        temp = self.teacher_temp()
        loss = dino_loss(teacher, student, self.centre.center, temp, self.config.student_temp)
        if self.training:
            self.centre.accumulate(teacher)
        logs = {
            **target_entropies(teacher_targets(teacher, self.centre.center, temp)),
            "teacher_temp": torch.tensor(temp),
            "momentum": self.teacher.momentum.clone(),
            "embedding_std": embedding_std(features[0]),
        }
        return ObjectiveOutput(loss=loss, terms={"dino": loss}, logs=logs)

    def teacher_logits(self, global_views: Sequence[Batch]) -> Tensor:
        """``[G, B, K]``: the teacher's scores of the global views, encoded together when they stack."""
        stacked = stack_views(global_views)
        if stacked is None:
            return torch.stack([self.teacher(v) for v in global_views])
        return self.teacher(stacked).unflatten(0, (len(global_views), -1))

    def after_optimizer_step(self, encoder: Encoder, step: int, max_steps: int) -> None:
        self.teacher.update(Branch(encoder, self.head), step, max_steps)
        self.centre.update()
        self.step.fill_(step)

    def scheduled_weight_decay(self, base: float, position: int, max_steps: int) -> float:
        """AdamW's decay for optimizer step ``position`` (0-based): DINO's cosine from ``base`` to
        ``objective.weight_decay_end`` (:class:`mmssl.optim.WeightDecaySchedule`)."""
        end = self.config.weight_decay_end
        return base if end is None else cosine_value(position, max_steps, base, end)


@torch.no_grad()
def target_entropies(targets: Tensor) -> dict[str, Tensor]:
    """Collapse diagnostics of teacher targets ``[..., K]`` (Caron et al. 2021, sec. 5.3, fig. 7), in nats:
    ``teacher_entropy``, the mean entropy of one target (0: one-hot, sharpening wins), and ``teacher_batch_entropy``,
    the entropy of their mean (0: every sample on one prototype; ``log K``: uniform use)."""
    flat = targets.reshape(-1, targets.shape[-1])
    entropy = -(flat * flat.clamp(min=1e-12).log()).sum(-1).mean()
    mean = flat.mean(0)
    return {"teacher_entropy": entropy, "teacher_batch_entropy": -(mean * mean.clamp(min=1e-12).log()).sum()}
