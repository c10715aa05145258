"""CPC's audio model (van den Oord et al. 2018) and vq-wav2vec's (Baevski et al. 2020), one Hub-mixin module.

A strided conv encoder turns raw 16 kHz samples into local features ``z`` (the CPC paper: 5 layers, kernels
(10, 8, 4, 4, 4), strides (5, 4, 2, 2, 2), 512 channels: one frame per 10 ms), optionally quantised by a Gumbel
product quantizer (vq-wav2vec: ``z -> z_hat``), and a causal context network (a GRU as in the paper, or a causal
transformer) summarises the frames up to ``t`` into ``c_t``, the representation the paper probes.

The conv stack is transformers' ``Wav2Vec2FeatureEncoder`` with per-frame layer norm (the channel norm of
facebookresearch/CPC_audio) and ReLU; the quantizer is transformers' ``Wav2Vec2GumbelVectorQuantizer``. This file
depends only on torch, transformers and huggingface_hub, so an export loads back without mmssl's training code::

    from domains.audio.cpc_model import CPCModel
    model = CPCModel.from_pretrained("runs/cpc/export")     # config.json + model.safetensors
    context, features, _ = model(waveforms)                 # [B, T, D] c_t, [B, T, C] z, one frame per 10 ms
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from huggingface_hub import PyTorchModelHubMixin
from torch import Tensor, nn
from transformers import Wav2Vec2Config
from transformers.models.wav2vec2.modeling_wav2vec2 import Wav2Vec2FeatureEncoder, Wav2Vec2GumbelVectorQuantizer

CONTEXT_NETWORKS = ("gru", "transformer")
QUANTIZERS = ("none", "gumbel")


def conv_frames(samples: Tensor | int, kernels: Sequence[int], strides: Sequence[int]) -> Tensor | int:
    """Frames a conv stack without padding gives for ``samples`` inputs: ``L <- (L - k) // s + 1`` per layer
    (0 when the input is shorter than the receptive field)."""
    for k, s in zip(kernels, strides):
        samples = (samples - k) // s + 1
    return samples.clamp(min=0) if isinstance(samples, Tensor) else max(samples, 0)


def sinusoids(length: int, dim: int, device: torch.device) -> Tensor:
    """``[length, dim]`` fixed sin/cos positions (Vaswani et al. 2017), for the causal transformer."""
    position = torch.arange(length, device=device, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    out = torch.zeros(length, dim, device=device)
    out[:, 0::2] = torch.sin(position * freq)
    out[:, 1::2] = torch.cos(position * freq)[:, : dim // 2]
    return out


class CausalTransformer(nn.Module):
    """Pre-LN transformer layers (``torch.nn.TransformerEncoder``) under a causal mask, on ``[B, T, C]`` frames."""

    def __init__(self, in_dim: int, dim: int, layers: int, heads: int, ffn: int, dropout: float) -> None:
        super().__init__()
        self.proj = nn.Linear(in_dim, dim)
        layer = nn.TransformerEncoderLayer(
            dim, heads, ffn, dropout, activation="gelu", batch_first=True, norm_first=True
        )
        self.layers = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor, padding: Tensor | None) -> Tensor:
        """``x [B, T, C]`` -> ``[B, T, D]``; frame ``t`` attends to frames ``<= t`` that are not ``padding``."""
        h = self.proj(x) + sinusoids(x.shape[1], self.proj.out_features, x.device).to(x.dtype)
        causal = nn.Transformer.generate_square_subsequent_mask(x.shape[1], device=x.device, dtype=h.dtype)
        keys = None if padding is None else torch.zeros_like(padding, dtype=h.dtype).masked_fill(padding, -math.inf)
        return self.norm(self.layers(h, mask=causal, src_key_padding_mask=keys, is_causal=True))


class CPCModel(nn.Module, PyTorchModelHubMixin, library_name="mmssl", tags=["audio", "feature-extraction", "cpc"]):
    """Conv encoder -> (Gumbel quantizer) -> causal context network, on raw waveforms.

    Args:
        conv_width: channels of every conv layer (512 in CPC, wav2vec and vq-wav2vec).
        conv_kernel, conv_stride: per layer (CPC: (10, 8, 4, 4, 4) and (5, 4, 2, 2, 2), 160 samples per frame).
        context_network: ``gru`` (CPC: one GRU layer of 256) or ``transformer`` (causal, pre-LN).
        hidden_size: ``D`` of ``c_t``.
        num_layers, num_heads, intermediate_size: context layers; heads and FFN width of the transformer.
        dropout: in the context network.
        quantizer: ``none`` (CPC) or ``gumbel`` (vq-wav2vec: G groups of V codewords, straight-through Gumbel).
        num_codevector_groups, num_codevectors_per_group, codevector_dim: G, V and the quantised width.
    """

    def __init__(
        self,
        conv_width: int = 512,
        conv_kernel: Sequence[int] = (10, 8, 4, 4, 4),
        conv_stride: Sequence[int] = (5, 4, 2, 2, 2),
        context_network: str = "gru",
        hidden_size: int = 256,
        num_layers: int = 1,
        num_heads: int = 4,
        intermediate_size: int = 1024,
        dropout: float = 0.0,
        quantizer: str = "none",
        num_codevector_groups: int = 2,
        num_codevectors_per_group: int = 320,
        codevector_dim: int = 512,
    ) -> None:
        super().__init__()
        if context_network not in CONTEXT_NETWORKS or quantizer not in QUANTIZERS:
            raise ValueError(f"context_network must be one of {CONTEXT_NETWORKS} and quantizer one of {QUANTIZERS}")
        self.conv_kernel, self.conv_stride = list(conv_kernel), list(conv_stride)
        self.hidden_size = hidden_size
        config = Wav2Vec2Config(
            conv_dim=[conv_width] * len(self.conv_kernel),
            conv_kernel=self.conv_kernel,
            conv_stride=self.conv_stride,
            conv_bias=True,
            feat_extract_norm="layer",
            feat_extract_activation="relu",
            num_codevector_groups=num_codevector_groups,
            num_codevectors_per_group=num_codevectors_per_group,
            codevector_dim=codevector_dim,
        )
        self.feature_encoder = Wav2Vec2FeatureEncoder(config)
        self.quantizer = Wav2Vec2GumbelVectorQuantizer(config) if quantizer == "gumbel" else None
        if self.quantizer is not None:  # transformers' Wav2Vec2PreTrainedModel._init_weights of the quantizer
            nn.init.normal_(self.quantizer.weight_proj.weight, 0.0, 1.0)
            nn.init.zeros_(self.quantizer.weight_proj.bias)
            nn.init.uniform_(self.quantizer.codevectors)
        in_dim = codevector_dim if self.quantizer is not None else conv_width
        self.feature_dim = in_dim  # C of the frames the context network reads
        if context_network == "gru":
            self.context: nn.Module = nn.GRU(
                in_dim, hidden_size, num_layers, batch_first=True, dropout=dropout if num_layers > 1 else 0.0
            )
        else:
            self.context = CausalTransformer(in_dim, hidden_size, num_layers, num_heads, intermediate_size, dropout)

    def frames(self, samples: Tensor | int) -> Tensor | int:
        """Conv frames of ``samples`` input samples."""
        return conv_frames(samples, self.conv_kernel, self.conv_stride)

    def forward(self, input_values: Tensor, padding: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor | None]:
        """Encode waveforms.

        Args:
            input_values: ``[B, S]`` normalised samples, right-padded.
            padding: ``[B, T]`` bool, True at frames that cover padding (or None).

        Returns:
            ``(context [B, T, D], features [B, T, C], perplexity)``: ``c_t``; the frames the context network reads
            (``z``, or the quantised ``z_hat``); the quantizer's codebook perplexity over real frames (or None).
        """
        z = self.feature_encoder(input_values).transpose(1, 2)  # [B, T, C]
        perplexity = None
        if self.quantizer is not None:
            real = None if padding is None else ~padding
            z, perplexity = self.quantizer(z, mask_time_indices=real)
        if isinstance(self.context, nn.GRU):  # right padding follows the real frames: no effect on them
            context = self.context(z)[0]
        else:
            context = self.context(z, padding)
        return context, z, perplexity
