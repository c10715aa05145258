"""TERA (Liu, Li & Lee 2021, "TERA: Self-Supervised Learning of Transformer Encoder Representation for Speech").

Time alteration (spans of ``time_span`` units cover ~15% of a row; 80% zeroed, 10% replaced by
random units of the batch, 10% kept) and channel alteration (one band of ``U[0, max_channels]``
channels zeroed per row); a two-layer prediction network reconstructs the original at every
altered element (sec. III), with the L1 :func:`masked_regression_loss`. Modality-agnostic: it
reads ``[B, T, C]`` feature units (``Batch.units``: spectrogram frames, patch pixels, node features).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mmssl.encoder import Encoder
from mmssl.masking import span_mask
from mmssl.objectives.base import Objective
from mmssl.objectives.checks import check_span_fits
from mmssl.objectives.losses import masked_regression_loss
from mmssl.objectives.units import regression_units
from mmssl.types import Batch, ObjectiveOutput


@dataclass(frozen=True)
class TERAConfig:
    """TERA time + channel alteration (Liu, Li & Lee 2021)."""

    name: str = "tera"
    time_fraction: float = 0.15  # share of units covered by altered spans
    time_span: int = 7  # units per span (paper: 7 frames)
    zero_frac: float = 0.8  # altered spans: 80% zeroed, 10% random units, 10% unchanged
    random_frac: float = 0.1
    max_channels: int = 20  # channel band width ~ U[0, max_channels] (paper: 20 of 80 bins)
    channel_groups: int = 1  # units of stacked frames: the band repeats in each of the C / groups channel blocks
    hidden_dim: int = 0  # prediction network width; 0: the encoder's hidden size

    def __post_init__(self) -> None:
        if not 0.0 < self.time_fraction < 1.0 or self.time_span < 1:
            raise ValueError("objective.time_fraction must be in (0, 1) and objective.time_span >= 1")
        if self.zero_frac + self.random_frac > 1.0 or min(self.zero_frac, self.random_frac) < 0:
            raise ValueError("objective.zero_frac + objective.random_frac must be in [0, 1]")
        if self.max_channels < 0 or self.channel_groups < 1 or self.hidden_dim < 0:
            raise ValueError("objective.max_channels >= 0, channel_groups >= 1 and hidden_dim >= 0 are required")


def channel_band(batch_size: int, channels: int, max_width: int, groups: int, device: torch.device) -> Tensor:
    """``[B, C]`` bool: one band of ``U[0, max_width]`` channels per row, repeated in each of ``groups`` blocks."""
    per_group = channels // groups
    width = torch.randint(0, min(max_width, per_group) + 1, (batch_size, 1), device=device)
    start = (torch.rand(batch_size, 1, device=device) * (per_group - width + 1)).long()
    pos = torch.arange(per_group, device=device)
    return ((pos >= start) & (pos < start + width)).repeat(1, groups)


def tera_alter(units: Tensor, maskable: Tensor, cfg: TERAConfig) -> tuple[Tensor, Tensor]:
    """Apply TERA's time and channel alterations.

    Returns:
        ``(altered [B, T, C], target_mask [B, T, C])``: the encoder's input and the elements to
        reconstruct (every element of a time-altered unit, every element of the channel band).
    """
    b, t, c = units.shape
    check_span_fits(maskable, cfg.time_span, "time_span")
    time = span_mask(maskable, start_prob=cfg.time_fraction / cfg.time_span, span_length=cfg.time_span)
    u = torch.rand(b, t, device=units.device)
    zero = time & (u < cfg.zero_frac)
    rand = time & (u >= cfg.zero_frac) & (u < cfg.zero_frac + cfg.random_frac)
    real = units[maskable]  # [N, C]: random replacements are real units of the batch
    pick = real[torch.randint(0, max(len(real), 1), (b, t), device=units.device)] if len(real) else units
    altered = torch.where(rand[..., None], pick, units).masked_fill(zero[..., None], 0.0)
    band = channel_band(b, c, cfg.max_channels, cfg.channel_groups, units.device)  # [B, C]
    altered = altered.masked_fill(band[:, None, :] & maskable[..., None], 0.0)
    target = (time[..., None] | band[:, None, :]) & maskable[..., None]
    return altered, target


class TERA(Objective):
    """Reconstruct the original units from time- and channel-altered ones (L1 on the altered elements)."""

    def __init__(self, config: TERAConfig, encoder: Encoder) -> None:
        super().__init__(config, encoder)
        if encoder.unit_dim is None:
            raise ValueError(f"tera reconstructs feature units, but {type(encoder).__name__} has no unit_dim")
        if encoder.unit_dim % config.channel_groups:
            raise ValueError(
                f"objective.channel_groups={config.channel_groups} does not divide the "
                f"{encoder.unit_dim} features per unit"
            )
        d, width = encoder.hidden_size, config.hidden_dim or encoder.hidden_size
        # TERA's prediction network: dense, GELU, layer norm, dense to the unit features (sec. III-D)
        self.head = nn.Sequential(
            nn.Linear(d, width), nn.GELU(), nn.LayerNorm(width), nn.Linear(width, encoder.unit_dim)
        )

    def forward(self, encoder: Encoder, batch: Batch) -> ObjectiveOutput:
        units = regression_units(encoder, batch, "tera")
        altered, target = tera_alter(units, batch.maskable, self.config)
        pred = self.head(encoder.encode(batch.replace(units=altered)).hidden)  # [B, T, C]
        # L1 over the altered elements only: each element is a one-feature "unit" of the regression loss
        loss = masked_regression_loss(pred.unsqueeze(-1), units.unsqueeze(-1), target, loss="l1")
        logs = {"altered_fraction": (target.sum() / (batch.maskable.sum() * units.shape[-1]).clamp(min=1)).detach()}
        return ObjectiveOutput(loss=loss, terms={"tera": loss}, logs=logs)
