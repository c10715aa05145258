"""Joint-embedding objectives on augmented views: contrastive, bootstrap, redundancy reduction.

SimCLR, MoCo v2, MoCo v3 (contrastive); BYOL, SimSiam (bootstrap); Barlow Twins, VICReg
(redundancy reduction). None of them knows a modality: the domain's per-step transform puts
the augmented views of the batch's samples in ``batch.extras["views"]``, a tuple of
:class:`Batch`, and a view's representation is ``encoder.encode(view).pooled()``
(``[B, encoder.hidden_size]``). The math lives in :mod:`mmssl.objectives.functional`, the
heads, EMA teacher and queue in :mod:`mmssl.objectives.components`.

Views: the first two are the global views. SimCLR and BYOL also take multi-crop local views
(Caron et al. 2020, sec. 3.3), each paired with both global views; the other methods use
exactly two views and say so when given more. Views are encoded one at a time, so batch
norm (in a ResNet or a projector) normalises over the samples of one view.

Teachers (MoCo, BYOL) are :class:`EMATeacher` copies of the student's encoder and projector,
made at construction and moved towards the student only in :meth:`after_optimizer_step`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmssl.encoder import Encoder
from mmssl.objectives.base import Objective
from mmssl.objectives.components import HEAD_SHAPES, EMATeacher, MemoryQueue, MLPHead, cosine_momentum
from mmssl.objectives.functional import (
    barlow_twins_loss,
    byol_loss,
    info_nce,
    moco_v3_loss,
    nt_xent,
    simsiam_loss,
    vicreg_loss,
)
from mmssl.registry import OBJECTIVES, ObjectiveSpec
from mmssl.types import Batch, ObjectiveOutput

# ---------------------------------------------------------------- shared helpers


def views_of(batch: Batch, objective: str, exactly_two: bool = False) -> tuple[Batch, ...]:
    """The augmented views in ``batch.extras["views"]``, checked.

    Raises:
        ValueError: If there are fewer than two views, or more than two when ``exactly_two``.
    """
    views = batch.extras.get("views")
    if views is None or len(views) < 2:
        got = "none" if views is None else len(views)
        raise ValueError(f"{objective} needs 2 augmented views in batch.extras['views'] (got {got}); "
                         "set data.views in the recipe")
    if not all(isinstance(v, Batch) for v in views):
        raise ValueError(f"batch.extras['views'] must be a tuple of Batch, got {[type(v).__name__ for v in views]}")
    if exactly_two and len(views) != 2:
        raise ValueError(f"{objective} uses exactly two views, got {len(views)} (only simclr and byol take "
                         "multi-crop local views); set data.views to a two-view pipeline")
    return tuple(views)


def represent(encoder: Encoder, view: Batch) -> Tensor:
    """``[B, D]``: the encoder's whole-input representation of one view."""
    return encoder.encode(view).pooled()


def global_pairs(num_views: int) -> list[tuple[int, int]]:
    """Unordered view pairs of multi-crop: the two global views, then each local view with each global one."""
    return [(0, 1)] + [(g, v) for v in range(2, num_views) for g in (0, 1)]


@torch.no_grad()
def contrastive_accuracy(query: Tensor, key: Tensor, negatives: Tensor | None = None) -> Tensor:
    """Fraction of queries whose most similar candidate (cosine) is their own key.

    Candidates are the keys of this process's batch, or with ``negatives`` (``[K, D]``, a
    MoCo queue) the own key and the queue, as in MoCo's logits.
    """
    q, k = F.normalize(query.float(), dim=1), F.normalize(key.float(), dim=1)
    if negatives is None:
        return ((q @ k.T).argmax(1) == torch.arange(q.shape[0], device=q.device)).float().mean()
    hardest = (q @ F.normalize(negatives.float(), dim=1).T).max(1).values
    return ((q * k).sum(1) > hardest).float().mean()


@torch.no_grad()
def embedding_std(z: Tensor) -> Tensor:
    """Mean per-feature std of the L2-normalised embeddings ``[B, D]``.

    About ``1 / sqrt(D)`` for well-spread embeddings, 0 at collapse (Chen & He 2021, sec. 4.1).
    """
    return F.normalize(z.float(), dim=1).std(dim=0).mean()


