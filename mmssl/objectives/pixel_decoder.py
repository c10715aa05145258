"""The convolutional pixel decoder of the image reconstruction objectives (DAE, VAE, context encoder).

An encoder's feature map ``[B, T', D]`` on its own ``(h', w')`` grid (:attr:`EncoderOutput.grid`: a ResNet's final
feature map, a ViT's patch tokens) is upsampled by resize-convolutions (nearest-neighbour resize, then a 3x3
convolution, batch norm and ReLU: Odena, Dumoulin & Olah 2016, "Deconvolution and checkerboard artifacts", in place
of transposed convolutions, so any ratio of grids works: a ResNet's 4x4 map to a 7x7 patch grid) up to the input's
``(rows, cols)`` patch grid; a last 3x3 convolution gives ``C * P * P`` channels per cell, a sub-pixel convolution
(Shi et al. 2016): ``pixel_shuffle`` of its output is the ``[B, C, rows * P, cols * P]`` image, and each cell's
channels, in the ``(C, P, P)`` order of a patch unit, are that patch. So the decoder predicts images as patch units
``[B, T, C * P * P]`` on the input grid without knowing ``C`` or ``P`` apart.

:func:`patch_units` and :func:`unit_images` convert between images and patch units (the layout of
``domains/image/units.py``) for the objectives that read ``[0, 1]`` pixels or draw images.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmssl.distributed import global_mean_normalizer
from mmssl.encoder import Encoder
from mmssl.objectives.units import unit_dim_of
from mmssl.types import Batch, EncoderOutput


def check_decoder_settings(config: Any) -> None:
    """``objective.decoder_width`` and ``objective.decoder_depth`` of a config are >= 1."""
    for key in ("decoder_width", "decoder_depth"):
        if getattr(config, key) < 1:
            raise ValueError(f"objective.{key} must be >= 1, got {getattr(config, key)}")


def check_grid_domain(recipe: Any, objective: str) -> None:
    """A recipe's domain gives units on a 2-D grid (images), which the convolutional decoder needs.

    Raises:
        ValueError: Naming ``domain`` and ``objective.name``.
    """
    from mmssl.registry import DOMAINS  # the registries import the domains: only when a recipe is checked

    kind = DOMAINS.get(recipe.domain).unit_kind
    if kind != "grid":
        raise ValueError(
            f"objective.name={objective} decodes images with a convolutional decoder from a 2-D feature map, but "
            f"domain {recipe.domain} gives {kind} units with no grid; use an image domain (units on a grid)"
        )


def input_grid(batch: Batch, objective: str) -> tuple[int, int]:
    """``(rows, cols)`` of the batch's patch units.

    Raises:
        ValueError: If the batch has no 2-D grid, or the grid does not hold its units.
    """
    if batch.grid is None:
        raise ValueError(f"{objective} reconstructs images: it needs units on a 2-D grid (Batch.grid), these have none")
    rows, cols = batch.grid
    if rows * cols != batch.units.shape[1]:
        raise ValueError(f"Batch.grid = {rows}x{cols} does not hold the batch's {batch.units.shape[1]} units")
    return rows, cols


def feature_map(out: EncoderOutput, objective: str) -> Tensor:
    """The encoder's output as a ``[B, D, h', w']`` feature map.

    Raises:
        ValueError: If the encoder's output lies on no 2-D grid (:attr:`EncoderOutput.grid` is None).
    """
    if out.grid is None:
        raise ValueError(
            f"{objective} decodes images from the encoder's 2-D feature map, but the encoder gave no grid "
            "(EncoderOutput.grid); use an image encoder (encoder.arch=resnet or vit)"
        )
    rows, cols = out.grid
    b, t, d = out.hidden.shape
    if rows * cols != t:
        raise ValueError(f"EncoderOutput.grid = {rows}x{cols} does not hold the encoder's {t} outputs")
    return out.hidden.transpose(1, 2).reshape(b, d, rows, cols)


def grid_ladder(start: tuple[int, int], end: tuple[int, int], steps: int) -> list[tuple[int, int]]:
    """``steps`` grid sizes growing geometrically from ``start`` to exactly ``end`` (the last one)."""
    sizes = []
    for k in range(1, steps + 1):
        sizes.append(tuple(max(1, round(s * (e / s) ** (k / steps))) for s, e in zip(start, end)))
    sizes[-1] = tuple(end)
    return sizes  # type: ignore[return-value]


class PixelDecoder(nn.Module):
    """Feature map ``[B, D, h', w']`` -> patch units ``[B, rows * cols, unit_dim]`` (see module docstring).

    Args:
        in_dim: channels ``D`` of the feature map.
        unit_dim: features per patch unit, ``C * P * P``.
        width: channels of the resize-convolution blocks.
        depth: resize-convolution blocks (>= 1); the grid grows geometrically over them.
    """

    def __init__(self, in_dim: int, unit_dim: int, width: int, depth: int) -> None:
        super().__init__()
        if depth < 1 or width < 1:
            raise ValueError(f"a pixel decoder needs depth >= 1 and width >= 1, got {depth} and {width}")
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(in_dim if i == 0 else width, width, 3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
            )
            for i in range(depth)
        )
        self.head = nn.Conv2d(width, unit_dim, 3, padding=1)  # sub-pixel convolution: one patch per cell

    def upsample(self, fmap: Tensor, grid: tuple[int, int]) -> Tensor:
        """``[B, D, h', w']`` -> ``[B, width, rows, cols]``: the resize-convolution blocks."""
        x = fmap
        for block, size in zip(self.blocks, grid_ladder(tuple(fmap.shape[-2:]), grid, len(self.blocks))):
            if tuple(x.shape[-2:]) != size:
                x = F.interpolate(x, size=size, mode="nearest")
            x = block(x)
        return x

    def forward(self, fmap: Tensor, grid: tuple[int, int]) -> Tensor:
        """Decode a feature map to the patch units of a ``rows x cols`` grid, ``[B, rows * cols, unit_dim]``."""
        return self.head(self.upsample(fmap, grid)).flatten(2).transpose(1, 2)


class VectorStem(nn.Module):
    """A vector ``[B, K]`` (a VAE's latent) -> a ``[B, width, side, side]`` feature map for :class:`PixelDecoder`:
    a linear layer, batch norm and ReLU, as the first layer of DCGAN's generator (Radford et al. 2016)."""

    def __init__(self, in_dim: int, width: int, side: int) -> None:
        super().__init__()
        self.width, self.side = width, side
        self.linear = nn.Linear(in_dim, width * side * side)  # its bias: a position-dependent map (the mean image)
        self.norm = nn.BatchNorm2d(width)

    def forward(self, z: Tensor) -> Tensor:
        x = self.linear(z).view(z.shape[0], self.width, self.side, self.side)
        return F.relu(self.norm(x))


def build_pixel_decoder(encoder: Encoder, config: Any, objective: str, in_dim: int | None = None) -> PixelDecoder:
    """A :class:`PixelDecoder` from ``in_dim`` channels (default: the encoder's width) to the encoder's patch units,
    ``objective.decoder_width`` wide and ``objective.decoder_depth`` blocks deep."""
    unit_dim = unit_dim_of(encoder, objective)
    return PixelDecoder(in_dim or encoder.hidden_size, unit_dim, config.decoder_width, config.decoder_depth)


def weighted_squared_error(pred: Tensor, target: Tensor, weight: Tensor) -> Tensor:
    """``sum(w * (pred - target)^2) / sum(w)`` over every element, with ``sum(w)`` over all processes.

    The reconstruction loss of the DAE (emphasis on corrupted elements, Vincent et al. 2010, sec. 4.3) and the
    context encoder (the masked region, its overlap border weighted more, Pathak et al. 2016, sec. 3.2). With 0/1
    weights on whole units it is :func:`mmssl.objectives.losses.masked_regression_loss` (MSE).

    Args:
        pred: ``[B, T, C]`` predicted units.
        target: ``[B, T, C]`` true units (detached here).
        weight: weights broadcastable to ``[B, T, C]`` (``[B, T, 1]`` per unit), >= 0.

    Returns:
        Scalar loss in float32 (0 where every weight is 0).
    """
    w = weight.to(torch.float32).expand_as(pred)
    err = (pred.float() - target.detach().float()).pow(2)
    return (w * err).sum() / global_mean_normalizer(w.sum())


CHANNELS = (1, 3)  # grey and RGB images: C * P * P determines both C and P, since 3 is not a square


def patch_geometry(unit_dim: int, objective: str) -> tuple[int, int]:
    """``(channels, patch)`` of ``C x P x P`` patch units of ``unit_dim`` features, with ``C`` 1 or 3.

    Raises:
        ValueError: If ``unit_dim`` is neither ``P * P`` nor ``3 * P * P``.
    """
    for channels in CHANNELS:
        patch = math.isqrt(unit_dim // channels)
        if unit_dim % channels == 0 and channels * patch * patch == unit_dim:
            return channels, patch
    raise ValueError(
        f"{objective} reads image patches of C x P x P features with C = 1 or 3; the encoder's units have {unit_dim}"
    )


def patch_units(images: Tensor, grid: tuple[int, int]) -> Tensor:
    """``[B, C, H, W]`` images -> ``[B, rows * cols, C * P * P]`` patch units (``P = H / rows``), row-major.

    Raises:
        ValueError: If the grid does not cut the images into square patches.
    """
    p = patch_side(images.shape[-2:], grid)
    return F.unfold(images, kernel_size=p, stride=p).transpose(1, 2)


def unit_images(units: Tensor, grid: tuple[int, int], channels: int) -> Tensor:
    """Inverse of :func:`patch_units`: ``[B, rows * cols, C * P * P]`` -> ``[B, C, rows * P, cols * P]``."""
    p = math.isqrt(units.shape[-1] // channels)
    if channels * p * p != units.shape[-1]:
        raise ValueError(f"{units.shape[-1]} features per unit are not {channels} channels of a square patch")
    rows, cols = grid
    return F.fold(units.transpose(1, 2), output_size=(rows * p, cols * p), kernel_size=p, stride=p)


def patch_side(size: tuple[int, int] | Any, grid: tuple[int, int]) -> int:
    """The patch side ``P`` of ``H x W`` images on a ``rows x cols`` grid.

    Raises:
        ValueError: If the sides are not ``rows * P`` and ``cols * P``.
    """
    (h, w), (rows, cols) = tuple(size), grid
    if h % rows or w % cols or h // rows != w // cols:
        raise ValueError(f"{h}x{w} images do not cut into square patches on a {rows}x{cols} grid")
    return h // rows
