"""iBOT (Zhou et al. 2022): DINO's [CLS] self-distillation plus masked image modelling by self-distillation of patches.

The student encodes the two global views with BEiT-style blocks of patches replaced by the encoder's
mask token (:func:`ibot_masks`, :func:`mmssl.masking.block_mask_2d`), and the local views unmasked. The
teacher, a :class:`mmssl.teacher.MomentumTeacher` copy of the encoder and :class:`IBOTHead`, encodes the
global views unmasked. The loss is DINO's on the [CLS] (summary) scores of every view
(:func:`mmssl.objectives.dino.dino_loss`) plus, for each global view, the cross-entropy between the
teacher's and the student's distributions at every masked patch of that same view (:func:`ibot_patch_loss`),
each with its own centre (reduced over every process) and temperature.

``shared_head`` (the paper's setting) scores patches with the [CLS] head's last layer; otherwise patches
get their own weight-normalised last layer of ``patch_projector_dim`` prototypes, after the shared MLP,
as in iBOT's ``iBOTHead``. The encoder must accept a mask (:meth:`Encoder.encode`'s ``mask``: a ViT).

Efficiency, with the same values as the reference: the patch scores are computed at the masked patches
only (the student's head MLP too, unless ``head_batch_norm`` makes it mix the tokens), and the patch centre,
the mean of the teacher's scores over every patch, is the last layer applied to the mean normalised
bottleneck (the layer is linear and has no bias).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmssl.encoder import Encoder
from mmssl.masking import block_mask_2d
from mmssl.objectives.base import Objective
from mmssl.objectives.checks import check_positive
from mmssl.objectives.dino import (
    IMAGENET_EPOCH,
    TeacherCentre,
    check_dino_settings,
    cosine_value,
    dino_head,
    dino_loss,
    target_entropies,
    teacher_targets,
    teacher_temperature,
)
from mmssl.objectives.heads import WeightNormLinear
from mmssl.objectives.losses import f32, full_precision
from mmssl.objectives.views import encode_crops, stack_views, views_of
from mmssl.teacher import CosineSchedule, MomentumTeacher
from mmssl.types import Batch, ObjectiveOutput


@full_precision
def ibot_patch_loss(
    teacher_patches: Tensor,
    student_patches: Tensor,
    mask: Tensor,
    center: Tensor,
    teacher_temp: float,
    student_temp: float,
) -> Tensor:
    """iBOT's masked-patch self-distillation (Zhou et al. 2022, eq. 2; ``iBOTLoss`` of the official code).

    With ``M_n`` the masked patches of image ``n``, ``P_t`` the teacher's centred, sharpened distribution
    at a patch of the unmasked view and ``log P_s`` the student's at the same patch of the masked view::

        loss = (1 / N) sum_n  (1 / max(|M_n|, 1)) sum_{t in M_n}  - sum_k P_t[n, t, k] log P_s[n, t, k]

    so an image without masked patches adds 0 but still counts in ``N`` (iBOT masks half of the images).

    Args:
        teacher_patches: ``[M, K]`` teacher scores at the masked patches, in the order of ``x[mask]``.
        student_patches: ``[M, K]`` student scores at the same patches.
        mask: ``[N, T]`` bool, True at the ``M`` masked patches.
        center: ``[K]`` the patch centre.
        teacher_temp: ``tau_t`` for patches (iBOT: 0.04 -> 0.07).
        student_temp: ``tau_s`` (0.1).

    Returns:
        Scalar loss, the mean over the ``N`` images of this process (DDP's averaging makes it global).

    Raises:
        ValueError: On shapes that do not fit the mask or the centre.
    """
    m = int(mask.sum())
    if mask.ndim != 2 or teacher_patches.shape != student_patches.shape or teacher_patches.shape[0] != m:
        raise ValueError(
            f"teacher and student patches must both be [M, K] with M = {m} masked patches of the [N, T] mask, got "
            f"{tuple(teacher_patches.shape)}, {tuple(student_patches.shape)} and mask {tuple(mask.shape)}"
        )
    if center.shape != teacher_patches.shape[1:]:
        raise ValueError(f"center must be [K] = {tuple(teacher_patches.shape[1:])}, got {tuple(center.shape)}")
    targets = teacher_targets(teacher_patches, center, teacher_temp)
    cross = -(targets * F.log_softmax(f32(student_patches) / student_temp, dim=-1)).sum(-1)  # [M]
    weight = (1.0 / mask.sum(1, keepdim=True).clamp(min=1)).expand_as(mask)[mask]  # 1 / |M_n| at each patch
    return (cross * weight).sum() / mask.shape[0]


def ibot_masks(view: Batch, probability: float, ratio: tuple[float, float], min_block: int) -> Tensor:
    """iBOT's prediction masks for one global view: each image is masked with ``probability``, by BEiT blocks
    (:func:`mmssl.masking.block_mask_2d`) covering a fraction of its patches drawn uniformly from ``ratio``.

    Returns:
        ``[B, T]`` bool on the view's device, never True at units that are not maskable.

    Raises:
        ValueError: If the view has no 2-D grid of units.
    """
    if view.grid is None:
        raise ValueError("ibot masks blocks of units on a 2-D grid (Batch.grid: image patches); these units have none")
    rows, cols = view.grid
    chosen = (torch.rand(view.batch_size) < probability).tolist()
    ratios = (ratio[0] + (ratio[1] - ratio[0]) * torch.rand(view.batch_size)).tolist()
    masks = torch.zeros(view.batch_size, rows * cols, dtype=torch.bool)
    for i in (i for i, c in enumerate(chosen) if c):
        masks[i] = block_mask_2d(1, rows, cols, ratio=ratios[i], min_block=min_block)[0]
    return masks.to(view.units.device) & view.maskable


@dataclass(frozen=True)
class IBOTConfig:
    """iBOT (Zhou et al. 2022); defaults are the paper's ViT-S/16 settings (sec. 4, appendix, ``main_ibot.py``)."""

    name: str = "ibot"
    projector_hidden_dim: int = 2048
    bottleneck_dim: int = 256
    projector_dim: int = 8192  # K of the [CLS] head (out_dim)
    patch_projector_dim: int | None = None  # K of the patch layer when not shared (patch_out_dim 8192); None: K
    shared_head: bool = True  # patches scored by the [CLS] head's last layer (the paper's ViT-S/B setting)
    head_layers: int = 3
    head_batch_norm: bool = False  # norm_in_head (off in the paper's runs); without it the student's MLP runs on the
    # masked patches only, with it on every patch ([CLS] and patches normalised separately)
    norm_last_layer: bool = True  # the ViT-S/16 runs use false (learnt prototype norms), less stable
    student_temp: float = 0.1
    teacher_temp: float = 0.07  # [CLS], after warmup
    teacher_patch_temp: float = 0.07  # patches, after warmup
    warmup_teacher_temp: float = 0.04  # start of both warmups (warmup_teacher_temp = warmup_teacher_patch_temp)
    teacher_temp_warmup_steps: int = 30 * IMAGENET_EPOCH  # 30 epochs
    center_momentum: float = 0.9
    patch_center_momentum: float = 0.9
    base_momentum: float = 0.996
    final_momentum: float = 1.0
    freeze_last_layer_steps: int = IMAGENET_EPOCH  # the first epoch
    weight_decay_end: float | None = 0.4  # cosine from train.weight_decay (0.04); None keeps it constant
    cls_weight: float = 1.0  # lambda_1
    patch_weight: float = 1.0  # lambda_2
    mask_probability: float = 0.5  # share of the images masked (pred_ratio 0 or 0.3)
    mask_ratio: tuple[float, float] = (0.1, 0.5)  # masked fraction of an image, uniform (pred_ratio 0.3 +- 0.2)
    min_block: int = 4  # smallest block of patches (iBOT's MaskingGenerator: min_num_patches 4)

    def __post_init__(self) -> None:
        check_dino_settings(self)
        check_positive(self, "teacher_patch_temp", "min_block")
        if self.patch_projector_dim is not None and self.patch_projector_dim < 1:
            raise ValueError(f"objective.patch_projector_dim must be >= 1 (or null), got {self.patch_projector_dim}")
        if min(self.cls_weight, self.patch_weight) < 0 or self.cls_weight + self.patch_weight == 0:
            raise ValueError("objective.cls_weight and objective.patch_weight must be >= 0, not both 0")
        if not 0.0 <= self.mask_probability <= 1.0:
            raise ValueError(f"objective.mask_probability must be in [0, 1], got {self.mask_probability}")
        lo, hi = self.mask_ratio
        if not 0.0 < lo <= hi < 1.0:
            raise ValueError(f"objective.mask_ratio must be (min, max) with 0 < min <= max < 1, got {self.mask_ratio}")


class IBOTHead(nn.Module):
    """iBOT's head: DINO's head for the [CLS] summary, and for patch tokens the same MLP and either the same last
    layer (``shared_head``) or one of their own."""

    def __init__(self, config: IBOTConfig, in_dim: int) -> None:
        super().__init__()
        self.dino = dino_head(config, in_dim, config.head_batch_norm)
        patch_dim = config.patch_projector_dim or config.projector_dim
        self.patch_layer = (
            None
            if config.shared_head
            else WeightNormLinear(config.bottleneck_dim, patch_dim, learn_norm=not config.norm_last_layer)
        )

    @property
    def patch_last_layer(self) -> WeightNormLinear:
        return self.dino.last_layer if self.patch_layer is None else self.patch_layer

    def forward(
        self, summary: Tensor, patches: Tensor, select: Tensor, freeze_last_layer: bool = False, mean: bool = False
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """Scores of the summaries ``[B, D] -> [B, K]`` and of the patches ``[B, T, D]`` at ``select`` (``[B, T]``
        bool) ``[M, Kp]``; with ``mean``, also each image's mean patch score ``[B, Kp]`` (the patch centre's input:
        the last layer of the mean bottleneck, as the layer is linear), which runs the MLP on every patch."""
        cls = self.dino(summary, freeze_last_layer)
        layer = self.patch_last_layer
        if not (mean or self.dino.batch_norm):  # the MLP is per patch: run it at the selected ones only
            return cls, layer(self.dino.bottleneck(patches[select]), frozen=freeze_last_layer), None
        z = self.dino.bottleneck(patches)  # [B, T, bottleneck]
        return cls, layer(z[select], frozen=freeze_last_layer), layer(z.mean(1), frozen=freeze_last_layer)


class TokenBranch(nn.Module):
    """Encoder then :class:`IBOTHead` on a (masked) view: the branch iBOT's teacher copies."""

    def __init__(self, encoder: Encoder, head: IBOTHead) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head

    def forward(
        self, view: Batch, mask: Tensor | None, select: Tensor, freeze_last_layer: bool = False, mean: bool = False
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """``(cls [B, K], patches at select [M, Kp], mean patch score [B, Kp] or None)`` of ``view`` encoded under
        ``mask`` (:meth:`IBOTHead.forward`)."""
        out = self.encoder.encode(view, mask)
        return self.head(out.pooled(), out.hidden, select, freeze_last_layer, mean)


class IBOT(Objective):
    """DINO's [CLS] loss plus masked patch self-distillation (Zhou et al. 2022):
    ``cls_weight * dino_loss + patch_weight * ibot_patch_loss``, the patch term averaged over the two global views.

    Attributes:
        head: the student's :class:`IBOTHead`.
        teacher: EMA copy of encoder + head (a :class:`TokenBranch`), updated in :meth:`after_optimizer_step`.
        centre, patch_centre: the [CLS] and patch :class:`TeacherCentre`.
        step: completed optimizer steps (a persistent buffer): the position of the schedules.
    """

    step: Tensor

    def __init__(self, config: IBOTConfig, encoder: Encoder) -> None:
        super().__init__(config, encoder)
        self.head = IBOTHead(config, encoder.hidden_size)
        schedule = CosineSchedule(config.base_momentum, config.final_momentum)
        self.teacher = MomentumTeacher(TokenBranch(encoder, self.head), schedule, train_mode=True)
        self.centre = TeacherCentre(config.projector_dim, config.center_momentum)
        patch_dim = self.head.patch_last_layer.direction.shape[0]
        self.patch_centre = TeacherCentre(patch_dim, config.patch_center_momentum)
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    def temperatures(self) -> tuple[float, float]:
        """``(tau_t for [CLS], tau_t for patches)`` at the current step."""
        c, step = self.config, int(self.step)
        warmup = c.teacher_temp_warmup_steps
        return (
            teacher_temperature(step, warmup, c.warmup_teacher_temp, c.teacher_temp),
            teacher_temperature(step, warmup, c.warmup_teacher_temp, c.teacher_patch_temp),
        )

    def forward(self, encoder: Encoder, batch: Batch) -> ObjectiveOutput:
        c = self.config
        views = views_of(batch, "ibot")
        globals_ = stack_views(views[:2])
        if globals_ is None:
            raise ValueError("ibot needs two global views of one size (data.views), got views of different grids")
        mask = torch.cat([ibot_masks(v, c.mask_probability, c.mask_ratio, c.min_block) for v in views[:2]])
        frozen = int(self.step) < c.freeze_last_layer_steps
        s_cls, s_patch, _ = TokenBranch(encoder, self.head)(globals_, mask, mask, frozen)
        student = torch.cat([s_cls, *self.local_scores(encoder, views[2:], frozen)]).unflatten(0, (len(views), -1))
        t_cls, t_patch, t_patch_mean = self.teacher(globals_, None, mask, mean=True)
        temp, patch_temp = self.temperatures()
        cls_loss = dino_loss(t_cls.unflatten(0, (2, -1)), student, self.centre.center, temp, c.student_temp)
        patch_loss = ibot_patch_loss(t_patch, s_patch, mask, self.patch_centre.center, patch_temp, c.student_temp)
        if self.training:
            self.centre.accumulate(t_cls)
            self.patch_centre.accumulate(t_patch_mean)
        logs = {
            **target_entropies(teacher_targets(t_cls, self.centre.center, temp)),
            "masked_fraction": mask.float().mean(),
            "teacher_temp": torch.tensor(temp),
            "momentum": self.teacher.momentum.clone(),
        }
        loss = c.cls_weight * cls_loss + c.patch_weight * patch_loss
        return ObjectiveOutput(loss=loss, terms={"cls": cls_loss, "patch": patch_loss}, logs=logs)

    def local_scores(self, encoder: Encoder, local_views: Sequence[Batch], frozen: bool) -> list[Tensor]:
        """``[L B, K]`` [CLS] scores of the unmasked local views (none without local views)."""
        if not local_views:
            return []
        summaries = torch.cat([out.pooled() for out in encode_crops(encoder, local_views)])
        return [self.head.dino(summaries, frozen)]

    def after_optimizer_step(self, encoder: Encoder, step: int, max_steps: int) -> None:
        self.teacher.update(TokenBranch(encoder, self.head), step, max_steps)
        self.centre.update()
        self.patch_centre.update()
        self.step.fill_(step)

    def scheduled_weight_decay(self, base: float, position: int, max_steps: int) -> float:
        """AdamW's decay for optimizer step ``position``: the cosine from ``base`` to ``objective.weight_decay_end``
        (:class:`mmssl.optim.WeightDecaySchedule`)."""
        end = self.config.weight_decay_end
        return base if end is None else cosine_value(position, max_steps, base, end)