def _head(shape: str, in_dim: int, hidden_dim: int, out_dim: int) -> MLPHead:
    """The published head ``HEAD_SHAPES[shape]`` (layers, batch norms) with the configured widths."""
    return dataclasses.replace(HEAD_SHAPES[shape], hidden_dim=hidden_dim, out_dim=out_dim).build(in_dim)


def _check_positive(config: object, *names: str) -> None:
    for name in names:
        value = getattr(config, name)
        if value <= 0:
            raise ValueError(f"objective.{name} must be > 0, got {value}")


def _check_momentum(config: object, *names: str) -> None:
    for name in names:
        value = getattr(config, name)
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"objective.{name} must be in [0, 1], got {value}")


class Branch(nn.Module):
    """Encoder then projector: ``view -> [B, P]``, the branch an EMA teacher copies."""

    def __init__(self, encoder: Encoder, projector: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.projector = projector

    def forward(self, view: Batch) -> Tensor:
        return self.projector(represent(self.encoder, view))


class MomentumTeacher(nn.Module):
    """An EMA copy of the student's encoder and projector with its momentum schedule.

    The momentum follows :func:`cosine_momentum` from ``base`` to ``final`` (constant when
    they are equal). The update after the trainer's ``step``-th optimizer step (1-based)
    uses the paper's 0-based step ``step - 1``, so the first update uses exactly ``base``.
    The teacher follows its parent's train mode (batch statistics in its batch norms, as in
    BYOL and MoCo) and its batch-norm buffers are copied from the student at each update.

    Args:
        encoder: the student encoder, deep-copied here.
        projector: the student projector, deep-copied here.
        base: momentum of the first update.
        final: momentum at the last step.

    Attributes:
        momentum: the momentum of the latest update (``base`` before any), a saved buffer.
    """

    momentum: Tensor

    def __init__(self, encoder: Encoder, projector: nn.Module, base: float, final: float) -> None:
        super().__init__()
        self.ema = EMATeacher(Branch(encoder, projector), train_mode=True)
        self.base, self.final = base, final
        self.register_buffer("momentum", torch.tensor(base))

    def forward(self, view: Batch) -> Tensor:
        """``[B, P]`` teacher projections of ``view``, without a graph."""
        return self.ema(view)

    def update(self, encoder: Encoder, projector: nn.Module, step: int, max_steps: int) -> None:
        """Move the teacher towards the (unwrapped) student ``encoder`` + ``projector``."""
        momentum = cosine_momentum(max(step - 1, 0), max_steps, self.base, self.final)
        self.ema.update(Branch(encoder, projector), momentum)
        self.momentum.fill_(momentum)


# ---------------------------------------------------------------- contrastive


@dataclass(frozen=True)
class SimCLRConfig:
    """SimCLR (Chen et al. 2020)."""

    name: str = "simclr"
    temperature: float = 0.5  # Chen et al. 2020: 0.5 for CIFAR-10 (0.1 for ImageNet with 4096-sample batches)
    projector_hidden_dim: int = HEAD_SHAPES["simclr_projector"].hidden_dim  # 2048, sec. 2.1
    projector_dim: int = HEAD_SHAPES["simclr_projector"].out_dim  # 128

    def __post_init__(self) -> None:
        _check_positive(self, "temperature", "projector_hidden_dim", "projector_dim")


class SimCLR(Objective):
    """NT-Xent between the projections of two views (Chen et al. 2020, eq. 1).

    With multi-crop views the loss is the mean of :func:`nt_xent` over :func:`global_pairs`
    (each pair is already symmetric: both views are anchors); two views give ``nt_xent(z1, z2)``.
    """

    def __init__(self, config: SimCLRConfig, encoder: Encoder) -> None:
        super().__init__(config, encoder)
        self.projector = _head("simclr_projector", encoder.hidden_size, config.projector_hidden_dim,
                               config.projector_dim)

    def forward(self, encoder: Encoder, batch: Batch) -> ObjectiveOutput:
        z = [self.projector(represent(encoder, v)) for v in views_of(batch, "simclr")]  # V x [B, P]
        pairs = global_pairs(len(z))
        loss = torch.stack([nt_xent(z[i], z[j], self.config.temperature) for i, j in pairs]).mean()
        logs = {"contrastive_accuracy": contrastive_accuracy(z[0], z[1]), "embedding_std": embedding_std(z[0])}
        return ObjectiveOutput(loss=loss, terms={"nt_xent": loss}, logs=logs)


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
        _check_positive(self, "temperature", "queue_size", "projector_hidden_dim", "projector_dim")
        _check_momentum(self, "momentum")


class MoCoV2(Objective):
    """InfoNCE of queries against a momentum encoder's keys and a queue of past keys.

    Symmetrised as in the official CIFAR-10 demo's ``symmetric`` option: both views are
    queries, ``(info_nce(q1, k2, queue) + info_nce(q2, k1, queue)) / 2`` (the mean keeps the
    scale of the paper's one-direction loss), and the keys of both views are enqueued, after
    the loss is computed and only in training mode. The momentum is constant.
    """

    def __init__(self, config: MoCoV2Config, encoder: Encoder) -> None:
        super().__init__(config, encoder)
        self.projector = _head("moco_v2_projector", encoder.hidden_size, config.projector_hidden_dim,
                               config.projector_dim)
        self.teacher = MomentumTeacher(encoder, self.projector, config.momentum, config.momentum)
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
        logs = {"contrastive_accuracy": contrastive_accuracy(q1, k2, negatives), "embedding_std": embedding_std(q1),
                "momentum": self.teacher.momentum.clone()}
        return ObjectiveOutput(loss=loss, terms={"info_nce": loss}, logs=logs)

    def after_optimizer_step(self, encoder: Encoder, step: int, max_steps: int) -> None:
        self.teacher.update(encoder, self.projector, step, max_steps)


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
        _check_positive(self, "temperature", "projector_hidden_dim", "projector_dim", "predictor_hidden_dim")
        _check_momentum(self, "base_momentum", "final_momentum")


class MoCoV3(Objective):
    """In-batch contrast of predicted queries with momentum keys, symmetrised as in the paper (Alg. 1):
    ``moco_v3_loss(q1, k2) + moco_v3_loss(q2, k1)``."""

    def __init__(self, config: MoCoV3Config, encoder: Encoder) -> None:
        super().__init__(config, encoder)
        self.projector = _head("moco_v3_projector", encoder.hidden_size, config.projector_hidden_dim,
                               config.projector_dim)
        self.predictor = _head("moco_v3_predictor", config.projector_dim, config.predictor_hidden_dim,
                               config.projector_dim)
        self.teacher = MomentumTeacher(encoder, self.projector, config.base_momentum, config.final_momentum)

    def forward(self, encoder: Encoder, batch: Batch) -> ObjectiveOutput:
        v1, v2 = views_of(batch, "moco_v3", exactly_two=True)
        z1, z2 = self.projector(represent(encoder, v1)), self.projector(represent(encoder, v2))
        q1, q2 = self.predictor(z1), self.predictor(z2)
        k1, k2 = self.teacher(v1), self.teacher(v2)
        t = self.config.temperature
        loss = moco_v3_loss(q1, k2, t) + moco_v3_loss(q2, k1, t)
        logs = {"contrastive_accuracy": contrastive_accuracy(q1, k2), "embedding_std": embedding_std(z1),
                "momentum": self.teacher.momentum.clone()}
        return ObjectiveOutput(loss=loss, terms={"moco_v3": loss}, logs=logs)

    def after_optimizer_step(self, encoder: Encoder, step: int, max_steps: int) -> None:
        self.teacher.update(encoder, self.projector, step, max_steps)


# ---------------------------------------------------------------- bootstrap


@dataclass(frozen=True)
class BYOLConfig:
    """BYOL (Grill et al. 2020)."""

    name: str = "byol"
    base_momentum: float = 0.996  # sec. 3.2, raised to 1 by a cosine schedule
    final_momentum: float = 1.0
    projector_hidden_dim: int = HEAD_SHAPES["byol_projector"].hidden_dim  # 4096, sec. 3.3
    projector_dim: int = HEAD_SHAPES["byol_projector"].out_dim  # 256
    predictor_hidden_dim: int = HEAD_SHAPES["byol_predictor"].hidden_dim  # 4096

    def __post_init__(self) -> None:
        _check_positive(self, "projector_hidden_dim", "projector_dim", "predictor_hidden_dim")
        _check_momentum(self, "base_momentum", "final_momentum")


class BYOL(Objective):
    """Online predictions regress the EMA target's projections of another view (Grill et al. 2020, eq. 2).

    The target network sees the global views only. Every view's prediction regresses the
    target projection of each global view other than itself, and the loss is the sum over
    these ``2 (V - 1)`` pairs divided by ``V - 1``: for two views, the paper's symmetrised
    ``byol_loss(p1, z2') + byol_loss(p2, z1')``.
    """

    def __init__(self, config: BYOLConfig, encoder: Encoder) -> None:
        super().__init__(config, encoder)
        self.projector = _head("byol_projector", encoder.hidden_size, config.projector_hidden_dim,
                               config.projector_dim)
        self.predictor = _head("byol_predictor", config.projector_dim, config.predictor_hidden_dim,
                               config.projector_dim)
        self.teacher = MomentumTeacher(encoder, self.projector, config.base_momentum, config.final_momentum)

    def forward(self, encoder: Encoder, batch: Batch) -> ObjectiveOutput:
        views = views_of(batch, "byol")
        z = [self.projector(represent(encoder, v)) for v in views]
        p = [self.predictor(zi) for zi in z]
        targets = [self.teacher(v) for v in views[:2]]
        pairs = [(v, g) for v in range(len(views)) for g in (0, 1) if v != g]
        loss = torch.stack([byol_loss(p[v], targets[g]) for v, g in pairs]).sum() / (len(views) - 1)
        logs = {"embedding_std": embedding_std(z[0]), "momentum": self.teacher.momentum.clone()}
        return ObjectiveOutput(loss=loss, terms={"byol": loss}, logs=logs)

    def after_optimizer_step(self, encoder: Encoder, step: int, max_steps: int) -> None:
        self.teacher.update(encoder, self.projector, step, max_steps)


@dataclass(frozen=True)
class SimSiamConfig:
    """SimSiam (Chen & He 2021)."""

    name: str = "simsiam"
    projector_hidden_dim: int = HEAD_SHAPES["simsiam_projector"].hidden_dim  # 2048, sec. 4.1
    projector_dim: int = HEAD_SHAPES["simsiam_projector"].out_dim  # 2048
    predictor_hidden_dim: int = HEAD_SHAPES["simsiam_predictor"].hidden_dim  # 512, a bottleneck

    def __post_init__(self) -> None:
        _check_positive(self, "projector_hidden_dim", "projector_dim", "predictor_hidden_dim")


class SimSiam(Objective):
    """Negative cosine of each view's prediction to the other's stop-gradient projection, no teacher;
    symmetrised as in the paper (eq. 2): ``(simsiam_loss(p1, z2) + simsiam_loss(p2, z1)) / 2``."""

    def __init__(self, config: SimSiamConfig, encoder: Encoder) -> None:
        super().__init__(config, encoder)
        self.projector = _head("simsiam_projector", encoder.hidden_size, config.projector_hidden_dim,
                               config.projector_dim)
        self.predictor = _head("simsiam_predictor", config.projector_dim, config.predictor_hidden_dim,
                               config.projector_dim)

    def forward(self, encoder: Encoder, batch: Batch) -> ObjectiveOutput:
        v1, v2 = views_of(batch, "simsiam", exactly_two=True)
        z1, z2 = self.projector(represent(encoder, v1)), self.projector(represent(encoder, v2))
        p1, p2 = self.predictor(z1), self.predictor(z2)
        loss = (simsiam_loss(p1, z2) + simsiam_loss(p2, z1)) / 2
        return ObjectiveOutput(loss=loss, terms={"simsiam": loss}, logs={"embedding_std": embedding_std(z1)})


# ---------------------------------------------------------------- redundancy reduction


@dataclass(frozen=True)
class BarlowTwinsConfig:
    """Barlow Twins (Zbontar et al. 2021)."""

    name: str = "barlow_twins"
    lambda_offdiag: float = 5e-3  # sec. 2
    projector_hidden_dim: int = HEAD_SHAPES["barlow_twins_projector"].hidden_dim  # 8192, sec. 3
    projector_dim: int = HEAD_SHAPES["barlow_twins_projector"].out_dim  # 8192

    def __post_init__(self) -> None:
        _check_positive(self, "projector_hidden_dim", "projector_dim")
        if self.lambda_offdiag < 0:
            raise ValueError(f"objective.lambda_offdiag must be >= 0, got {self.lambda_offdiag}")


class BarlowTwins(Objective):
    """Cross-correlation of the two views' projections driven to the identity (Zbontar et al. 2021, eq. 1).

    Logs ``cross_correlation_diagonal``, the mean of ``C_ii`` over this process's batch
    (1 when every feature is invariant to the augmentation).
    """

    def __init__(self, config: BarlowTwinsConfig, encoder: Encoder) -> None:
        super().__init__(config, encoder)
        self.projector = _head("barlow_twins_projector", encoder.hidden_size, config.projector_hidden_dim,
                               config.projector_dim)

    def forward(self, encoder: Encoder, batch: Batch) -> ObjectiveOutput:
        v1, v2 = views_of(batch, "barlow_twins", exactly_two=True)
        z1, z2 = self.projector(represent(encoder, v1)), self.projector(represent(encoder, v2))
        loss = barlow_twins_loss(z1, z2, self.config.lambda_offdiag)
        with torch.no_grad():
            n1, n2 = (F.batch_norm(z.float(), None, None, training=True) for z in (z1, z2))
            diagonal = (n1 * n2).mean(0).mean()
        logs = {"cross_correlation_diagonal": diagonal, "embedding_std": embedding_std(z1)}
        return ObjectiveOutput(loss=loss, terms={"barlow_twins": loss}, logs=logs)


@dataclass(frozen=True)
class VICRegConfig:
    """VICReg (Bardes, Ponce & LeCun 2022)."""

    name: str = "vicreg"
    sim_weight: float = 25.0  # lambda, sec. 4.1
    var_weight: float = 25.0  # mu
    cov_weight: float = 1.0  # nu
    eps: float = 1e-4
    projector_hidden_dim: int = HEAD_SHAPES["vicreg_projector"].hidden_dim  # 8192, sec. 4.1
    projector_dim: int = HEAD_SHAPES["vicreg_projector"].out_dim  # 8192

    def __post_init__(self) -> None:
        _check_positive(self, "eps", "projector_hidden_dim", "projector_dim")
        for name in ("sim_weight", "var_weight", "cov_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"objective.{name} must be >= 0, got {getattr(self, name)}")


class VICReg(Objective):
    """Invariance, variance and covariance terms on the two views' projections (Bardes et al. 2022, eq. 6).

    ``terms`` holds the three unweighted terms; ``loss`` is their weighted sum.
    """

    def __init__(self, config: VICRegConfig, encoder: Encoder) -> None:
        super().__init__(config, encoder)
        self.projector = _head("vicreg_projector", encoder.hidden_size, config.projector_hidden_dim,
                               config.projector_dim)

    def forward(self, encoder: Encoder, batch: Batch) -> ObjectiveOutput:
        v1, v2 = views_of(batch, "vicreg", exactly_two=True)
        z1, z2 = self.projector(represent(encoder, v1)), self.projector(represent(encoder, v2))
        cfg = self.config
        loss, terms = vicreg_loss(z1, z2, cfg.sim_weight, cfg.var_weight, cfg.cov_weight, cfg.eps)
        return ObjectiveOutput(loss=loss, terms=terms, logs={"embedding_std": embedding_std(z1)})


OBJECTIVES.add("simclr", ObjectiveSpec(SimCLR, SimCLRConfig, "NT-Xent between augmented views (SimCLR), multi-crop"))
OBJECTIVES.add("moco_v2", ObjectiveSpec(MoCoV2, MoCoV2Config, "InfoNCE, momentum encoder, key queue (MoCo v2)"))
OBJECTIVES.add("moco_v3", ObjectiveSpec(MoCoV3, MoCoV3Config, "contrast with predictor and momentum encoder (MoCo v3)"))
OBJECTIVES.add("byol", ObjectiveSpec(BYOL, BYOLConfig, "predict an EMA target's projections (BYOL), multi-crop"))
OBJECTIVES.add("simsiam", ObjectiveSpec(SimSiam, SimSiamConfig, "stop-gradient Siamese prediction (SimSiam)"))
OBJECTIVES.add("barlow_twins", ObjectiveSpec(BarlowTwins, BarlowTwinsConfig, "cross-correlation to identity"))
OBJECTIVES.add("vicreg", ObjectiveSpec(VICReg, VICRegConfig, "variance-invariance-covariance regularisation (VICReg)"))
