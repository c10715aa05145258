"""Masked unit modelling (MAE, SimMIM) and pretext classification (RotNet, jigsaw, ...).

Modality-agnostic: MAE and SimMIM regress the features of masked units (``Batch.units``
``[B, T, C]``: image patch pixels, spectrogram frames, node features), SimMIM's block masks
read the ``(rows, cols)`` unit grid from ``batch.extras["grid"]`` when the domain gives one,
and the pretext objective classifies whatever label ``batch.extras["pretext_labels"]``
holds. The losses come from :mod:`mmssl.objectives.functional`.

MAE and SimMIM build a head of ``C`` outputs at construction, so they read ``C`` from the
encoder's :attr:`Encoder.unit_dim`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmssl.encoder import Encoder
from mmssl.masking import block_mask_2d, random_mask
from mmssl.objectives.base import Objective
from mmssl.objectives.components import MLPHead
from mmssl.objectives.functional import masked_regression_loss
from mmssl.registry import OBJECTIVES, ObjectiveSpec
from mmssl.types import Batch, ObjectiveOutput


def _unit_dim(encoder: Encoder, objective: str) -> int:
    """``C``, the encoder's features per unit."""
    if encoder.unit_dim is None:
        raise ValueError(f"{objective} reconstructs [B, T, C] feature units, but {type(encoder).__name__} has no "
                         "unit_dim (it reads unit ids or does not declare C)")
    return encoder.unit_dim


def _feature_units(batch: Batch, unit_dim: int, objective: str) -> Tensor:
    """``batch.units`` checked to be ``[B, T, unit_dim]`` features."""
    units = batch.units
    if units.ndim != 3 or not units.is_floating_point():
        raise ValueError(f"{objective} regresses unit features [B, T, C], got {units.dtype} units of shape "
                         f"{tuple(units.shape)} (token ids are predicted by mlm)")
    if units.shape[-1] != unit_dim:
        raise ValueError(f"the encoder's unit_dim is {unit_dim} but the batch's units have {units.shape[-1]} features")
    return units


def _check_ratio(value: float, name: str) -> None:
    if not 0.0 < value < 1.0:
        raise ValueError(f"objective.{name} must be in (0, 1), got {value}")


# ---------------------------------------------------------------- MAE


@dataclass(frozen=True)
class MAEConfig:
    """Masked autoencoder (He et al. 2022)."""

    name: str = "mae"
    mask_ratio: float = 0.75  # sec. 4, Fig. 5
    norm_target: bool = True  # per-unit normalised targets (the paper's norm_pix_loss, Table 1d)
    decoder_dim: int = 128  # a small decoder for small encoders; the paper's ViT-L one is 512 wide, 8 deep
    decoder_depth: int = 2  # Table 1a: shallow decoders fine-tune as well, but linear-probe worse
    decoder_heads: int = 4
    max_units: int = 1024  # learned decoder positions for up to this many units (a 32 x 32 grid)

    def __post_init__(self) -> None:
        _check_ratio(self.mask_ratio, "mask_ratio")
        for name in ("decoder_dim", "decoder_depth", "decoder_heads", "max_units"):
            if getattr(self, name) < 1:
                raise ValueError(f"objective.{name} must be >= 1, got {getattr(self, name)}")
        if self.decoder_dim % self.decoder_heads:
            raise ValueError(f"objective.decoder_dim={self.decoder_dim} is not divisible by "
                             f"objective.decoder_heads={self.decoder_heads}")


class MAEDecoder(nn.Module):
    """MAE's lightweight decoder (He et al. 2022, sec. 3) on a 1-D sequence of units.

    Encoded visible units are embedded to the decoder width and scattered back to their
    places, every masked place holds a learned mask token, a learned position embedding
    (one per unit index, up to ``max_units``; MAE uses fixed 2-D sin-cos, which would tie the
    decoder to image grids) is added, pre-norm transformer blocks run over all ``T`` units,
    and a linear head predicts the ``C`` features at the masked units only.

    Args:
        in_dim: encoder width ``D``.
        out_dim: features per unit ``C``.
        width: decoder width.
        depth: transformer blocks.
        heads: attention heads.
        max_units: the largest ``T`` the position embedding covers.
    """

    def __init__(self, in_dim: int, out_dim: int, width: int, depth: int, heads: int, max_units: int) -> None:
        super().__init__()
        self.embed = nn.Linear(in_dim, width)
        self.mask_token = nn.Parameter(torch.empty(width).normal_(std=0.02))
        self.position = nn.Parameter(nn.init.trunc_normal_(torch.empty(max_units, width), std=0.02))
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(width, heads, dim_feedforward=4 * width, dropout=0.0, activation="gelu",
                                       batch_first=True, norm_first=True)
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, out_dim)

    def forward(self, hidden: Tensor, visible: Tensor, masked: Tensor) -> Tensor:
        """Predict the masked units.

        Args:
            hidden: ``[B, K, D]`` encoder outputs at ``visible``.
            visible: ``[B, K]`` indices of the visible units.
            masked: ``[B, M]`` indices of the masked units (``K + M = T``).

        Returns:
            ``[B, M, C]`` predictions, in the order of ``masked``.

        Raises:
            ValueError: If ``T`` exceeds ``max_units``.
        """
        b, k = visible.shape
        num_units, width = k + masked.shape[1], self.position.shape[1]
        if num_units > self.position.shape[0]:
            raise ValueError(f"objective.max_units={self.position.shape[0]} is below the batch's {num_units} "
                             "units; raise objective.max_units")
        tokens = self.embed(hidden)  # [B, K, W]
        x = self.mask_token.to(tokens.dtype).expand(b, num_units, width)
        x = x.scatter(1, visible.unsqueeze(-1).expand(-1, -1, width), tokens)  # [B, T, W]
        x = x + self.position[:num_units].to(x.dtype)
        for block in self.blocks:
            x = block(x)
        x = self.norm(x.gather(1, masked.unsqueeze(-1).expand(-1, -1, width)))  # [B, M, W]
        return self.head(x)


