"""MAE (He et al. 2022): encode the visible units only, decode every unit, regress the masked ones.

Modality-agnostic: MAE regresses the features of masked units (``Batch.units`` ``[B, T, C]``:
image patch pixels, spectrogram frames, node features). It builds a decoder of ``C`` outputs at
construction, so it reads ``C`` from the encoder's :attr:`Encoder.unit_dim`, and it encodes the
visible units through :meth:`Encoder.encode_visible` (ViT-style encoders).
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
from mmssl.objectives.units import feature_units, unit_dim_of
from mmssl.types import Batch, ObjectiveOutput


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
        check_ratio(self.mask_ratio, "mask_ratio")
        for name in ("decoder_dim", "decoder_depth", "decoder_heads", "max_units"):
            if getattr(self, name) < 1:
                raise ValueError(f"objective.{name} must be >= 1, got {getattr(self, name)}")
        if self.decoder_dim % self.decoder_heads:
            raise ValueError(
                f"objective.decoder_dim={self.decoder_dim} is not divisible by "
                f"objective.decoder_heads={self.decoder_heads}"
            )


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
            nn.TransformerEncoderLayer(
                width,
                heads,
                dim_feedforward=4 * width,
                dropout=0.0,
                activation="gelu",
                batch_first=True,
                norm_first=True,
            )
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
            raise ValueError(
                f"objective.max_units={self.position.shape[0]} is below the batch's {num_units} "
                "units; raise objective.max_units"
            )
        tokens = self.embed(hidden)  # [B, K, W]
        x = self.mask_token.to(tokens.dtype).expand(b, num_units, width)
        x = x.scatter(1, visible.unsqueeze(-1).expand(-1, -1, width), tokens)  # [B, T, W]
        x = x + self.position[:num_units].to(x.dtype)
        for block in self.blocks:
            x = block(x)
        x = self.norm(x.gather(1, masked.unsqueeze(-1).expand(-1, -1, width)))  # [B, M, W]
        return self.head(x)


def split_units(mask: Tensor) -> tuple[Tensor, Tensor]:
    """``[B, T]`` mask -> ``(visible [B, K], masked [B, M])`` unit indices, ascending in each row.

    Raises:
        ValueError: If rows mask different numbers of units.
    """
    counts = mask.sum(1)
    if bool((counts != counts[0]).any()):
        raise ValueError(
            "mae needs the same number of maskable units in every row (no padding, the same special units)"
        )
    order = mask.to(torch.uint8).argsort(dim=1, stable=True)  # unmasked units first, each part in index order
    visible_count = mask.shape[1] - int(counts[0])
    return order[:, :visible_count], order[:, visible_count:]


class MAE(Objective):
    """Encode the visible units only, decode every unit, regress the masked ones (He et al. 2022).

    ``round(mask_ratio * T)`` units of each row are masked (:func:`random_mask`); the encoder
    runs on the rest through :meth:`Encoder.encode_visible` (ViT-style encoders; others raise
    :class:`mmssl.encoder.CapabilityError`), and :class:`MAEDecoder` predicts the masked units'
    features. The loss is :func:`masked_regression_loss` (MSE) on the masked units, with per-unit
    normalised targets when ``norm_target``. Batches must have no padding.
    """

    def __init__(self, config: MAEConfig, encoder: Encoder) -> None:
        super().__init__(config, encoder)
        self.unit_dim = unit_dim_of(encoder, "mae")
        self.decoder = MAEDecoder(
            encoder.hidden_size,
            self.unit_dim,
            config.decoder_dim,
            config.decoder_depth,
            config.decoder_heads,
            config.max_units,
        )

    def forward(self, encoder: Encoder, batch: Batch) -> ObjectiveOutput:
        units = feature_units(batch, self.unit_dim, "mae")
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
