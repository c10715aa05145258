"""BEST-RQ (Chiu et al. 2022, "Self-supervised Learning with Random-projection Quantizer for Speech Recognition").

The targets come from the units themselves: a frozen random projection and a frozen random
codebook, nearest code by cosine (sec. 2.1); masking with p=0.01 of units starting a span of
400 ms; a softmax layer predicts the code. Modality-agnostic: it reads ``[B, T, C]`` feature
units on the encoder's unit grid.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmssl.encoder import Encoder
from mmssl.masking import span_mask
from mmssl.objectives.base import Objective
from mmssl.objectives.checks import check_span_fits, check_span_mask
from mmssl.objectives.losses import unit_classification_loss
from mmssl.types import Batch, ObjectiveOutput


@dataclass(frozen=True)
class BestRQConfig:
    """BEST-RQ with one random-projection quantizer."""

    name: str = "best-rq"
    mask_prob: float = 0.01  # span starts per unit (sec. 3.3)
    mask_length: int = 20  # 400 ms of 20 ms units
    codebook_size: int = 8192  # paper: 8192 codes of dimension 16
    codebook_dim: int = 16
    seed: int = 0  # the frozen projection and codebook come from this seed (saved with the model too)

    def __post_init__(self) -> None:
        check_span_mask(self.mask_prob, self.mask_length)
        if self.codebook_size < 2 or self.codebook_dim < 1:
            raise ValueError("objective.codebook_size >= 2 and objective.codebook_dim >= 1 are required")


class RandomProjectionQuantizer(nn.Module):
    """Frozen ``x -> argmin_c || normalize(x P) - normalize(e_c) ||`` (BEST-RQ sec. 2.1).

    ``P`` is Xavier-initialised and the codebook standard normal; both are buffers (never
    trained, saved with the model so a resumed run keeps its targets).
    """

    def __init__(self, in_dim: int, codebook_size: int, codebook_dim: int, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        bound = (6.0 / (in_dim + codebook_dim)) ** 0.5
        self.register_buffer("projection", (torch.rand(in_dim, codebook_dim, generator=g) * 2 - 1) * bound)
        self.register_buffer("codebook", F.normalize(torch.randn(codebook_size, codebook_dim, generator=g), dim=-1))

    @torch.no_grad()
    def forward(self, units: Tensor) -> Tensor:
        """``[*, C]`` -> ``[*]`` int64 code ids (nearest normalised code = largest cosine)."""
        z = F.normalize(units.float() @ self.projection, dim=-1)
        return (z @ self.codebook.T).argmax(-1)


class BestRQ(Objective):
    """Predict the frozen random-projection code of every masked unit with a softmax layer."""

    def __init__(self, config: BestRQConfig, encoder: Encoder) -> None:
        super().__init__(config, encoder)
        if encoder.unit_dim is None:
            raise ValueError(f"best-rq quantizes feature units, but {type(encoder).__name__} has no unit_dim")
        self.quantizer = RandomProjectionQuantizer(
            encoder.unit_dim, config.codebook_size, config.codebook_dim, config.seed
        )
        self.head = nn.Linear(encoder.hidden_size, config.codebook_size)

    def forward(self, encoder: Encoder, batch: Batch) -> ObjectiveOutput:
        cfg = self.config
        if batch.units.ndim != 3:
            raise ValueError(f"best-rq reads feature units [B, T, C], got {tuple(batch.units.shape)}")
        check_span_fits(batch.maskable, cfg.mask_length, "mask_length")
        mask = span_mask(batch.maskable, start_prob=cfg.mask_prob, span_length=cfg.mask_length, min_spans=1)
        targets = self.quantizer(batch.units[mask])  # [N]
        hidden = encoder.encode(batch, mask=mask).hidden
        loss, acc = unit_classification_loss(self.head(hidden[mask]), targets)
        used = torch.unique(targets).numel() / cfg.codebook_size
        logs = {
            "masked_accuracy": acc,
            "codes_used": torch.tensor(used),
            "masked_fraction": (mask.sum() / batch.maskable.sum().clamp(min=1)).detach(),
        }
        return ObjectiveOutput(loss=loss, terms={"best_rq": loss}, logs=logs)