def grid_block_mask(batch: Batch, ratio: float, min_block: int) -> Tensor | None:
    """BEiT blocks (:func:`block_mask_2d`) on the batch's ``extras["grid"]`` of ``(rows, cols)``
    units, restricted to maskable units; ``None`` when the domain gives no 2-D grid."""
    grid = batch.extras.get("grid")
    if grid is None:
        return None
    rows, cols = int(grid[0]), int(grid[1])
    if rows * cols != batch.units.shape[1]:
        raise ValueError(f"batch.extras['grid'] = {rows}x{cols} does not hold the batch's "
                         f"{batch.units.shape[1]} units")
    blocks = block_mask_2d(batch.batch_size, rows, cols, ratio=ratio, min_block=min_block, device=batch.units.device)
    return blocks & batch.maskable


def split_units(mask: Tensor) -> tuple[Tensor, Tensor]:
    """``[B, T]`` mask -> ``(visible [B, K], masked [B, M])`` unit indices, ascending in each row.

    Raises:
        ValueError: If rows mask different numbers of units.
    """
    counts = mask.sum(1)
    if bool((counts != counts[0]).any()):
        raise ValueError("mae needs the same number of maskable units in every row (no padding, the same "
                         "special units)")
    order = mask.to(torch.uint8).argsort(dim=1, stable=True)  # unmasked units first, each part in index order
    visible_count = mask.shape[1] - int(counts[0])
    return order[:, :visible_count], order[:, visible_count:]


class MAE(Objective):
    """Encode the visible units only, decode every unit, regress the masked ones (He et al. 2022).

    ``round(mask_ratio * T)`` units of each row are masked (:func:`random_mask`); the encoder
    runs on the rest through :meth:`Encoder.encode_visible` (ViT-style encoders; others raise
    ``NotImplementedError``), and :class:`MAEDecoder` predicts the masked units' features.
    The loss is :func:`masked_regression_loss` (MSE) on the masked units, with per-unit
    normalised targets when ``norm_target``. Batches must have no padding.
    """

    def __init__(self, config: MAEConfig, encoder: Encoder) -> None:
        super().__init__(config, encoder)
        self.unit_dim = _unit_dim(encoder, "mae")
        self.decoder = MAEDecoder(encoder.hidden_size, self.unit_dim, config.decoder_dim, config.decoder_depth,
                                  config.decoder_heads, config.max_units)

    def forward(self, encoder: Encoder, batch: Batch) -> ObjectiveOutput:
        units = _feature_units(batch, self.unit_dim, "mae")
        if bool(batch.padding_mask.any()):
            raise ValueError("mae encodes a fixed number of visible units per row and cannot take padded batches")
        mask = random_mask(batch.maskable, ratio=self.config.mask_ratio)  # [B, T]
        visible, masked = split_units(mask)  # [B, K], [B, M]
        hidden = encoder.encode_visible(batch, visible).hidden  # [B, K, D]
        pred = self.decoder(hidden, visible, masked)  # [B, M, C]
        target = units.gather(1, masked.unsqueeze(-1).expand(-1, -1, units.shape[-1]))
        everywhere = torch.ones(masked.shape, dtype=torch.bool, device=masked.device)
        loss = masked_regression_loss(pred, target, everywhere, norm_target=self.config.norm_target)
        logs = {"masked_fraction": (mask.sum() / batch.maskable.sum().clamp(min=1)).detach()}
        return ObjectiveOutput(loss=loss, terms={"mae": loss}, logs=logs)


# ---------------------------------------------------------------- SimMIM


@dataclass(frozen=True)
class SimMIMConfig:
    """SimMIM (Xie et al. 2022)."""

    name: str = "simmim"
    mask_ratio: float = 0.6  # sec. 4.1
    min_block: int = 4  # units per block at least: SimMIM masks 32-px squares, 2 x 2 patches of a ViT/16
    norm_target: bool = False  # SimMIM regresses raw pixels (sec. 3.3); true: per-unit normalised (as MAE)

    def __post_init__(self) -> None:
        _check_ratio(self.mask_ratio, "mask_ratio")
        if self.min_block < 1:
            raise ValueError(f"objective.min_block must be >= 1, got {self.min_block}")


