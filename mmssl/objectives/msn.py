"""MSN (Assran et al. 2022): Masked Siamese Networks, masked anchor views matching an EMA target over prototypes.

The anchor (student) branch encodes the second global view and every multi-crop local ("focal") view with a
random share ``mask_ratio`` of their patches dropped (:func:`drop_patches`, :meth:`Encoder.encode_visible`:
a ViT); the target branch, a :class:`mmssl.teacher.MomentumTeacher` copy of encoder and projector, encodes
the first global view whole. Both [CLS] embeddings are projected (:func:`msn_projector`), L2-normalised and
compared by cosine with ``K`` learnable, L2-normalised prototypes. Every anchor view is trained with the
cross-entropy to its image's target distribution, sharpened (``softmax(cos / (temperature *
sharpen_temperature))``, 0.1 x 0.25 = 0.025) and equipartitioned by Sinkhorn-Knopp over the global batch
(:func:`msn_targets`), plus the mean-entropy maximisation regulariser (:func:`me_max_penalty`), which spreads
the anchors' mean prediction over all prototypes (the mean taken over every process, with gradients).

Schedules, as the official ``msn_train.py``, each over ``schedule_stretch`` (1.25) times the run: the teacher
momentum rises linearly from 0.996 towards 1 (:class:`RunLinearSchedule`), and AdamW's weight decay follows a
cosine from ``train.weight_decay`` (0.04) towards ``objective.weight_decay_end`` (0.4), so neither reaches its end.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmssl.distributed import gather_with_grad, global_sum
from mmssl.encoder import Encoder
from mmssl.objectives.base import Objective
from mmssl.objectives.checks import check_momentum, check_positive
from mmssl.objectives.dino import cosine_value
from mmssl.objectives.losses import f32, full_precision
from mmssl.objectives.swav import sinkhorn
from mmssl.objectives.views import Branch, embedding_std, stack_views, views_of
from mmssl.teacher import MomentumTeacher, RunLinearSchedule
from mmssl.types import Batch, ObjectiveOutput

# ---------------------------------------------------------------- the loss


@full_precision
def prototype_logits(z: Tensor, prototypes: Tensor, temperature: float) -> Tensor:
    """``[N, K]``: cosines of the embeddings ``z`` (``[N, P]``) to the ``[K, P]`` prototypes, both L2-normalised
    here, divided by ``temperature``, in float32 under autocast."""
    return F.normalize(f32(z), dim=1) @ F.normalize(f32(prototypes), dim=1).T / temperature


@torch.no_grad()
def msn_targets(
    targets: Tensor,
    prototypes: Tensor,
    temperature: float = 0.1,
    sharpen_temperature: float = 0.25,
    sinkhorn_iterations: int = 3,
    gather: bool = True,
) -> Tensor:
    """MSN's targets (Assran et al. 2022, sec. 3): the target view's prototype distribution at ``temperature``,
    sharpened (``p^(1/T)``, renormalised), then equipartitioned by Sinkhorn-Knopp (the official ``use_sinkhorn``).

    Sharpening ``softmax(l)`` by ``T`` is ``softmax(l / T)``; its log goes to SwAV's
    :func:`mmssl.objectives.swav.sinkhorn` at ``epsilon = 1``, which exponentiates it back, so the iterations
    start from the sharpened probabilities as MSN's ``distributed_sinkhorn`` does, with the sums over every
    process when ``gather`` (targets take no gradient, so a plain all-reduce is right).

    Args:
        targets: ``[B, P]`` target embeddings.
        prototypes: ``[K, P]`` prototypes.
        temperature: ``tau`` (paper: 0.1).
        sharpen_temperature: ``T`` (paper: 0.25; the effective target temperature is ``tau T`` = 0.025).
        sinkhorn_iterations: 0 skips Sinkhorn-Knopp (paper: 3).
        gather: reduce Sinkhorn's sums over every process (no-op in one process).

    Returns:
        ``[B, K]`` targets in at least float32, each row summing to 1, without a gradient.

    Raises:
        ValueError: On temperatures <= 0.
    """
    if temperature <= 0 or sharpen_temperature <= 0:
        raise ValueError(f"temperatures must be > 0, got {temperature} and sharpen {sharpen_temperature}")
    logits = prototype_logits(targets, prototypes, temperature * sharpen_temperature)
    log_p = F.log_softmax(logits, dim=1)
    if sinkhorn_iterations == 0:
        return log_p.exp()
    return sinkhorn(log_p, epsilon=1.0, iterations=sinkhorn_iterations, gather=gather)


def global_mean_rows(x: Tensor) -> Tensor:
    """``[N, K] -> [K]``: the mean row over every process's rows, with gradients to every process.

    The per-process row sums are all-gathered with :func:`mmssl.distributed.gather_with_grad` (its backward sums
    every process's gradient into each one's rows), so under DDP's gradient averaging a loss of this mean gets
    exactly the gradient of one process on the global batch; a non-differentiable all-reduce would scale it by
    ``1 / world_size``.
    """
    total = gather_with_grad(x.sum(0, keepdim=True)).sum(0)  # [K]
    count = global_sum(torch.tensor(float(x.shape[0]), device=x.device))
    return total / count


def me_max_penalty(probs: Tensor, gather: bool = True) -> Tensor:
    """Mean-entropy maximisation (Assran et al. 2022, eq. 3): ``log K - H(mean_n p_n)`` >= 0, 0 when the anchors'
    mean prediction ``[K]`` over the global batch (every process when ``gather``) is uniform.

    Args:
        probs: ``[N, K]`` anchor predictions.
        gather: average over every process's anchors (:func:`global_mean_rows`).
    """
    mean = global_mean_rows(probs) if gather else probs.mean(0)
    return torch.special.xlogy(mean, mean).sum() + math.log(probs.shape[1])


@full_precision
def msn_loss(
    anchors: Tensor,
    targets: Tensor,
    prototypes: Tensor,
    temperature: float = 0.1,
    me_max_weight: float = 1.0,
    gather: bool = True,
) -> tuple[Tensor, Tensor, Tensor]:
    """MSN's loss (Assran et al. 2022, eq. 1-3; ``init_msn_loss`` of the official code, lightly's ``MSNLoss``).

    With ``p_a = softmax(cos(a, prototypes) / temperature)`` for each anchor view ``a`` of image ``b`` and ``q_b``
    the image's target (:func:`msn_targets`)::

        loss = mean over anchors of  -sum_k q_b[k] log p_a[k]   +   me_max_weight * (log K - H(mean_a p_a))

    The cross-entropy is a mean over this process's anchors (DDP's averaging makes it global); the me-max
    mean runs over the anchors of every process (:func:`global_mean_rows`).

    Args:
        anchors: ``[V, B, P]`` anchor embeddings of ``V`` views (the masked global view, then focal views).
        targets: ``[B, K]`` target distributions (:func:`msn_targets`; detached here).
        prototypes: ``[K, P]`` learnable prototypes.
        temperature: ``tau`` (paper: 0.1).
        me_max_weight: ``lambda`` of the regulariser (paper: 1); 0 leaves it out.
        gather: take the me-max mean over every process.

    Returns:
        ``(loss, cross_entropy, me_max)`` scalars.

    Raises:
        ValueError: On shapes that do not fit, or ``temperature <= 0``.
    """
    if anchors.ndim != 3 or prototypes.ndim != 2 or anchors.shape[2] != prototypes.shape[1]:
        raise ValueError(
            f"anchors [V, B, P] and prototypes [K, P] do not fit: {tuple(anchors.shape)}, {tuple(prototypes.shape)}"
        )
    if targets.shape != (anchors.shape[1], prototypes.shape[0]):
        raise ValueError(
            f"targets must be [B, K] = {(anchors.shape[1], prototypes.shape[0])}, got {tuple(targets.shape)}"
        )
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    log_p = F.log_softmax(prototype_logits(anchors.flatten(0, 1), prototypes, temperature), dim=1)  # [V B, K]
    cross = -(f32(targets.detach()).repeat(anchors.shape[0], 1) * log_p).sum(1).mean()
    me_max = me_max_penalty(log_p.exp(), gather) if me_max_weight > 0 else cross.new_zeros(())
    return cross + me_max_weight * me_max, cross, me_max


# ---------------------------------------------------------------- masking and heads


def drop_patches(view: Batch, ratio: float) -> Tensor:
    """MSN's random masking: the ``[B, K]`` indices of the units each image keeps, ``K = floor(T (1 - ratio))``
    drawn at random per image, ascending (the official ``patch_drop`` draws one subset per batch).

    Raises:
        ValueError: If the view has padding, or ``ratio`` keeps no unit of its ``T``.
    """
    b, t = view.padding_mask.shape
    if bool(view.padding_mask.any()):
        raise ValueError("msn drops a fixed share of every row's units and cannot take padded views")
    keep = int(t * (1.0 - ratio))
    if keep < 1:
        raise ValueError(f"objective.mask_ratio={ratio} drops all {t} units of a view; lower objective.mask_ratio")
    order = torch.rand(b, t, device=view.units.device).argsort(dim=1)
    return order[:, :keep].sort(dim=1).values


def msn_projector(in_dim: int, hidden_dim: int, out_dim: int, batch_norm: bool) -> nn.Sequential:
    """MSN's projection head: ``Linear-BN-GELU, Linear-BN-GELU, Linear`` (official ``fc1..fc3`` with ``use_bn``;
    lightly's ``MSNProjectionHead``), ``[N, in_dim] -> [N, out_dim]``. A linear layer before batch norm has no bias
    (the norm removes it), as :class:`mmssl.objectives.heads.MLPHead` and lightly's head."""
    layers: list[nn.Module] = []
    for a, b in ((in_dim, hidden_dim), (hidden_dim, hidden_dim)):
        layers += [nn.Linear(a, b, bias=not batch_norm), *([nn.BatchNorm1d(b)] if batch_norm else []), nn.GELU()]
    return nn.Sequential(*layers, nn.Linear(hidden_dim, out_dim))


