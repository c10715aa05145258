"""SimMIM (Xie et al. 2022): replace masked units by the encoder's mask embedding, regress them with a linear head.

Modality-agnostic: block masks are drawn on the ``(rows, cols)`` unit grid of
``Batch.grid`` when the domain gives one, else uniformly random units. SimMIM builds
a head of ``C`` outputs at construction, so it reads ``C`` from :attr:`Encoder.unit_dim`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mmssl.encoder import Encoder
from mmssl.masking import random_mask
from mmssl.objectives.base import Objective
from mmssl.objectives.checks import check_ratio
from mmssl.objectives.losses import masked_regression_loss
from mmssl.objectives.units import feature_units, grid_block_mask, unit_dim_of
from mmssl.types import Batch, ObjectiveOutput


@dataclass(frozen=True)
class SimMIMConfig:
    """SimMIM (Xie et al. 2022)."""

    name: str = "simmim"
    mask_ratio: float = 0.6  # sec. 4.1
    min_block: int = 4  # units per block at least: SimMIM masks 32-px squares, 2 x 2 patches of a ViT/16
    norm_target: bool = False  # SimMIM regresses raw pixels (sec. 3.3); true: per-unit normalised (as MAE)

    def __post_init__(self) -> None:
        check_ratio(self.mask_ratio, "mask_ratio")
        if self.min_block < 1:
            raise ValueError(f"objective.min_block must be >= 1, got {self.min_block}")


class SimMIM(Objective):
    """Replace masked units by the encoder's mask embedding and regress them with a linear head (Xie et al. 2022).

    Masks are BEiT-style blocks (:func:`mmssl.masking.block_mask_2d`) on ``Batch.grid``
    when the domain gives a ``(rows, cols)`` grid, else :func:`random_mask`. The encoder is read at
    the masked units only (:meth:`Encoder.encode_at`); the loss is the L1
    :func:`masked_regression_loss` on them, on raw unit features by default as in the paper.
    """

    def __init__(self, config: SimMIMConfig, encoder: Encoder) -> None:
        super().__init__(config, encoder)
        self.unit_dim = unit_dim_of(encoder, "simmim")
        self.head = nn.Linear(encoder.hidden_size, self.unit_dim)  # the paper's one-layer prediction head

    def make_mask(self, batch: Batch) -> Tensor:
        """``[B, T]`` bool: blocks on the unit grid when there is one, else uniformly random units."""
        cfg = self.config
        blocks = grid_block_mask(batch, cfg.mask_ratio, cfg.min_block)
        return random_mask(batch.maskable, ratio=cfg.mask_ratio) if blocks is None else blocks

    def forward(self, encoder: Encoder, batch: Batch) -> ObjectiveOutput:
        units = feature_units(batch, self.unit_dim, "simmim")
        mask = self.make_mask(batch)
        pred = self.head(encoder.encode_at(batch, mask, mask=mask))  # [N, C] at the masked units
        everywhere = torch.ones(pred.shape[0], dtype=torch.bool, device=pred.device)
        loss = masked_regression_loss(pred, units[mask], everywhere, norm_target=self.config.norm_target, loss="l1")
        logs = {"masked_fraction": (mask.sum() / batch.maskable.sum().clamp(min=1)).detach()}
        return ObjectiveOutput(loss=loss, terms={"simmim": loss}, logs=logs)
