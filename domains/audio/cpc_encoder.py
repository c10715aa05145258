"""CPC's audio model behind mmssl's encoder protocol (``encoder.arch=cpc``): ``hidden`` is the context ``c_t``."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from domains.audio.cpc_model import CPCModel
from mmssl.encoder import Encoder
from mmssl.types import Batch, EncoderOutput


class CPCEncoder(Encoder):
    """:class:`domains.audio.cpc_model.CPCModel` on waveform units ``[B, S]``: ``hidden`` is the context ``c_t``
    ``[B, T_frames, D]`` (causal: frame ``t`` sees samples up to the end of its window), and
    :meth:`encode_with_features` also gives the frames the context network reads (``z``, or vq-wav2vec's ``z_hat``).
    :meth:`quantizer_head` is the model when it quantises (its ``quantizer`` is transformers'
    ``Wav2Vec2GumbelVectorQuantizer``, whose ``temperature`` vq-wav2vec anneals)."""

    pipeline_tag = "feature-extraction"
    causal = True

    def __init__(self, model: CPCModel) -> None:
        super().__init__()
        self.model = model
        self.hidden_size = model.hidden_size
        self.feature_dim = model.feature_dim

    def output_padding_mask(self, batch: Batch) -> Tensor:
        """``[B, T_frames]`` bool, True at frames not wholly inside a (right-padded) row's real samples."""
        frames = int(self.model.frames(batch.units.shape[1]))
        real = self.model.frames((~batch.padding_mask).sum(1))  # [B]
        return torch.arange(frames, device=batch.units.device)[None, :] >= real[:, None]

    def encode_with_features(
        self, batch: Batch, mask: Tensor | None = None, all_layers: bool = False
    ) -> tuple[EncoderOutput, Tensor]:
        """``(c_t, frames)``; CPC neither masks frames nor stacks layers, so ``mask`` and ``all_layers`` are refused."""
        if mask is not None or all_layers:
            raise ValueError("encoder.arch=cpc neither masks frames nor returns its layers (use encoder.arch=wav2vec2)")
        padding = self.output_padding_mask(batch)
        context, features, _ = self.model(batch.units, padding if padding.any() else None)
        return EncoderOutput(hidden=context, padding_mask=padding), features

    def encode(self, batch: Batch, mask: Tensor | None = None, all_layers: bool = False) -> EncoderOutput:
        return self.encode_with_features(batch, mask, all_layers)[0]

    def quantizer_head(self) -> nn.Module:
        if self.model.quantizer is None:
            return super().quantizer_head()
        return self.model

    def export(self, out_dir: Path) -> None:
        self.model.save_pretrained(str(out_dir))
