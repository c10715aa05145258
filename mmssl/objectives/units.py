"""Checked feature units and block masks on the unit grid, for the objectives that regress or mask units.

MAE and SimMIM read ``C`` from :attr:`Encoder.unit_dim` and regress ``[B, T, C]`` features;
APC and TERA regress feature units too; SimMIM and data2vec mask BEiT-style blocks on the
``(rows, cols)`` unit grid that a domain gives in ``Batch.grid``.
"""

from __future__ import annotations

from torch import Tensor

from mmssl.encoder import Encoder
from mmssl.masking import block_mask_2d
from mmssl.types import Batch


def unit_dim_of(encoder: Encoder, objective: str) -> int:
    """``C``, the encoder's features per unit.

    Raises:
        ValueError: If the encoder does not declare :attr:`Encoder.unit_dim`.
    """
    if encoder.unit_dim is None:
        raise ValueError(
            f"{objective} reconstructs [B, T, C] feature units, but {type(encoder).__name__} has no "
            "unit_dim (it reads unit ids or does not declare C)"
        )
    return encoder.unit_dim


def feature_units(batch: Batch, unit_dim: int, objective: str) -> Tensor:
    """``batch.units`` checked to be ``[B, T, unit_dim]`` features.

    Raises:
        ValueError: If the units are ids, or have another number of features.
    """
    units = batch.units
    if units.ndim != 3 or not units.is_floating_point():
        raise ValueError(
            f"{objective} regresses unit features [B, T, C], got {units.dtype} units of shape "
            f"{tuple(units.shape)} (token ids are predicted by mlm)"
        )
    if units.shape[-1] != unit_dim:
        raise ValueError(f"the encoder's unit_dim is {unit_dim} but the batch's units have {units.shape[-1]} features")
    return units


def regression_units(encoder: Encoder, batch: Batch, objective: str) -> Tensor:
    """``batch.units`` checked to be ``[B, T, C]`` features read by an encoder with a ``unit_dim`` (APC, TERA).

    Raises:
        ValueError: If the units are not float ``[B, T, C]`` or the encoder declares no ``unit_dim``.
    """
    if encoder.unit_dim is None or batch.units.ndim != 3 or not batch.units.is_floating_point():
        raise ValueError(
            f"{objective} regresses feature units [B, T, C] (e.g. fbank frames: data.stream=fbank), "
            f"got units of shape {tuple(batch.units.shape)} with {type(encoder).__name__}"
        )
    return batch.units


def grid_block_mask(batch: Batch, ratio: float, min_block: int) -> Tensor | None:
    """BEiT blocks (:func:`block_mask_2d`) on the batch's ``grid`` of ``(rows, cols)``
    units, restricted to maskable units; ``None`` when the domain gives no 2-D grid."""
    if batch.grid is None:
        return None
    rows, cols = batch.grid
    if rows * cols != batch.units.shape[1]:
        raise ValueError(f"Batch.grid = {rows}x{cols} does not hold the batch's {batch.units.shape[1]} units")
    blocks = block_mask_2d(batch.batch_size, rows, cols, ratio=ratio, min_block=min_block, device=batch.units.device)
    return blocks & batch.maskable
