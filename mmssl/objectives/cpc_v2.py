"""CPC v2 on unit grids (Hénaff et al. 2020, "Data-Efficient Image Recognition with Contrastive Predictive Coding").

The image's unit grid is cut into overlapping crops (``crop_units`` units a side, ``crop_stride`` apart: the paper's
64-pixel patches at a 32-pixel stride), each crop is encoded *on its own* by the encoder and pooled into ``z_{i,j}``,
so no crop sees another. A masked convolutional context network over the crop grid gives ``c_{i,j}`` from the rows
at and above ``i`` only, and ``W_k c_{i,j}`` predicts ``z_{i+k,j}``, ``k = 1..K`` rows below, with CPC's InfoNCE
against other crops of the image or of the whole batch (:func:`mmssl.objectives.cpc.future_contrastive_loss` on the
row-major crop grid, one step = one row).

Unlike CPC on speech, the representation kept is the encoder's (the paper's linear probe reads ``f_theta``): the
context network and predictors belong to the objective and are dropped with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmssl.encoder import Encoder
from mmssl.objectives.base import Objective
from mmssl.objectives.cpc import StepPredictors, check_contrastive_settings, check_future_fits, predictive_coding_output
from mmssl.types import Batch, ObjectiveOutput


@dataclass(frozen=True)
class CPCV2Config:
    """CPC v2 on a unit grid; the paper's 7x7 grid of 64-pixel crops at stride 32 is ``crop_units=2, crop_stride=1``
    on 32-pixel units."""

    name: str = "cpc_v2"
    crop_units: int = 2  # crop side, in units
    crop_stride: int = 1  # units between crops (half-overlapping crops)
    prediction_steps: int = 5  # K rows below (CPC v1 on images: up to 5 rows of the 7x7 grid)
    num_negatives: int = 16  # N per prediction (other crops; CPC v2 contrasts with every crop of the batch)
    negatives: Literal["sequence", "batch"] = "batch"  # sequence: crops of the same image only
    loss: Literal["infonce", "binary"] = "infonce"
    context_layers: int = 5  # residual masked-conv blocks of the context network (PixelCNN-style)
    context_kernel: int = 3  # each block sees context_kernel rows (at and above) x context_kernel columns

    def __post_init__(self) -> None:
        check_contrastive_settings(self)
        if self.crop_units < 1 or self.crop_stride < 1 or self.context_layers < 1 or self.context_kernel < 1:
            raise ValueError("objective.crop_units, crop_stride, context_layers and context_kernel must be >= 1")

    def crop_grid(self, rows: int, cols: int) -> tuple[int, int]:
        """``(R, C)`` crops of a ``rows x cols`` unit grid.

        Raises:
            ValueError: If a crop does not fit, naming ``objective.crop_units``.
        """
        if self.crop_units > min(rows, cols):
            raise ValueError(
                f"objective.crop_units={self.crop_units} does not fit the {rows}x{cols} unit grid: lower it "
                "or cut the images into more units (encoder.patch_size)"
            )
        return (rows - self.crop_units) // self.crop_stride + 1, (cols - self.crop_units) // self.crop_stride + 1

    def check_grid(self, rows: int, cols: int) -> None:
        """At load time (the image domain calls it with the unit grid): the crops fit, and ``K`` rows below and
        ``N`` negatives of one image fit its crop grid (the batch pool is checked on each batch)."""
        r, c = self.crop_grid(rows, cols)
        check_future_fits(self, r, r * c, None, f"a {r}x{c} grid of crops of objective.crop_units={self.crop_units}")


def crops_of(units: Tensor, grid: tuple[int, int], size: int, stride: int) -> Tensor:
    """``[B, rows * cols, C]`` units -> ``[B * R * C', size * size, C]``: every crop's units, row-major in the crop,
    crops in row-major order of the ``R x C'`` crop grid (``torch.nn.functional.unfold`` on the unit grid)."""
    b, _, c = units.shape
    image = units.transpose(1, 2).reshape(b, c, *grid)  # [B, C, rows, cols]
    cols = F.unfold(image, kernel_size=size, stride=stride)  # [B, C * size * size, L]
    return cols.reshape(b, c, size * size, -1).permute(0, 3, 2, 1).reshape(-1, size * size, c)


class MaskedConvContext(nn.Module):
    """Residual blocks of ``ReLU -> Conv2d`` padded only above (and on both sides), so ``c_{i,j}`` depends on the
    crop rows ``<= i``: the context network of CPC on images, on ``[B, D, R, C]`` feature grids."""

    def __init__(self, dim: int, layers: int, kernel: int) -> None:
        super().__init__()
        self.kernel = kernel
        self.convs = nn.ModuleList(nn.Conv2d(dim, dim, kernel) for _ in range(layers))

    def forward(self, z: Tensor) -> Tensor:
        k = self.kernel
        h = z
        for conv in self.convs:
            h = h + conv(F.pad(F.relu(h), (k // 2, (k - 1) // 2, k - 1, 0)))  # left, right, top, bottom
        return h


class CPCV2(Objective):
    """Crops encoded independently and pooled; masked-conv context; InfoNCE ``k`` crop rows below."""

    def __init__(self, config: CPCV2Config, encoder: Encoder) -> None:
        super().__init__(config, encoder)
        d = encoder.hidden_size
        self.context = MaskedConvContext(d, config.context_layers, config.context_kernel)
        self.predictors = StepPredictors(d, d, config.prediction_steps)

    def encode_crops(self, encoder: Encoder, batch: Batch) -> tuple[Tensor, tuple[int, int]]:
        """``z`` ``[B, R, C', D]``: each crop encoded alone (a batch of ``B * R * C'`` small grids) and pooled."""
        if batch.grid is None or bool(batch.padding_mask.any()):
            raise ValueError("cpc_v2 reads unpadded unit grids (Batch.grid): image patches")
        cfg = self.config
        r, c = cfg.crop_grid(*batch.grid)
        units = crops_of(batch.units, batch.grid, cfg.crop_units, cfg.crop_stride)
        crops = Batch(
            units=units,
            padding_mask=torch.zeros(units.shape[:2], dtype=torch.bool, device=units.device),
            grid=(cfg.crop_units, cfg.crop_units),
        )
        return encoder.encode(crops).pooled().reshape(batch.batch_size, r, c, -1), (r, c)

    def forward(self, encoder: Encoder, batch: Batch) -> ObjectiveOutput:
        z, (r, c) = self.encode_crops(encoder, batch)  # [B, R, C', D]
        check_future_fits(self.config, r, r * c, batch.batch_size, f"{batch.batch_size} images of {r}x{c} crops")
        context = self.context(z.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)  # [B, R, C', D]
        valid = torch.ones(batch.batch_size, r * c, dtype=torch.bool, device=z.device)
        return predictive_coding_output(
            self.predictors, context.flatten(1, 2), z.flatten(1, 2), valid, self.config, step=c
        )
