"""Image encoders behind mmssl's encoder protocol: transformers' ViT and a small-stem ResNet.

Both read patch units (:mod:`domains.image.units`). The ViT applies its own patch
embedding as a linear map of each unit (the same weights as its ``Conv2d``), so it can
replace masked units by its mask token (SimMIM, data2vec) or encode only the visible ones
(MAE) with transformers' modules doing the work; it exports as a plain ``ViTModel`` that
``AutoModel`` / ``AutoModelForImageClassification`` load from ``pixel_values``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import ViTConfig, ViTModel

from domains.image.resnet import SmallResNet
from domains.image.units import grid_of, unpatchify
from mmssl.encoder import Encoder
from mmssl.types import Batch, EncoderOutput


@dataclass(frozen=True)
class ImageEncoderConfig:
    """A recipe's ``encoder:`` section for images.

    ``arch=vit``: transformers' ViT (ViT-Tiny is hidden 192, 12 layers, 3 heads, FFN 768;
    ViT-S/16 hidden 384, 6 heads, FFN 1536). ``arch=resnet``: a ResNet with a small-image stem
    (3x3 stride-1 convolution, no max-pool, as for CIFAR in SimCLR), ``resnet_depth`` 18 or 34.
    ``arch=imagegpt``: transformers' ImageGPT (Chen et al. 2020) on palette tokens, one per unit, each unit's pixels
    averaged (:mod:`domains.image.imagegpt`; iGPT-S is hidden 512, 24 layers, 8 heads, FFN 2048, 512 colours).
    """

    arch: Literal["vit", "resnet", "imagegpt"] = "vit"
    patch_size: int = 4  # pixels per patch side (units); 4 or 7 for 28x28 images
    hidden_size: int = 192
    num_layers: int = 6
    num_heads: int = 3
    intermediate_size: int = 768
    dropout: float = 0.0
    attention_dropout: float = 0.0
    resnet_depth: Literal[18, 34] = 18
    resnet_width: int = 64  # channels of the first stage (doubling per stage); 64 is ResNet-18/34 as published
    palette_size: int = 16  # imagegpt: k-means colours of the training pixels (iGPT: 512 RGB clusters; 16 for grey)
    probe_layer: int | None = None  # imagegpt: layer whose pooled features are probed, 1..num_layers; None: the middle
    max_positions: int | None = None  # imagegpt: n_positions (iGPT: 32*32=1024); None: the number of units

    def missing_capability(self, need: str) -> str | None:
        """Why this encoder cannot give ``need`` (a key of :data:`mmssl.objectives.base.ENCODER_NEEDS`), or None."""
        if self.arch == "resnet" and need in ("encode_visible", "mask_token"):
            return "encoder.arch=resnet pools whole images (no patch tokens to drop or mask); use encoder.arch=vit"
        if self.arch == "imagegpt" and need in ("encode_visible", "mask_token"):
            return "encoder.arch=imagegpt reads every unit as a palette token, with no mask token; use encoder.arch=vit"
        if need == "feature_map" and self.arch == "imagegpt":
            return "encoder.arch=imagegpt gives a sequence of palette tokens, no 2-D feature map; use resnet or vit"
        if need == "start_token" and self.arch != "imagegpt":
            return f"encoder.arch={self.arch} reads no start token; set encoder.arch=imagegpt"
        return None

    def __post_init__(self) -> None:
        if self.patch_size < 1:
            raise ValueError("encoder.patch_size must be >= 1")
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"encoder.hidden_size={self.hidden_size} is not divisible by encoder.num_heads={self.num_heads}"
            )
        self._check_imagegpt()

    def _check_imagegpt(self) -> None:
        """The palette has at least two colours, the probed layer exists, the context holds a token."""
        if self.palette_size < 2:
            raise ValueError(f"encoder.palette_size must be >= 2, got {self.palette_size}")
        if self.probe_layer is not None and not 1 <= self.probe_layer <= self.num_layers:
            raise ValueError(
                f"encoder.probe_layer={self.probe_layer} must be a layer in [1, encoder.num_layers={self.num_layers}]"
            )
        if self.max_positions is not None and self.max_positions < 1:
            raise ValueError(f"encoder.max_positions must be >= 1, got {self.max_positions}")


class ViTEncoder(Encoder):
    """``transformers.ViTModel`` (with a mask token, without the pooler) on patch units.

    ``hidden`` holds the patch tokens after the final layer norm (the ``[B, T]`` grid of the
    units); ``summary`` is the ``[CLS]`` token, what ``ViTForImageClassification`` classifies.
    """

    def __init__(self, model: ViTModel) -> None:
        super().__init__()
        if model.embeddings.mask_token is None:
            raise ValueError("ViTEncoder needs a ViTModel built with use_mask_token=True")
        self.model = model
        self.hidden_size = model.config.hidden_size
        self.patch_size = model.config.patch_size
        self.unit_dim = model.config.num_channels * self.patch_size**2

    pipeline_tag = "image-feature-extraction"

    def embed(self, batch: Batch, mask: Tensor | None = None) -> Tensor:
        """Patch embeddings plus position embeddings (interpolated to the batch's grid), ``[B, T, D]``, without [CLS]."""
        emb = self.model.embeddings
        conv = emb.patch_embeddings.projection
        tokens = F.linear(batch.units, conv.weight.flatten(1), conv.bias)
        if mask is not None:
            tokens = torch.where(mask.unsqueeze(-1), emb.mask_token.to(tokens.dtype), tokens)
        rows, cols = grid_of(batch)
        size = (rows * self.patch_size, cols * self.patch_size)
        # transformers' interpolation reads only the shape of its first argument ([CLS] + patches)
        return tokens + emb.interpolate_pos_encoding(F.pad(tokens[:1], (0, 0, 1, 0)), *size)[:, 1:]

    def _cls(self, batch_size: int) -> Tensor:
        emb = self.model.embeddings
        return (emb.cls_token + emb.position_embeddings[:, :1]).expand(batch_size, -1, -1)

    def _transformer(self, tokens: Tensor, all_layers: bool) -> tuple[Tensor, tuple[Tensor, ...] | None]:
        """Run [CLS] + ``tokens`` through the layers; returns the normed sequence and, optionally, every layer."""
        x = self.model.embeddings.dropout(torch.cat([self._cls(tokens.shape[0]), tokens], dim=1))
        layers = [x] if all_layers else None
        for layer in self.model.layers:
            x = layer(x)
            if layers is not None:
                layers.append(x)
        return self.model.layernorm(x), tuple(layers) if layers is not None else None

    def encode(self, batch: Batch, mask: Tensor | None = None, all_layers: bool = False) -> EncoderOutput:
        seq, layers = self._transformer(self.embed(batch, mask), all_layers)
        return EncoderOutput(
            hidden=seq[:, 1:],
            padding_mask=batch.padding_mask,
            summary=seq[:, 0],
            layers=tuple(h[:, 1:] for h in layers) if layers is not None else None,
            grid=grid_of(batch),
        )

    def encode_visible(self, batch: Batch, visible: Tensor) -> EncoderOutput:
        """MAE: encode only the units at ``visible`` (``[B, K]`` indices, the same ``K`` in every row).

        Position embeddings are added before the selection, so each kept unit keeps its place.
        ``hidden`` is ``[B, K]`` in the order of ``visible``.
        """
        tokens = self.embed(batch)
        kept = tokens.gather(1, visible.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))
        seq, _ = self._transformer(kept, all_layers=False)
        padding = torch.zeros(visible.shape, dtype=torch.bool, device=visible.device)
        return EncoderOutput(hidden=seq[:, 1:], padding_mask=padding, summary=seq[:, 0])

    saves_export_extras = True  # an objective's head that ships with the export (the VAE's posterior mean)

    def export(self, out_dir: Path) -> None:
        self.model.save_pretrained(str(out_dir))
        self.save_export_extras(out_dir)


