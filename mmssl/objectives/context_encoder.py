"""Context encoder (Pathak et al. 2016, "Context Encoders: Feature Learning by Inpainting").

A region of each image is dropped (filled with 0, the training-set mean of the image domain's standardised pixels,
as the paper fills it with the mean pixel), the encoder reads the image with the hole, and the convolutional
:class:`~mmssl.objectives.pixel_decoder.PixelDecoder` inpaints it from the encoder's feature map. Regions (sec. 3.3)
are drawn on the ``(rows, cols)`` patch grid: ``center``, the central ``mask_size x mask_size`` square of units, or
``blocks``, random BEiT-style blocks covering ``block_ratio`` of the units (:func:`mmssl.masking.block_mask_2d`;
the paper's random blocks cover "up to 1/4 of the image").

The reconstruction loss is L2 on the dropped units (sec. 3.2, eq. 1); ``overlap_weight > 0`` also reconstructs the
one-unit border of context around the region, weighted so (the paper predicts a region overlapping its context by a
few pixels and weighs that border 10x). ``adversarial_weight`` ``lambda > 0`` adds the adversarial loss (eq. 2, 3):
a small convolutional discriminator :class:`InpaintingCritic` tells real images from images whose region was
inpainted, trained by its own optimizer (:meth:`Objective.adversary`), and::

    loss = (1 - lambda) * L_rec + lambda * L_adv,   L_adv = -log D(inpainted)   (lambda = 0.001, sec. 4)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmssl.encoder import Encoder
from mmssl.objectives.base import Adversary, Objective
from mmssl.objectives.checks import check_ratio
from mmssl.objectives.pixel_decoder import (
    build_pixel_decoder,
    check_decoder_settings,
    check_grid_domain,
    feature_map,
    input_grid,
    weighted_squared_error,
)
from mmssl.objectives.units import feature_units, grid_block_mask
from mmssl.types import Batch, ObjectiveOutput


@dataclass(frozen=True)
class ContextEncoderConfig:
    """Context encoder (Pathak et al. 2016) with a convolutional decoder."""

    name: str = "context_encoder"
    region: Literal["center", "blocks"] = "center"  # sec. 3.3: central region (Table 1's features), random blocks
    mask_size: int = 3  # center: units per side (paper: 64 of 128 pixels; 3 of 7 patches = 12 of 28 pixels)
    block_ratio: float = 0.25  # blocks: share of units dropped ("up to 1/4 of the image", sec. 3.3)
    min_block: int = 2  # blocks: units per block at least
    overlap_weight: float = 0.0  # > 0: the one-unit border of context is reconstructed too, weighted so (paper: 10)
    adversarial_weight: float = 0.001  # lambda_adv of sec. 4 (lambda_rec = 1 - lambda_adv = 0.999); 0: L2 only
    discriminator_width: int = 32  # channels of the critic's first convolution (doubled in the second)
    adversary_lr: float = 2e-4  # sec. 4: Adam, lr 2e-4 for the discriminator (DCGAN's settings)
    adversary_betas: tuple[float, float] = (0.5, 0.999)  # DCGAN (Radford et al. 2016)
    decoder_width: int = 64  # channels of the decoder's resize-convolution blocks
    decoder_depth: int = 2

    def __post_init__(self) -> None:
        if self.region not in ("center", "blocks"):
            raise ValueError(f"objective.region must be center or blocks, got {self.region!r}")
        if self.mask_size < 1 or self.min_block < 1:
            raise ValueError(f"objective.mask_size and objective.min_block must be >= 1, got {self.mask_size}")
        check_ratio(self.block_ratio, "block_ratio")
        if self.overlap_weight < 0:
            raise ValueError(f"objective.overlap_weight must be >= 0, got {self.overlap_weight}")
        if not 0.0 <= self.adversarial_weight < 1.0:
            raise ValueError(f"objective.adversarial_weight must be in [0, 1), got {self.adversarial_weight}")
        if self.discriminator_width < 1 or self.adversary_lr <= 0:
            raise ValueError("objective.discriminator_width must be >= 1 and objective.adversary_lr > 0")
        check_decoder_settings(self)

    def check_recipe(self, recipe: Any) -> None:
        """The decoder needs units on a 2-D grid (an image domain)."""
        check_grid_domain(recipe, self.name)

    def check_grid(self, rows: int, cols: int) -> None:
        """The central square leaves context on a ``rows x cols`` patch grid (called by the image domain's
        ``check_recipe`` where the image size is known, and on every batch).

        Raises:
            ValueError: If ``mask_size`` covers a whole side.
        """
        if self.region == "center" and self.mask_size >= min(rows, cols):
            raise ValueError(
                f"objective.mask_size={self.mask_size} covers the whole {rows}x{cols} patch grid side, leaving no "
                "context to inpaint from: lower objective.mask_size (the paper drops half the side) or cut the "
                "images into more patches (encoder.patch_size)"
            )


def center_mask(batch_size: int, grid: tuple[int, int], size: int, device: torch.device) -> Tensor:
    """``[B, rows * cols]`` bool: the central ``size x size`` square of units (rounded to the top-left when the
    margins are odd)."""
    rows, cols = grid
    square = torch.zeros(rows, cols, dtype=torch.bool, device=device)
    top, left = (rows - size) // 2, (cols - size) // 2
    square[top : top + size, left : left + size] = True
    return square.flatten().expand(batch_size, -1)


def border(mask: Tensor, grid: tuple[int, int]) -> Tensor:
    """``[B, T]`` bool: the units next to (8-neighbourhood) but outside the masked units on the grid."""
    rows, cols = grid
    grown = F.max_pool2d(mask.view(-1, 1, rows, cols).float(), 3, stride=1, padding=1).flatten(1).bool()
    return grown & ~mask


class InpaintingCritic(nn.Module):
    """Images in patch-unit layout ``[B, T, C]`` on a ``rows x cols`` grid -> ``[B]`` real/fake logits.

    Each unit's ``C = channels * P * P`` pixels are the channels of one grid cell (the sub-pixel layout of
    :class:`~mmssl.objectives.pixel_decoder.PixelDecoder`); two 3x3 convolutions (the second stride 2) with
    LeakyReLU 0.2 and no batch norm on real or fake batches alone, as DCGAN's discriminator, then a global average
    and a linear logit.
    """

    def __init__(self, unit_dim: int, width: int) -> None:
        super().__init__()
        self.convs = nn.Sequential(
            nn.Conv2d(unit_dim, width, 3, padding=1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
            nn.LeakyReLU(0.2),
        )
        self.logit = nn.Linear(2 * width, 1)

    def forward(self, units: Tensor, grid: tuple[int, int]) -> Tensor:
        b, _, c = units.shape
        x = units.float().transpose(1, 2).reshape(b, c, *grid)
        return self.logit(self.convs(x).mean((2, 3))).squeeze(-1)


class ContextEncoder(Objective):
    """Inpaint a dropped region of each image from its context (see module docstring).

    Attributes:
        decoder: :class:`~mmssl.objectives.pixel_decoder.PixelDecoder` from the encoder's feature map.
        critic: :class:`InpaintingCritic` (only with ``adversarial_weight > 0``), the adversary.
    """

    def __init__(self, config: ContextEncoderConfig, encoder: Encoder) -> None:
        super().__init__(config, encoder)
        self.decoder = build_pixel_decoder(encoder, config, "context_encoder")
        self.critic = (
            InpaintingCritic(self.decoder.head.out_channels, config.discriminator_width)
            if config.adversarial_weight > 0
            else None
        )

    def adversary(self) -> Adversary | None:
        c = self.config
        return None if self.critic is None else Adversary(self.critic, lr=c.adversary_lr, betas=c.adversary_betas)

    def make_mask(self, batch: Batch, grid: tuple[int, int]) -> Tensor:
        """``[B, T]`` bool: the dropped units (the central square, or random blocks)."""
        cfg = self.config
        if cfg.region == "blocks":
            return grid_block_mask(batch, cfg.block_ratio, cfg.min_block)
        self.config.check_grid(*grid)
        return center_mask(batch.batch_size, grid, cfg.mask_size, batch.units.device) & batch.maskable

    def reconstruction_weight(self, mask: Tensor, grid: tuple[int, int]) -> Tensor:
        """``[B, T, 1]``: 1 on the dropped units, ``overlap_weight`` on their border of context, 0 elsewhere."""
        weight = mask.float()
        if self.config.overlap_weight > 0:
            weight = weight + self.config.overlap_weight * border(mask, grid).float()
        return weight.unsqueeze(-1)

    def forward(self, encoder: Encoder, batch: Batch) -> ObjectiveOutput:
        units = feature_units(batch, self.decoder.head.out_channels, "context_encoder")
        grid = input_grid(batch, "context_encoder")
        mask = self.make_mask(batch, grid)  # [B, T]
        holed = units.masked_fill(mask.unsqueeze(-1), 0.0)
        pred = self.decoder(feature_map(encoder.encode(batch.replace(units=holed)), "context_encoder"), grid)
        rec = weighted_squared_error(pred, units, self.reconstruction_weight(mask, grid))
        logs = {"masked_fraction": mask.float().mean().detach()}
        if self.critic is None:
            return ObjectiveOutput(loss=rec, terms={"reconstruction": rec}, logs=logs)
        return self.with_adversary(rec, pred, units, mask, grid, logs)

    def with_adversary(
        self, rec: Tensor, pred: Tensor, units: Tensor, mask: Tensor, grid: tuple[int, int], logs: dict[str, Tensor]
    ) -> ObjectiveOutput:
        """Add the adversarial term (eq. 2, 3): the critic sees real images and images whose dropped units are
        inpainted (the context kept real), and the non-saturating ``-log D(inpainted)`` trains the inpainting."""
        lam = self.config.adversarial_weight
        inpainted = torch.where(mask.unsqueeze(-1), pred.float(), units.float())  # [B, T, C]
        adv = F.softplus(-self.critic(inpainted, grid)).mean()  # -log sigmoid(D)
        real = F.softplus(-self.critic(units, grid))
        fake = F.softplus(self.critic(inpainted.detach(), grid))
        critic_loss = (real + fake).mean()  # -log D(x) - log(1 - D(inpainted))
        loss = (1.0 - lam) * rec + lam * adv
        terms = {"reconstruction": (1.0 - lam) * rec, "adversarial": lam * adv}
        logs = {**logs, "critic_loss": critic_loss.detach()}
        return ObjectiveOutput(loss=loss, terms=terms, logs=logs, adversary_loss=critic_loss)
