"""Denoising autoencoder (Vincent et al. 2008, "Extracting and composing robust features with denoising
autoencoders"; Vincent et al. 2010, "Stacked denoising autoencoders", JMLR 11).

The input ``x`` (patch units ``[B, T, C]``, the image domain's standardised pixels) is corrupted into ``x~``, the
encoder reads ``x~``, and the convolutional :class:`~mmssl.objectives.pixel_decoder.PixelDecoder` reconstructs the
clean ``x`` from the encoder's feature map; the loss is the squared error (the papers' loss for real-valued inputs),
optionally emphasising the corrupted elements (Vincent et al. 2010, sec. 4.3: weight ``alpha`` on corrupted,
``beta`` on uncorrupted elements; ``beta = 0`` is "full emphasis", a loss on the corrupted elements only).

Corruptions (Vincent et al. 2010, sec. 4.2), element by element (a pixel of one channel):

* ``masking``: a fraction ``corruption_fraction`` of the elements is forced to the smallest value of that feature in
  the batch, which for standardised ``[0, 1]`` pixels is the standardised 0 (a black pixel), the paper's "forced to 0";
* ``gaussian``: ``x~ = x + noise_std * N(0, I)`` on every element, ``noise_std`` in units of the standardised input
  (the data's standard deviation);
* ``salt_and_pepper``: a fraction ``corruption_fraction`` is set to the feature's smallest or largest value in the
  batch (the paper's "minimum or maximum possible value", 0 or 1 for pixels) by a fair coin.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from mmssl.encoder import Encoder
from mmssl.objectives.base import Objective
from mmssl.objectives.pixel_decoder import (
    build_pixel_decoder,
    check_decoder_settings,
    check_grid_domain,
    feature_map,
    input_grid,
    weighted_squared_error,
)
from mmssl.objectives.units import feature_units
from mmssl.types import Batch, ObjectiveOutput

CORRUPTIONS = ("masking", "gaussian", "salt_and_pepper")


@dataclass(frozen=True)
class DAEConfig:
    """Denoising autoencoder (Vincent et al. 2008, 2010) with a convolutional decoder."""

    name: str = "dae"
    corruption: Literal["masking", "gaussian", "salt_and_pepper"] = "masking"  # 2008: masking noise
    corruption_fraction: float = 0.25  # masking / salt-and-pepper: 2008 sec. 5 tried 10%, 25%, 40%
    noise_std: float = 0.5  # gaussian: 2010 sec. 5 tried sigma up to 0.5 on [0, 1] pixels
    uncorrupted_weight: float = 1.0  # beta / alpha of the emphasised DAE (2010 sec. 4.3): 1 plain, 0 full emphasis
    decoder_width: int = 64  # channels of the decoder's resize-convolution blocks
    decoder_depth: int = 2

    def __post_init__(self) -> None:
        if self.corruption not in CORRUPTIONS:
            raise ValueError(f"objective.corruption must be one of {', '.join(CORRUPTIONS)}, got {self.corruption!r}")
        if not 0.0 <= self.corruption_fraction <= 1.0:
            raise ValueError(f"objective.corruption_fraction must be in [0, 1], got {self.corruption_fraction}")
        if self.noise_std < 0:
            raise ValueError(f"objective.noise_std must be >= 0, got {self.noise_std}")
        if not 0.0 <= self.uncorrupted_weight <= 1.0:
            raise ValueError(f"objective.uncorrupted_weight must be in [0, 1], got {self.uncorrupted_weight}")
        if self.corruption == "gaussian" and self.uncorrupted_weight != 1.0:
            raise ValueError(
                f"objective.uncorrupted_weight={self.uncorrupted_weight} weighs uncorrupted elements, but "
                "objective.corruption=gaussian corrupts every element: use masking or salt_and_pepper, or leave "
                "objective.uncorrupted_weight at 1"
            )
        check_decoder_settings(self)

    def check_recipe(self, recipe: Any) -> None:
        """The decoder needs units on a 2-D grid (an image domain)."""
        check_grid_domain(recipe, self.name)


def corrupt(units: Tensor, cfg: DAEConfig) -> tuple[Tensor, Tensor]:
    """Corrupt units as :class:`DAEConfig` says (module docstring).

    Args:
        units: ``[B, T, C]`` clean inputs.
        cfg: the corruption settings.

    Returns:
        ``(corrupted [B, T, C], changed [B, T, C] bool)``: the encoder's input and the corrupted elements.
    """
    if cfg.corruption == "gaussian":
        return units + cfg.noise_std * torch.randn_like(units), torch.ones_like(units, dtype=torch.bool)
    chosen = torch.rand_like(units) < cfg.corruption_fraction
    low = units.detach().amin(dim=(0, 1))  # [C]: the smallest value of each feature in the batch
    if cfg.corruption == "masking":
        return torch.where(chosen, low, units), chosen
    high = units.detach().amax(dim=(0, 1))
    salt = torch.rand_like(units) < 0.5
    return torch.where(chosen, torch.where(salt, high, low), units), chosen


class DAE(Objective):
    """Reconstruct clean patch units from corrupted ones through the encoder and a convolutional decoder.

    Attributes:
        decoder: :class:`~mmssl.objectives.pixel_decoder.PixelDecoder` from the encoder's feature map.
    """

    def __init__(self, config: DAEConfig, encoder: Encoder) -> None:
        super().__init__(config, encoder)
        self.decoder = build_pixel_decoder(encoder, config, "dae")

    def reconstruct(self, encoder: Encoder, batch: Batch, corrupted: Tensor) -> Tensor:
        """``[B, T, C]`` units decoded from the encoder's feature map of ``corrupted`` units."""
        out = encoder.encode(batch.replace(units=corrupted))
        return self.decoder(feature_map(out, "dae"), input_grid(batch, "dae"))

    def forward(self, encoder: Encoder, batch: Batch) -> ObjectiveOutput:
        units = feature_units(batch, self.decoder.head.out_channels, "dae")
        corrupted, changed = corrupt(units, self.config)
        pred = self.reconstruct(encoder, batch, corrupted)  # [B, T, C]
        weight = torch.where(changed, 1.0, self.config.uncorrupted_weight)
        loss = weighted_squared_error(pred, units, weight)
        logs = {"corrupted_fraction": changed.float().mean().detach()}
        return ObjectiveOutput(loss=loss, terms={"dae": loss}, logs=logs)
