"""Audio encoders behind mmssl's encoder protocol, built from transformers' own classes.

* ``arch=wav2vec2``: ``Wav2Vec2ForPreTraining`` (conv feature encoder on raw waveform
  samples, transformer context network, Gumbel product quantizer and the two projections).
  ``hidden`` is on the conv-frame grid (20 ms per frame with the paper's strides), so a
  mask passed to :meth:`Wav2Vec2Encoder.encode` is on that grid (see
  :meth:`output_padding_mask`). The export loads with ``Wav2Vec2Model``,
  ``Wav2Vec2ForPreTraining`` and ``AutoModelForAudioClassification``.
* ``arch=data2vec_audio``: ``Data2VecAudioModel``, data2vec's own layout of the same
  waveform encoder (Baevski et al. 2022): the layer-normed conv feature encoder, a stack of
  ``num_conv_pos_layers`` positional convolutions of kernel ``conv_pos_kernel_size`` (each
  with a parameter-free layer norm) instead of wav2vec 2.0's single weight-normed one, a
  post-LN transformer, no quantizer. Same conv-frame grid and masking as ``wav2vec2``; the
  export loads with ``Data2VecAudioModel`` and ``AutoModelForAudioClassification``.
* ``arch=conformer``: ``Wav2Vec2BertModel`` (w2v-BERT 2.0's conformer) on stacked fbank
  units ``[B, T, n_mels * stride]``; ``causal=true`` restricts self-attention to the past
  (its depthwise convolutions are causal already), as APC needs. The export loads with
  ``AutoModel`` and ``SeamlessM4TFeatureExtractor``.
* ``arch=cpc``: :class:`domains.audio.cpc_model.CPCModel` (CPC, van den Oord et al. 2018; vq-wav2vec with
  ``cpc_quantizer=gumbel``): a strided conv encoder on raw samples (10 ms frames with the paper's strides), a
  causal GRU or transformer context network whose ``c_t`` is ``hidden``. The export is a Hub-mixin folder that
  ``CPCModel.from_pretrained`` loads (torch, transformers and huggingface_hub only).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn
from transformers import (
    Data2VecAudioConfig,
    Data2VecAudioModel,
    PreTrainedModel,
    Wav2Vec2BertConfig,
    Wav2Vec2BertModel,
    Wav2Vec2Config,
    Wav2Vec2ForPreTraining,
)
from transformers.masking_utils import causal_mask_function, create_bidirectional_mask

from domains.audio.cpc_encoder import CPCEncoder
from domains.audio.cpc_model import CPCModel, conv_frames
from mmssl.encoder import Encoder
from mmssl.types import Batch, EncoderOutput

CAUSAL_KEY = "mmssl_causal"  # extra key of an exported conformer's config.json


@dataclass(frozen=True)
class AudioEncoderConfig:
    """A recipe's ``encoder:`` section for audio.

    Defaults are a small model for 2 CPU cores. wav2vec 2.0 BASE is hidden_size=768,
    num_layers=12, num_heads=12, intermediate_size=3072, conv_dim 512 x 7, kernels
    (10,3,3,3,3,2,2), strides (5,2,2,2,2,2,2) (320 samples = 20 ms per frame at 16 kHz),
    G=2 codebooks of V=320 entries, codevector_dim 256, proj_codevector_dim 256.
    data2vec audio BASE has the same sizes, 5 positional convolutions of kernel 19 (16 groups)
    and a post-LN transformer (``do_stable_layer_norm=false``).
    """

    arch: Literal["wav2vec2", "data2vec_audio", "conformer", "cpc"] = "wav2vec2"
    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 1024
    dropout: float = 0.0
    attention_dropout: float = 0.0
    # wav2vec2: conv feature encoder
    conv_dim: tuple[int, ...] = (128, 128, 128, 128, 128, 128, 128)
    conv_kernel: tuple[int, ...] = (10, 3, 3, 3, 3, 2, 2)
    conv_stride: tuple[int, ...] = (5, 2, 2, 2, 2, 2, 2)
    feat_extract_norm: Literal["group", "layer"] = "layer"  # layer: exact under padding (wav2vec 2.0 LARGE)
    do_stable_layer_norm: bool = True  # pre-LN transformer (LARGE); BASE: false
    num_conv_pos_embeddings: int = 128  # wav2vec2: kernel of its one positional convolution
    num_conv_pos_embedding_groups: int = 16
    # data2vec_audio: positional convolution stack (data2vec: 5 layers of kernel 19)
    num_conv_pos_layers: int = 5
    conv_pos_kernel_size: int = 19
    # wav2vec2: quantizer
    num_codevector_groups: int = 2
    num_codevectors_per_group: int = 320
    codevector_dim: int = 256
    proj_codevector_dim: int = 256
    # conformer
    input_dim: int = 160  # fbank units: num_mel_bins * frame_stride
    conv_depthwise_kernel_size: int = 31
    causal: bool = False  # conformer only: attend to the past only (APC)
    # cpc: conv frame encoder of one width (CPC / wav2vec / vq-wav2vec: 512), 160 samples = 10 ms per frame
    cpc_conv_width: int = 512
    cpc_conv_kernel: tuple[int, ...] = (10, 8, 4, 4, 4)  # CPC (van den Oord et al. 2018, sec. 3.1)
    cpc_conv_stride: tuple[int, ...] = (5, 4, 2, 2, 2)  # vq-wav2vec: 8 layers, (10,8,4,4,4,1,1,1) / (5,4,2,2,2,1,1,1)
    context_network: Literal["gru", "transformer"] = "gru"  # cpc: c_t from a GRU (CPC: 1 layer of 256) or causal
    cpc_quantizer: Literal["none", "gumbel"] = "none"  # cpc: gumbel quantises z before the context (vq-wav2vec)

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"encoder.hidden_size={self.hidden_size} is not divisible by encoder.num_heads={self.num_heads}"
            )
        if not len(self.conv_dim) == len(self.conv_kernel) == len(self.conv_stride):
            raise ValueError("encoder.conv_dim, conv_kernel and conv_stride must have the same length")
        if self.codevector_dim % self.num_codevector_groups:
            raise ValueError("encoder.codevector_dim must be divisible by encoder.num_codevector_groups")
        if len(self.cpc_conv_kernel) != len(self.cpc_conv_stride) or not self.cpc_conv_kernel:
            raise ValueError("encoder.cpc_conv_kernel and encoder.cpc_conv_stride must be non-empty and of one length")
        if self.causal and self.arch != "conformer":
            raise ValueError("encoder.causal=true needs encoder.arch=conformer")
        if self.arch == "data2vec_audio" and (self.do_stable_layer_norm or self.feat_extract_norm != "layer"):
            raise ValueError(
                "encoder.arch=data2vec_audio is transformers' Data2VecAudioModel: layer-normed conv "
                "blocks and a post-LN transformer; set encoder.feat_extract_norm=layer and "
                "encoder.do_stable_layer_norm=false"
            )

    def missing_capability(self, need: str) -> str | None:
        """Why this encoder cannot give ``need`` (a key of :data:`mmssl.objectives.base.ENCODER_NEEDS`), or None."""
        if need == "causal" and self.arch in ("wav2vec2", "data2vec_audio"):
            return (
                f"encoder.arch={self.arch} is bidirectional; use encoder.arch=cpc (or conformer, encoder.causal=true)"
            )
        if need == "causal" and self.arch == "conformer" and not self.causal:
            return "set encoder.causal=true (or use encoder.arch=cpc)"
        if need == "quantizer_head" and self.arch != "wav2vec2":
            return f"encoder.arch={self.arch} has no wav2vec 2.0 quantizer and projections; use encoder.arch=wav2vec2"
        return None

    def units_per_crop(self, data: Any) -> int:
        """Units on this encoder's output grid of a clip of ``data.max_seconds`` (the longest a crop gives): conv
        frames of the waveform, or stacked fbank frames (25 ms windows every 10 ms, ``data.frame_stride`` a unit)."""
        samples = int(data.max_seconds * data.sampling_rate)
        if self.arch == "cpc":
            return int(conv_frames(samples, self.cpc_conv_kernel, self.cpc_conv_stride))
        if self.arch != "conformer":
            return int(conv_frames(samples, self.conv_kernel, self.conv_stride))
        window, hop = int(0.025 * data.sampling_rate), int(0.010 * data.sampling_rate)
        return max(0, 1 + (samples - window) // hop) // data.frame_stride


def _conv_transformer_kwargs(cfg: AudioEncoderConfig) -> dict[str, Any]:
    """The settings wav2vec 2.0's and data2vec-audio's configs share: the transformer, its dropouts and
    the conv feature encoder; SpecAugment during fine-tuning at transformers' defaults (``mask_time_prob``
    > 0 also keeps ``masked_spec_embed``, the [MASK] vector pretraining uses)."""
    return dict(
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        intermediate_size=cfg.intermediate_size,
        hidden_dropout=cfg.dropout,
        activation_dropout=cfg.dropout,
        attention_dropout=cfg.attention_dropout,
        feat_proj_dropout=cfg.dropout,
        final_dropout=cfg.dropout,
        layerdrop=0.0,
        conv_dim=list(cfg.conv_dim),
        conv_kernel=list(cfg.conv_kernel),
        conv_stride=list(cfg.conv_stride),
        num_conv_pos_embedding_groups=cfg.num_conv_pos_embedding_groups,
        mask_time_prob=0.05,
        mask_time_length=10,
    )


def wav2vec2_config(cfg: AudioEncoderConfig) -> Wav2Vec2Config:
    return Wav2Vec2Config(
        **_conv_transformer_kwargs(cfg),
        feat_quantizer_dropout=cfg.dropout,
        feat_extract_norm=cfg.feat_extract_norm,
        do_stable_layer_norm=cfg.do_stable_layer_norm,
        num_conv_pos_embeddings=cfg.num_conv_pos_embeddings,
        num_codevector_groups=cfg.num_codevector_groups,
        num_codevectors_per_group=cfg.num_codevectors_per_group,
        codevector_dim=cfg.codevector_dim,
        proj_codevector_dim=cfg.proj_codevector_dim,
    )


def data2vec_audio_config(cfg: AudioEncoderConfig) -> Data2VecAudioConfig:
    return Data2VecAudioConfig(
        **_conv_transformer_kwargs(cfg),
        num_conv_pos_embeddings=cfg.num_conv_pos_layers,
        conv_pos_kernel_size=cfg.conv_pos_kernel_size,
    )


class Wav2Vec2Encoder(Encoder):
    """``Wav2Vec2ForPreTraining`` or ``Data2VecAudioModel`` on waveform units ``[B, S]``; ``hidden`` is
    ``[B, T_frames, D]``.

    With ``Wav2Vec2ForPreTraining`` the quantizer and projections stay inside the transformers
    model (so the export holds them and ``Wav2Vec2ForPreTraining.from_pretrained`` restores
    them); :meth:`prediction_head` hands that model to the wav2vec 2.0 objective.
    ``Data2VecAudioModel`` has no pretraining head: it is the backbone itself.
    """

    pipeline_tag = "feature-extraction"

    def __init__(self, model: Wav2Vec2ForPreTraining | Data2VecAudioModel) -> None:
        super().__init__()
        self.model = model
        self.hidden_size = model.config.hidden_size
        self.feature_dim = model.config.conv_dim[-1]  # encode_with_features: the conv encoder's frames

    @property
    def backbone(self) -> PreTrainedModel:
        """The conv feature encoder + transformer (``Wav2Vec2Model`` or ``Data2VecAudioModel``)."""
        return self.model.wav2vec2 if isinstance(self.model, Wav2Vec2ForPreTraining) else self.model

    def output_padding_mask(self, batch: Batch) -> Tensor:
        """``[B, T_frames]`` bool, True at conv frames that only cover padding."""
        frames = int(self.model._get_feat_extract_output_lengths(batch.units.shape[1]))
        if not batch.padding_mask.any():
            return torch.zeros(batch.batch_size, frames, dtype=torch.bool, device=batch.units.device)
        keep = self.model._get_feature_vector_attention_mask(frames, (~batch.padding_mask).long())
        return ~keep

    def encode_with_features(
        self, batch: Batch, mask: Tensor | None = None, all_layers: bool = False
    ) -> tuple[EncoderOutput, Tensor]:
        """Encode, and also return the layer-normed conv features ``[B, T, C]`` (the quantizer's input)."""
        padding = self.output_padding_mask(batch)
        if mask is None:  # an all-False mask also stops transformers' own SpecAugment in training mode
            mask = torch.zeros_like(padding)
        attention = (~batch.padding_mask).long() if batch.padding_mask.any() else None
        out = self.backbone(
            batch.units, attention_mask=attention, mask_time_indices=mask, output_hidden_states=all_layers
        )
        layers = tuple(out.hidden_states) if all_layers else None
        return EncoderOutput(hidden=out.last_hidden_state, padding_mask=padding, layers=layers), out.extract_features

    def encode(self, batch: Batch, mask: Tensor | None = None, all_layers: bool = False) -> EncoderOutput:
        """Encode waveforms; ``mask`` (``[B, T_frames]``) replaces frames by the learned mask embedding."""
        return self.encode_with_features(batch, mask, all_layers)[0]

    def prediction_head(self) -> nn.Module | None:
        return self.model if isinstance(self.model, Wav2Vec2ForPreTraining) else None

    def quantizer_head(self) -> nn.Module:
        """``Wav2Vec2ForPreTraining`` itself: its quantizer and projections export with the backbone.

        Raises:
            mmssl.encoder.CapabilityError: For ``Data2VecAudioModel``, which has no quantizer.
        """
        if isinstance(self.model, Wav2Vec2ForPreTraining):
            return self.model
        return super().quantizer_head()

    def export(self, out_dir: Path) -> None:
        self.model.save_pretrained(str(out_dir))


def conformer_config(cfg: AudioEncoderConfig) -> Wav2Vec2BertConfig:
    return Wav2Vec2BertConfig(
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        intermediate_size=cfg.intermediate_size,
        feature_projection_input_dim=cfg.input_dim,
        hidden_dropout=cfg.dropout,
        activation_dropout=cfg.dropout,
        attention_dropout=cfg.attention_dropout,
        feat_proj_dropout=cfg.dropout,
        final_dropout=cfg.dropout,
        conformer_conv_dropout=cfg.dropout,
        layerdrop=0.0,
        conv_depthwise_kernel_size=cfg.conv_depthwise_kernel_size,
        mask_time_prob=0.05,
        add_adapter=False,
        **{CAUSAL_KEY: cfg.causal},
    )


class ConformerEncoder(Encoder):
    """``Wav2Vec2BertModel`` on fbank units ``[B, T, C]``; ``hidden`` is on the same ``[B, T]`` grid.

    Masked units are replaced by the model's learned ``masked_spec_embed`` after the input
    projection (as in w2v-BERT). With ``causal`` every unit attends to itself and the past only.
    """

    pipeline_tag = "feature-extraction"

    def __init__(self, model: Wav2Vec2BertModel, causal: bool | None = None) -> None:
        super().__init__()
        self.model = model
        self.causal = bool(getattr(model.config, CAUSAL_KEY, False) if causal is None else causal)
        self.hidden_size = model.config.hidden_size
        self.unit_dim = model.config.feature_projection_input_dim
        self.feature_dim = self.unit_dim  # encode_with_features: the layer-normed input units

    def encode_with_features(
        self, batch: Batch, mask: Tensor | None = None, all_layers: bool = False
    ) -> tuple[EncoderOutput, Tensor]:
        """Encode, and also return the layer-normed input units ``[B, T, C]`` (on the unit grid, the
        protocol's default :meth:`output_padding_mask`)."""
        if batch.units.ndim != 3 or batch.units.shape[-1] != self.unit_dim:
            raise ValueError(
                f"the conformer encoder reads fbank units [B, T, {self.unit_dim}], got "
                f"{tuple(batch.units.shape)} (data.stream=fbank; encoder.input_dim = n_mels * stride)"
            )
        hidden, features = self.model.feature_projection(batch.units)
        if mask is not None:
            hidden = torch.where(mask.unsqueeze(-1), self.model.masked_spec_embed.to(hidden.dtype), hidden)
        hidden, layers = self._layers(hidden, batch.padding_mask, all_layers)
        return EncoderOutput(hidden=hidden, padding_mask=batch.padding_mask, layers=layers), features

    def _layers(self, hidden: Tensor, padding: Tensor, all_layers: bool) -> tuple[Tensor, tuple[Tensor, ...] | None]:
        """``Wav2Vec2BertEncoder.forward`` with an optional causal attention mask."""
        encoder = self.model.encoder
        keep = ~padding if padding.any() else None
        if keep is not None:
            hidden = hidden.masked_fill(padding.unsqueeze(-1), 0.0)
        attention = create_bidirectional_mask(
            config=self.model.config,
            inputs_embeds=hidden,
            attention_mask=keep,
            and_mask_function=causal_mask_function if self.causal else None,
        )
        hidden = encoder.dropout(hidden)
        positions = encoder.embed_positions(hidden) if encoder.embed_positions is not None else None
        layers = [hidden]
        for layer in encoder.layers:
            hidden = layer(
                hidden, attention_mask=attention, relative_position_embeddings=positions, conv_attention_mask=keep
            )
            layers.append(hidden)
        return hidden, tuple(layers) if all_layers else None

    def encode(self, batch: Batch, mask: Tensor | None = None, all_layers: bool = False) -> EncoderOutput:
        return self.encode_with_features(batch, mask, all_layers)[0]

    def export(self, out_dir: Path) -> None:
        self.model.save_pretrained(str(out_dir))


def cpc_model(cfg: AudioEncoderConfig) -> CPCModel:
    return CPCModel(
        conv_width=cfg.cpc_conv_width,
        conv_kernel=list(cfg.cpc_conv_kernel),
        conv_stride=list(cfg.cpc_conv_stride),
        context_network=cfg.context_network,
        hidden_size=cfg.hidden_size,
        num_layers=cfg.num_layers,
        num_heads=cfg.num_heads,
        intermediate_size=cfg.intermediate_size,
        dropout=cfg.dropout,
        quantizer=cfg.cpc_quantizer,
        num_codevector_groups=cfg.num_codevector_groups,
        num_codevectors_per_group=cfg.num_codevectors_per_group,
        codevector_dim=cfg.codevector_dim,
    )


def build_audio_encoder(cfg: AudioEncoderConfig) -> Encoder:
    """A freshly initialised encoder sized by the recipe."""
    if cfg.arch == "cpc":
        return CPCEncoder(cpc_model(cfg))
    if cfg.arch == "wav2vec2":
        return Wav2Vec2Encoder(Wav2Vec2ForPreTraining(wav2vec2_config(cfg)))
    if cfg.arch == "data2vec_audio":
        return Wav2Vec2Encoder(Data2VecAudioModel(data2vec_audio_config(cfg)))
    return ConformerEncoder(Wav2Vec2BertModel(conformer_config(cfg)), causal=cfg.causal)


def load_audio_encoder(export_dir: Path, random_init: bool = False) -> Encoder:
    """The exported encoder (``random_init``: same config, fresh weights)."""
    from transformers import AutoConfig

    cpc_config = cpc_export_config(export_dir)
    if cpc_config is not None:
        return CPCEncoder(CPCModel(**cpc_config) if random_init else CPCModel.from_pretrained(str(export_dir)))
    config = AutoConfig.from_pretrained(str(export_dir))
    if config.model_type == "wav2vec2":
        model = (
            Wav2Vec2ForPreTraining(config) if random_init else Wav2Vec2ForPreTraining.from_pretrained(str(export_dir))
        )
        return Wav2Vec2Encoder(model)
    if config.model_type == "data2vec-audio":
        model = Data2VecAudioModel(config) if random_init else Data2VecAudioModel.from_pretrained(str(export_dir))
        return Wav2Vec2Encoder(model)
    if config.model_type == "wav2vec2-bert":
        model = Wav2Vec2BertModel(config) if random_init else Wav2Vec2BertModel.from_pretrained(str(export_dir))
        return ConformerEncoder(model)
    raise ValueError(
        f"{export_dir}: model_type {config.model_type!r} is not an mmssl audio encoder "
        "(wav2vec2, data2vec-audio or wav2vec2-bert)"
    )


def cpc_export_config(export_dir: Path) -> dict[str, Any] | None:
    """The init settings of a :class:`CPCModel` export (its Hub-mixin ``config.json``), or None for another folder."""
    import json

    path = Path(export_dir) / "config.json"
    config = json.loads(path.read_text()) if path.is_file() else {}
    return config if "context_network" in config and "model_type" not in config else None
