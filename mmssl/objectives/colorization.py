"""Colorization as classification (Zhang, Isola & Efros 2016, "Colorful Image Colorization", ECCV).

The encoder sees the lightness ``L*`` of a colour image only (the image domain's ``data.encoder_input=lightness``
gives units of ``L*/100`` and keeps the sRGB pixels in ``extras[Extra.PIXELS]``); a small convolutional decoder on
its feature map predicts, at every cell of a ``1 / output_stride`` resolution map, a distribution over the
quantised ab bins (:mod:`mmssl.objectives.color_space`). The loss is the class-rebalanced multinomial
cross-entropy of Eq. 2::

    L = - mean_{b,h,w} v(Z_bhw) * sum_q Z_bhwq log softmax(logits)_bhwq

with ``Z`` the soft-encoded ab target of the cell and ``v`` the rebalancing weight of its nearest bin. The paper
estimates the bin distribution once over ImageNet; here it is the running empirical distribution of every target
cell trained on so far (a buffer, so it is in checkpoints, summed over processes), which on a stationary training
set converges to the training data's own distribution.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmssl.distributed import global_sum
from mmssl.encoder import Encoder
from mmssl.objectives.base import Objective
from mmssl.objectives.checks import check_positive
from mmssl.objectives.color_space import (
    annealed_mean,
    gamut_bins,
    nearest_bin,
    rebalancing_weights,
    soft_encode,
    srgb_to_lab,
)
from mmssl.types import Batch, Extra, ObjectiveOutput

LIGHTNESS_INPUT = "lightness"  # the image domain's data.encoder_input that feeds L* to the encoder


@dataclass(frozen=True)
class ColorizationConfig:
    """Colorization (Zhang et al. 2016); defaults are the paper's."""

    name: str = "colorization"
    grid_size: float = 10.0  # side of an ab bin (Sec. 2.1); 261 bins of side 10 hold the sRGB gamut (paper: Q=313)
    neighbours: int = 5  # soft encoding over the 5 nearest bins (Sec. 2.1)
    encode_sigma: float = 5.0  # Gaussian kernel of the soft encoding (Sec. 2.1)
    rebalance: bool = True  # class rebalancing (Sec. 2.2); false: the plain cross-entropy ("Class" vs "Rebal")
    prior_sigma: float = 5.0  # Gaussian smoothing of the empirical bin distribution (Sec. 2.2)
    rebalance_mix: float = 0.5  # lambda, the uniform share of the rebalancing distribution (Sec. 2.2)
    temperature: float = 0.38  # annealed-mean decoding (Sec. 2.3)
    output_stride: int = 4  # pixels per predicted cell: the paper predicts 56x56 for 224x224 images
    decoder_dim: int = 128  # channels of the decoder's convolutions (paper: 256 before the 313-way 1x1 conv)

    def __post_init__(self) -> None:
        check_positive(self, "grid_size", "neighbours", "encode_sigma", "prior_sigma", "temperature")
        check_positive(self, "output_stride", "decoder_dim")
        if not 0.0 <= self.rebalance_mix <= 1.0:
            raise ValueError(f"objective.rebalance_mix must be in [0, 1], got {self.rebalance_mix}")

    def check_recipe(self, recipe: Any) -> None:
        """The encoder reads the lightness of colour images (the image domain's ``data.encoder_input``)."""
        given = getattr(recipe.data, "encoder_input", None)
        if given != LIGHTNESS_INPUT:
            raise ValueError(
                f"objective.name=colorization predicts colours from lightness, so the encoder must read the L* "
                f"channel only: set data.encoder_input={LIGHTNESS_INPUT} (got {given!r}) on colour images, e.g. "
                "data.name=skimage-photos (`mmssl data prepare skimage-photos`)"
            )


