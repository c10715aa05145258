"""Images <-> patch units on the ``[B, T]`` grid.

A ``P x P`` patch of a ``C``-channel image is one unit of ``C * P * P`` features, flattened
channel-major ``(C, P, P)``: the order of ``torch.nn.functional.unfold`` and of a
``Conv2d(C, D, kernel_size=P, stride=P)`` weight flattened to ``[D, C*P*P]``, so a ViT's
patch embedding is a linear map of a unit. Units are row-major over the patch grid.
The grid shape travels with the batch as ``Batch.grid = (rows, cols)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from mmssl.types import Batch


def patchify(images: Tensor, patch_size: int) -> Tensor:
    """``[B, C, H, W]`` -> ``[B, (H/P) * (W/P), C * P * P]``.

    Raises:
        ValueError: the image sides are not multiples of ``patch_size``.
    """
    _, _, h, w = images.shape
    if h % patch_size or w % patch_size:
        raise ValueError(f"image size {h}x{w} is not a multiple of encoder.patch_size={patch_size}")
    return F.unfold(images, kernel_size=patch_size, stride=patch_size).transpose(1, 2)


def unpatchify(units: Tensor, grid: tuple[int, int], patch_size: int) -> Tensor:
    """Inverse of :func:`patchify`: ``[B, T, C * P * P]`` on a ``rows x cols`` grid -> ``[B, C, H, W]``."""
    rows, cols = grid
    if units.shape[1] != rows * cols:
        raise ValueError(f"{units.shape[1]} units do not fill a {rows}x{cols} patch grid")
    size = (rows * patch_size, cols * patch_size)
    return F.fold(units.transpose(1, 2), output_size=size, kernel_size=patch_size, stride=patch_size)


def image_batch(images: Tensor, patch_size: int, **extras: Tensor) -> Batch:
    """A :class:`Batch` of patch units for ``[B, C, H, W]`` images (no padding, every patch maskable)."""
    b, _, h, w = images.shape
    units = patchify(images, patch_size)
    grid = (h // patch_size, w // patch_size)
    return Batch(
        units=units,
        padding_mask=torch.zeros(units.shape[:2], dtype=torch.bool, device=units.device),
        extras=extras,
        grid=grid,
    )


def grid_of(batch: Batch) -> tuple[int, int]:
    """The ``(rows, cols)`` patch grid of an image batch."""
    if batch.grid is None:
        raise ValueError("an image batch needs Batch.grid = (rows, cols); build it with image_batch()")
    return batch.grid