# ---------------------------------------------------------------- the objective


@dataclass(frozen=True)
class MSNConfig:
    """MSN (Assran et al. 2022); defaults are the paper's ViT-S/16 settings (sec. 4, appendix C, ``msn_vits16.yaml``)."""

    name: str = "msn"
    projector_hidden_dim: int = 2048  # 3-layer MLP, batch norm at the input and hidden layers
    projector_dim: int = 256  # output_dim
    projector_batch_norm: bool = True  # use_bn
    num_prototypes: int = 1024  # K (ViT-S/16 and ViT-B/16)
    temperature: float = 0.1  # tau of anchors and targets
    sharpen_temperature: float = 0.25  # T: targets at tau x T = 0.025
    sinkhorn_iterations: int = 3  # use_sinkhorn=True (3 iterations); 0 turns it off
    me_max_weight: float = 1.0  # memax_weight (lambda)
    mask_ratio: float = 0.15  # patch_drop of every anchor view (ViT-S/16; the paper masks more in larger ViTs)
    base_momentum: float = 0.996  # teacher EMA, linearly towards final_momentum
    final_momentum: float = 1.0
    weight_decay_end: float | None = 0.4  # cosine from train.weight_decay (paper 0.04); None keeps it constant
    schedule_stretch: float = 1.25  # momentum and weight decay schedules span 1.25 x the run (official T_max)

    def __post_init__(self) -> None:
        check_positive(self, "projector_hidden_dim", "projector_dim", "num_prototypes")
        check_positive(self, "temperature", "sharpen_temperature", "schedule_stretch")
        check_momentum(self, "base_momentum", "final_momentum")
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ValueError(f"objective.mask_ratio must be in [0, 1), got {self.mask_ratio}")
        for key in ("sinkhorn_iterations", "me_max_weight"):
            if getattr(self, key) < 0:
                raise ValueError(f"objective.{key} must be >= 0, got {getattr(self, key)}")
        if self.weight_decay_end is not None and self.weight_decay_end < 0:
            raise ValueError(f"objective.weight_decay_end must be >= 0 (or null), got {self.weight_decay_end}")

    def check_recipe(self, recipe: Any) -> None:
        """The mask leaves a unit of the smallest view: the multi-crop local crops (``data.local_size`` pixels of
        ``encoder.patch_size``), where the recipe has them; the forward pass checks every view."""
        data, encoder = recipe.data, recipe.encoder
        if not getattr(data, "local_crops", 0) or not getattr(encoder, "patch_size", 0):
            return
        units = (data.local_size // encoder.patch_size) ** 2
        if int(units * (1.0 - self.mask_ratio)) < 1:
            raise ValueError(
                f"objective.mask_ratio={self.mask_ratio} drops all {units} patches of the local crops "
                f"(data.local_size={data.local_size}, encoder.patch_size={encoder.patch_size}); lower "
                "objective.mask_ratio or raise data.local_size"
            )


class MSN(Objective):
    """Masked anchor views predict the EMA target's sharpened, equipartitioned prototype distribution (see module
    docstring).

    Attributes:
        projector: the anchors' :func:`msn_projector`.
        prototypes: ``[K, P]`` learnable prototypes (normalised where used).
        teacher: EMA copy of encoder + projector (a :class:`Branch`), updated in :meth:`after_optimizer_step`.
    """

    def __init__(self, config: MSNConfig, encoder: Encoder) -> None:
        super().__init__(config, encoder)
        c = config
        self.projector = msn_projector(
            encoder.hidden_size, c.projector_hidden_dim, c.projector_dim, c.projector_batch_norm
        )
        bound = c.projector_dim**-0.5  # official: uniform in +-sqrt(1 / output_dim)
        self.prototypes = nn.Parameter(torch.empty(c.num_prototypes, c.projector_dim).uniform_(-bound, bound))
        self.prototypes.no_weight_decay = True  # not decayed (mmssl.optim.param_groups), as the official code
        schedule = RunLinearSchedule(c.base_momentum, c.final_momentum, c.schedule_stretch)
        self.teacher = MomentumTeacher(Branch(encoder, self.projector), schedule, train_mode=True)

    def forward(self, encoder: Encoder, batch: Batch) -> ObjectiveOutput:
        c = self.config
        views = views_of(batch, "msn")
        anchors = self.projector(self.encode_anchors(encoder, views[1:]))  # [V B, P], one batch norm over all
        targets = msn_targets(
            self.teacher(views[0]), self.prototypes, c.temperature, c.sharpen_temperature, c.sinkhorn_iterations
        )  # [B, K]: the whole first view through the teacher, no gradient
        anchors = anchors.unflatten(0, (len(views) - 1, -1))
        loss, cross, me_max = msn_loss(anchors, targets, self.prototypes, c.temperature, c.me_max_weight)
        logs = {
            "prototypes_used": F.one_hot(targets.argmax(1), c.num_prototypes).amax(0).float().mean(),
            "target_max": targets.max(1).values.mean(),  # 1 / K when uniform, 1 when one-hot
            "embedding_std": embedding_std(anchors[0].detach()),
            "momentum": self.teacher.momentum.clone(),
        }
        return ObjectiveOutput(loss=loss, terms={"msn": cross, "me_max": me_max}, logs=logs)

    def encode_anchors(self, encoder: Encoder, views: tuple[Batch, ...]) -> Tensor:
        """``[V B, D]`` [CLS] embeddings of the anchor views with ``mask_ratio`` of their patches dropped, each run
        of consecutive views of one grid (the masked global view, the focal views) encoded in one call."""
        runs: list[list[Batch]] = []
        for view in views:
            if runs and runs[-1][0].grid == view.grid and runs[-1][0].units.shape[1:] == view.units.shape[1:]:
                runs[-1].append(view)
            else:
                runs.append([view])
        summaries = []
        for run in runs:
            stacked = stack_views(run)
            groups = [(stacked, run)] if stacked is not None else [(v, [v]) for v in run]
            for batch, members in groups:
                visible = torch.cat([drop_patches(v, self.config.mask_ratio) for v in members])  # [n B, K]
                summaries.append(encoder.encode_visible(batch, visible).pooled())
        return torch.cat(summaries)

    def after_optimizer_step(self, encoder: Encoder, step: int, max_steps: int) -> None:
        self.teacher.update(Branch(encoder, self.projector), step, max_steps)

    def scheduled_weight_decay(self, base: float, position: int, max_steps: int) -> float:
        """AdamW's decay for optimizer step ``position``: the cosine from ``base`` towards
        ``objective.weight_decay_end`` over ``schedule_stretch`` times the run (:class:`mmssl.optim.WeightDecaySchedule`).
        """
        c = self.config
        span = max(1, int(c.schedule_stretch * max_steps))  # the official T_max: int(1.25 x iterations)
        return base if c.weight_decay_end is None else cosine_value(position, span, base, c.weight_decay_end)
