"""Tiny encoders, image batches, a call recorder and shared checks for the masked-modeling and pretext
objective tests (MAE, SimMIM, pretext): 1-channel images cut into 4x4 patches, so 16 features per unit."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from domains.image.encoders import ImageEncoderConfig, build_image_encoder
from domains.image.units import image_batch
from mmssl.config import ConfigError, from_dict
from mmssl.encoder import Encoder
from mmssl.objectives import objective_spec
from mmssl.objectives.base import SSLModel
from mmssl.types import Batch, EncoderOutput
from tests.fitting import first_last, fit

B, PATCH, C = 6, 4, 16  # 1-channel 4x4 patches: 16 features per unit


def vit(size: int = 16) -> Encoder:
    torch.manual_seed(0)
    cfg = ImageEncoderConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, patch_size=PATCH)
    return build_image_encoder(cfg, (size, size), channels=1)


def images(size: int = 16, seed: int = 0) -> Tensor:
    return torch.rand(B, 1, size, size, generator=torch.Generator().manual_seed(seed))


class UnitEncoder(Encoder):
    """A per-unit linear encoder: no grid needed, and no ``encode_visible``."""

    hidden_size = 8
    unit_dim = C

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(C, self.hidden_size)
        self.mask_embedding = nn.Parameter(torch.zeros(self.hidden_size))

    def encode(self, batch: Batch, mask: Tensor | None = None, all_layers: bool = False) -> EncoderOutput:
        hidden = self.proj(batch.units)
        if mask is not None:
            hidden = torch.where(mask.unsqueeze(-1), self.mask_embedding, hidden)
        return EncoderOutput(hidden=hidden, padding_mask=batch.padding_mask)

    def export(self, out_dir: Path) -> None:
        raise NotImplementedError


def record(encoder: Encoder, method: str, calls: list[tuple]) -> None:
    """Record the arguments of ``encoder.<method>`` calls (the instance attribute shadows the method)."""
    original = getattr(encoder, method)

    def wrapper(*args, **kwargs):
        calls.append((args, kwargs))
        return original(*args, **kwargs)

    setattr(encoder, method, wrapper)


def rotations(pixels: Tensor) -> tuple[Tensor, Tensor]:
    """RotNet's data: image ``i`` rotated by ``(i mod 4) * 90`` degrees, labelled ``i mod 4``."""
    labels = torch.arange(pixels.shape[0]) % 4
    return torch.stack([img.rot90(int(k), dims=(1, 2)) for img, k in zip(pixels, labels)]), labels


def rotation_batch(seed: int) -> Batch:
    """An image batch with its RotNet pretext labels, which every masked-modeling objective can also read."""
    rotated, labels = rotations(images(seed=seed))
    return image_batch(rotated, PATCH, pretext_labels=labels)


def check_learns_on_one_batch(name: str) -> None:
    """The objective with its default config lowers its loss by 10% in 30 steps on one rotation batch."""
    enc = vit()
    spec = objective_spec(name)
    model = SSLModel(enc, spec.cls(spec.config_cls(), enc))
    # one batch: the masks change every step
    losses = fit(model, rotation_batch(seed=0), 30, lr=2e-3, optimizer=torch.optim.Adam, seed=lambda step: step - 1)
    first, last = first_last(losses)
    assert last < 0.9 * first, (first, last)


def check_builds_from_its_config_defaults(name: str) -> None:
    """The recipe's ``objective: {name: ...}`` alone builds the objective, which gives a finite loss on a ViT."""
    spec = objective_spec(name)
    config = from_dict(spec.config_cls, {"name": name}, "objective")
    assert config == spec.config_cls()
    enc = vit()
    assert enc.unit_dim == C  # 1 channel x 4 x 4: what MAE's decoder and SimMIM's head predict
    objective = spec.cls(config, enc)
    torch.manual_seed(0)
    out = objective(enc, rotation_batch(seed=0))
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)


def check_invalid_config_value_names_the_key(name: str, key: str, value: float) -> None:
    with pytest.raises(ConfigError, match=f"objective.{key}"):
        from_dict(objective_spec(name).config_cls, {"name": name, key: value}, "objective")