class ResNetEncoder(Encoder):
    """:class:`domains.image.resnet.SmallResNet` on patch units: ``hidden`` is the final feature map,
    one unit per spatial cell; ``summary`` its global average (the ResNet representation)."""

    pipeline_tag = "image-feature-extraction"

    def __init__(self, model: SmallResNet, patch_size: int) -> None:
        super().__init__()
        # Default (NCHW) memory format: with channels-last weights, torch 2.11's oneDNN backward of these
        # convolutions hangs at random on CPU (grey and RGB inputs alike; 4 of 6 five-step runs of an
        # 18-layer SmallResNet hung on the 2-core CI machine), and it was no faster there.
        self.model = model
        self.patch_size = patch_size
        self.hidden_size = model.out_dim
        self.unit_dim = model.in_channels * patch_size**2

    def encode(self, batch: Batch, mask: Tensor | None = None, all_layers: bool = False) -> EncoderOutput:
        if mask is not None or all_layers:
            raise ValueError("the resnet encoder cannot encode masked units or return its layers; use encoder.arch=vit")
        images = unpatchify(batch.units, grid_of(batch), self.patch_size)
        fmap = self.model(images)  # [B, D, h, w]
        hidden = fmap.flatten(2).transpose(1, 2)
        padding = torch.zeros(hidden.shape[:2], dtype=torch.bool, device=hidden.device)
        return EncoderOutput(hidden=hidden, padding_mask=padding, summary=hidden.mean(1), grid=tuple(fmap.shape[2:]))

    saves_export_extras = True  # an objective's head that ships with the export (the VAE's posterior mean)

    def output_padding_mask(self, batch: Batch) -> Tensor:
        """``[B, h * w]`` all False: the final feature map's cells (each stride-2 stage halves a side, rounding up)."""
        rows, cols = (side * self.patch_size for side in grid_of(batch))
        for _ in range(self.model.downsamplings):
            rows, cols = -(-rows // 2), -(-cols // 2)
        return torch.zeros(batch.batch_size, rows * cols, dtype=torch.bool, device=batch.units.device)

    def export(self, out_dir: Path) -> None:
        self.model.save_pretrained(str(out_dir))
        self.save_export_extras(out_dir)


def build_image_encoder(cfg: ImageEncoderConfig, image_size: tuple[int, int], channels: int) -> Encoder:
    """A freshly initialised encoder for ``channels x H x W`` images."""
    if cfg.arch == "imagegpt":  # its vocabulary is the data's palette, which the domain's processor holds
        raise ValueError(
            "encoder.arch=imagegpt is built from its palette: domains.image.imagegpt.build_imagegpt_encoder"
        )
    if cfg.arch == "resnet":
        return ResNetEncoder(
            SmallResNet(in_channels=channels, depth=cfg.resnet_depth, width=cfg.resnet_width), cfg.patch_size
        )
    h, w = image_size
    if h != w:
        raise ValueError(f"the vit encoder needs square images, got {h}x{w}")
    config = ViTConfig(
        image_size=h,
        patch_size=cfg.patch_size,
        num_channels=channels,
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        intermediate_size=cfg.intermediate_size,
        hidden_dropout_prob=cfg.dropout,
        attention_probs_dropout_prob=cfg.attention_dropout,
    )
    return ViTEncoder(ViTModel(config, add_pooling_layer=False, use_mask_token=True))