class SimMIM(Objective):
    """Replace masked units by the encoder's mask embedding and regress them with a linear head (Xie et al. 2022).

    Masks are BEiT-style blocks (:func:`block_mask_2d`) on ``batch.extras["grid"]`` when the
    domain gives a ``(rows, cols)`` grid, else :func:`random_mask`. The encoder is read at
    the masked units only (:meth:`Encoder.encode_at`); the loss is the L1
    :func:`masked_regression_loss` on them, on raw unit features by default as in the paper.
    """

    def __init__(self, config: SimMIMConfig, encoder: Encoder) -> None:
        super().__init__(config, encoder)
        self.unit_dim = _unit_dim(encoder, "simmim")
        self.head = nn.Linear(encoder.hidden_size, self.unit_dim)  # the paper's one-layer prediction head

    def make_mask(self, batch: Batch) -> Tensor:
        """``[B, T]`` bool: blocks on the unit grid when there is one, else uniformly random units."""
        cfg = self.config
        blocks = grid_block_mask(batch, cfg.mask_ratio, cfg.min_block)
        return random_mask(batch.maskable, ratio=cfg.mask_ratio) if blocks is None else blocks

    def forward(self, encoder: Encoder, batch: Batch) -> ObjectiveOutput:
        units = _feature_units(batch, self.unit_dim, "simmim")
        mask = self.make_mask(batch)
        pred = self.head(encoder.encode_at(batch, mask, mask=mask))  # [N, C] at the masked units
        everywhere = torch.ones(pred.shape[0], dtype=torch.bool, device=pred.device)
        loss = masked_regression_loss(pred, units[mask], everywhere, norm_target=self.config.norm_target, loss="l1")
        logs = {"masked_fraction": (mask.sum() / batch.maskable.sum().clamp(min=1)).detach()}
        return ObjectiveOutput(loss=loss, terms={"simmim": loss}, logs=logs)


# ---------------------------------------------------------------- pretext classification


@dataclass(frozen=True)
class PretextConfig:
    """Pretext classification: RotNet (Gidaris et al. 2018), jigsaw (Noroozi & Favaro 2016), ..."""

    name: str = "pretext"
    num_classes: int = 4  # RotNet's four rotations; jigsaw: the size of the permutation set
    hidden_dim: int = 0  # 0: a linear head on the pooled representation; > 0: one Linear-BN-ReLU layer this wide

    def __post_init__(self) -> None:
        if self.num_classes < 2:
            raise ValueError(f"objective.num_classes must be >= 2, got {self.num_classes}")
        if self.hidden_dim < 0:
            raise ValueError(f"objective.hidden_dim must be >= 0, got {self.hidden_dim}")


class Pretext(Objective):
    """Cross-entropy of a head on ``encoder.encode(batch).pooled()`` against ``batch.extras["pretext_labels"]``.

    The labels (``[B]`` int64 in ``[0, num_classes)``) come from the domain's transform,
    e.g. the rotation index of each rotated image.
    """

    def __init__(self, config: PretextConfig, encoder: Encoder) -> None:
        super().__init__(config, encoder)
        hidden = config.hidden_dim or config.num_classes
        self.head = MLPHead(encoder.hidden_size, hidden, config.num_classes, num_layers=2 if config.hidden_dim else 1)

    def labels(self, batch: Batch) -> Tensor:
        """The checked ``[B]`` pretext labels of ``batch``."""
        labels = batch.extras.get("pretext_labels")
        if labels is None:
            raise ValueError("the pretext objective needs batch.extras['pretext_labels']; use a data transform "
                             "that makes them, e.g. data.views=rotation")
        if labels.shape != (batch.batch_size,) or labels.dtype != torch.long:
            raise ValueError(f"batch.extras['pretext_labels'] must be int64 of shape [{batch.batch_size}], "
                             f"got {labels.dtype} {tuple(labels.shape)}")
        if bool(((labels < 0) | (labels >= self.config.num_classes)).any()):
            raise ValueError(f"pretext labels must be in [0, objective.num_classes={self.config.num_classes}), "
                             f"got values up to {int(labels.max())}")
        return labels

    def forward(self, encoder: Encoder, batch: Batch) -> ObjectiveOutput:
        labels = self.labels(batch)
        logits = self.head(encoder.encode(batch).pooled())  # [B, num_classes]
        loss = F.cross_entropy(logits.float(), labels)
        accuracy = (logits.argmax(-1) == labels).float().mean().detach()
        return ObjectiveOutput(loss=loss, terms={"pretext": loss}, logs={"pretext_accuracy": accuracy})


OBJECTIVES.add("mae", ObjectiveSpec(MAE, MAEConfig, "encode visible units, decode the masked ones (MAE)"))
OBJECTIVES.add("simmim", ObjectiveSpec(SimMIM, SimMIMConfig, "regress masked units with a linear head (SimMIM)"))
OBJECTIVES.add("pretext", ObjectiveSpec(Pretext, PretextConfig, "classify a data transformation (rotation, jigsaw)"))