class ColorDecoder(nn.Module):
    """The encoder's ``[B, D, h, w]`` feature map -> ``[B, Q, H', W']`` bin scores: a 1x1 convolution, bilinear
    upsampling to the output size, a 3x3 convolution and the ``Q``-way 1x1 classifier (the paper's conv8 block and
    313-way 1x1 convolution, shallower)."""

    def __init__(self, in_dim: int, hidden_dim: int, num_bins: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(in_dim, hidden_dim, 1)
        self.refine = nn.Conv2d(hidden_dim, hidden_dim, 3, padding=1)
        self.classify = nn.Conv2d(hidden_dim, num_bins, 1)

    def forward(self, fmap: Tensor, size: tuple[int, int]) -> Tensor:
        """``[B, D, h, w]`` -> ``[B, Q, *size]``."""
        x = F.interpolate(F.relu(self.reduce(fmap)), size=size, mode="bilinear", align_corners=False)
        return self.classify(F.relu(self.refine(x)))


def colorization_loss(logits: Tensor, targets: Tensor, weights: Tensor) -> Tensor:
    """Eq. 2: the rebalanced multinomial cross-entropy, averaged over cells.

    Args:
        logits: ``[N, Q]`` bin scores of ``N`` cells.
        targets: ``[N, Q]`` soft-encoded target distributions.
        weights: ``[N]`` rebalancing weight of each cell (ones for the plain cross-entropy).

    Returns:
        The scalar loss.
    """
    cross_entropy = -(targets * F.log_softmax(logits.float(), dim=1)).sum(dim=1)
    return (weights * cross_entropy).mean()


def feature_map(hidden: Tensor, image_size: tuple[int, int]) -> Tensor:
    """``[B, T, D]`` encoder units -> ``[B, D, h, w]``, the ``h x w = T`` grid of the image's aspect ratio
    (a ViT's patch grid, a ResNet's final feature map).

    Raises:
        ValueError: ``T`` cells fit no grid of the image's aspect ratio.
    """
    b, t, d = hidden.shape
    height, width = image_size
    rows = round(math.sqrt(t * height / width))
    if rows < 1 or t % rows or (t // rows) * height != rows * width:
        raise ValueError(f"colorization: {t} encoder outputs do not tile a {height}x{width} image")
    return hidden.transpose(1, 2).reshape(b, d, rows, t // rows)


class Colorization(Objective):
    """Predict the quantised ab colours of an image from the encoder's view of its lightness (Zhang et al. 2016)."""

    def __init__(self, config: ColorizationConfig, encoder: Encoder) -> None:
        super().__init__(config, encoder)
        centres = gamut_bins(config.grid_size)
        self.register_buffer("centres", centres)  # [Q, 2]
        self.register_buffer("bin_counts", torch.zeros(len(centres), dtype=torch.long))  # the running prior
        self.decoder = ColorDecoder(encoder.hidden_size, config.decoder_dim, len(centres))

    def pixels(self, batch: Batch) -> Tensor:
        """The checked ``[B, 3, H, W]`` sRGB pixels in ``[0, 1]`` of the batch."""
        pixels = batch.extras.get(Extra.PIXELS)
        if pixels is None or pixels.ndim != 4 or pixels.shape[1] != 3:
            shape = None if pixels is None else tuple(pixels.shape)
            raise ValueError(
                f"colorization needs the colour images in batch.extras['pixels'] as [B, 3, H, W], got {shape}: "
                f"use colour images with data.encoder_input={LIGHTNESS_INPUT}"
            )
        h, w = pixels.shape[-2:]
        if h % self.config.output_stride or w % self.config.output_stride:
            raise ValueError(f"objective.output_stride={self.config.output_stride} does not divide {h}x{w} images")
        return pixels

    def targets(self, pixels: Tensor) -> Tensor:
        """``[B, 3, H, W]`` sRGB -> ``[N, 2]`` ab of each output cell (``N = B * H/s * W/s``, averaged over its
        ``s x s`` pixels, ``s = output_stride``), row-major per image."""
        ab = F.avg_pool2d(srgb_to_lab(pixels)[:, 1:], self.config.output_stride)  # [B, 2, H/s, W/s]
        return ab.permute(0, 2, 3, 1).reshape(-1, 2)

    @torch.no_grad()
    def cell_weights(self, ab: Tensor) -> Tensor:
        """Count the cells' nearest bins into the running prior (all processes), then their ``[N]`` rebalancing
        weights (ones with ``objective.rebalance=false``)."""
        nearest = nearest_bin(ab, self.centres)
        if self.training:
            self.bin_counts += global_sum(torch.bincount(nearest, minlength=len(self.centres)))
        if not self.config.rebalance or not bool(self.bin_counts.any()):
            return torch.ones_like(nearest, dtype=torch.float32)
        cfg = self.config
        return rebalancing_weights(self.bin_counts, self.centres, cfg.prior_sigma, cfg.rebalance_mix)[nearest]

    def predict_logits(self, encoder: Encoder, batch: Batch, image_size: tuple[int, int]) -> Tensor:
        """``[B, Q, H/s, W/s]`` bin scores of the batch's lightness units."""
        fmap = feature_map(encoder.encode(batch).hidden, image_size)
        stride = self.config.output_stride
        return self.decoder(fmap, (image_size[0] // stride, image_size[1] // stride))

    @torch.no_grad()
    def colorize(self, encoder: Encoder, batch: Batch) -> Tensor:
        """Annealed-mean ab predictions (Sec. 2.3), upsampled to the image size: ``[B, 2, H, W]``."""
        size = tuple(self.pixels(batch).shape[-2:])
        ab = annealed_mean(self.predict_logits(encoder, batch, size), self.centres, self.config.temperature)
        return F.interpolate(ab, size=size, mode="bilinear", align_corners=False)

    def forward(self, encoder: Encoder, batch: Batch) -> ObjectiveOutput:
        pixels = self.pixels(batch)
        logits = self.predict_logits(encoder, batch, tuple(pixels.shape[-2:]))
        logits = logits.permute(0, 2, 3, 1).reshape(-1, logits.shape[1])  # [N, Q], row-major as the targets
        ab = self.targets(pixels)
        cfg = self.config
        weights = self.cell_weights(ab)
        loss = colorization_loss(logits, soft_encode(ab, self.centres, cfg.neighbours, cfg.encode_sigma), weights)
        with torch.no_grad():
            accuracy = (logits.argmax(1) == nearest_bin(ab, self.centres)).float().mean()
        return ObjectiveOutput(loss=loss, terms={"colorization": loss}, logs={"bin_accuracy": accuracy})
