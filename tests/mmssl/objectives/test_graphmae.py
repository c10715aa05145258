"""GraphMAE refuses an encoder without a unit decoder (the re-masked codes of masked units are zeros, so a
per-unit decoder could only learn a bias); the graph domain's tests cover its loss and training."""

from __future__ import annotations

from pathlib import Path

import pytest
from torch import Tensor, nn

from mmssl.encoder import CapabilityError, Encoder
from mmssl.objectives.graphmae import GraphMAE, GraphMAEConfig
from mmssl.types import Batch, EncoderOutput


class FeatureEncoder(Encoder):
    """A per-unit linear encoder of ``[B, T, 6]`` features, with no unit decoder."""

    hidden_size, unit_dim = 8, 6

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(self.unit_dim, self.hidden_size)

    def encode(self, batch: Batch, mask: Tensor | None = None, all_layers: bool = False) -> EncoderOutput:
        return EncoderOutput(hidden=self.proj(batch.units), padding_mask=batch.padding_mask)

    def export(self, out_dir: Path) -> None:  # pragma: no cover - not exported here
        raise NotImplementedError


def test_graphmae_needs_an_encoder_with_a_unit_decoder() -> None:
    encoder = FeatureEncoder()
    assert encoder.unit_decoder(8, 6) is None
    with pytest.raises(CapabilityError, match="graphmae decodes each masked unit from its neighbours"):
        GraphMAE(GraphMAEConfig(), encoder)
