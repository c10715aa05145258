"""APC (Chung et al. 2019, "An Unsupervised Autoregressive Model for Speech Representation Learning").

A unidirectional encoder's output at unit ``t`` predicts unit ``t + n`` (``n = 3`` frames is
the paper's best for phonetic content, sec. 4.2), with the L1 :func:`masked_regression_loss`
over every real pair. Modality-agnostic: it reads ``[B, T, C]`` feature units (``Batch.units``:
spectrogram frames, patch pixels, node features) and needs an encoder that declares
:attr:`Encoder.causal`.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from mmssl.encoder import Encoder
from mmssl.objectives.base import Objective
from mmssl.objectives.losses import masked_regression_loss
from mmssl.objectives.units import regression_units
from mmssl.types import Batch, ObjectiveOutput


@dataclass(frozen=True)
class APCConfig:
    """Autoregressive predictive coding (Chung et al. 2019)."""

    name: str = "apc"
    shift: int = 3  # n: predict the unit n steps ahead (paper: 3 frames of 10 ms)

    def __post_init__(self) -> None:
        if self.shift < 1:
            raise ValueError(f"objective.shift must be >= 1, got {self.shift}")


class APC(Objective):
    """L1 between ``Linear(h_t)`` and ``x_{t+n}`` over every real pair; the encoder must be causal."""

    def __init__(self, config: APCConfig, encoder: Encoder) -> None:
        super().__init__(config, encoder)
        if not encoder.causal:
            raise ValueError("apc needs a causal encoder (one that sees only the past): set encoder.causal=true")
        if encoder.unit_dim is None:
            raise ValueError(f"apc predicts feature units, but {type(encoder).__name__} has no unit_dim")
        self.head = nn.Linear(encoder.hidden_size, encoder.unit_dim)

    def forward(self, encoder: Encoder, batch: Batch) -> ObjectiveOutput:
        units, n = regression_units(encoder, batch, "apc"), self.config.shift
        if units.shape[1] <= n:
            raise ValueError(f"apc: rows of {units.shape[1]} units are too short to predict {n} ahead")
        hidden = encoder.encode(batch).hidden
        valid = ~batch.padding_mask[:, n:] & ~batch.padding_mask[:, :-n]  # [B, T - n]
        pred = self.head(hidden[:, :-n])
        loss = masked_regression_loss(pred, units[:, n:], valid, loss="l1")
        return ObjectiveOutput(loss=loss, terms={"apc": loss})
