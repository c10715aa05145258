"""MAE, SimMIM and pretext classification: masks, wiring against the functional losses, errors, learning."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from domains.image.encoders import ImageEncoderConfig, build_image_encoder
from domains.image.units import image_batch
from mmssl.config import ConfigError, from_dict
from mmssl.encoder import Encoder
from mmssl.masking import block_mask_2d, random_mask
from mmssl.objectives.base import SSLModel
from mmssl.objectives.functional import masked_regression_loss
from mmssl.objectives.masked_modeling import MAE, MAEConfig, Pretext, PretextConfig, SimMIM, SimMIMConfig, split_units
from mmssl.registry import OBJECTIVES
from mmssl.types import Batch, EncoderOutput
from tests.fitting import fit, first_last

B, PATCH, C = 6, 4, 16  # 1-channel 4x4 patches: 16 features per unit


def _vit(size: int = 16) -> Encoder:
    torch.manual_seed(0)
    cfg = ImageEncoderConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, patch_size=PATCH)
    return build_image_encoder(cfg, (size, size), channels=1)


def _images(size: int = 16, seed: int = 0) -> Tensor:
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


def _record(encoder: Encoder, method: str, calls: list[tuple]) -> None:
    """Record the arguments of ``encoder.<method>`` calls (the instance attribute shadows the method)."""
    original = getattr(encoder, method)

    def wrapper(*args, **kwargs):
        calls.append((args, kwargs))
        return original(*args, **kwargs)

    setattr(encoder, method, wrapper)


# ---------------------------------------------------------------- MAE


@pytest.mark.parametrize(("size", "visible_count"), [(16, 4), (28, 12)])  # T = 16 and 49: round(0.25 T)
def test_mae_encodes_the_visible_units_and_decodes_only_the_masked_ones(size: int, visible_count: int) -> None:
    enc = _vit(size)
    objective = MAE(MAEConfig(), enc)
    calls: list[tuple] = []
    _record(enc, "encode_visible", calls)
    decoded = []
    objective.decoder.head.register_forward_hook(lambda m, i, o: decoded.append(tuple(o.shape)))
    objective(enc, image_batch(_images(size), PATCH))
    ((_, visible), _), = calls
    units = (size // PATCH) ** 2
    assert visible.shape == (B, visible_count) == (B, round((1 - 0.75) * units))
    assert decoded == [(B, units - visible_count, C)]  # the head runs on the masked units alone
    assert all(len(set(row.tolist())) == visible_count for row in visible)


def test_mae_loss_is_the_normalised_masked_regression_on_masked_units() -> None:
    enc = _vit()
    objective = MAE(MAEConfig(), enc)
    batch = image_batch(_images(), PATCH)
    torch.manual_seed(3)
    out = objective(enc, batch)

    torch.manual_seed(3)  # the same mask draw
    mask = random_mask(batch.maskable, ratio=0.75)
    visible, masked = split_units(mask)
    assert torch.equal(torch.cat([visible, masked], 1).sort(1).values, torch.arange(16).expand(B, -1))
    assert mask.gather(1, masked).all() and not mask.gather(1, visible).any()
    pred = objective.decoder(enc.encode_visible(batch, visible).hidden, visible, masked)
    full = torch.zeros_like(batch.units).scatter(1, masked.unsqueeze(-1).expand(-1, -1, C), pred)
    torch.testing.assert_close(out.loss, masked_regression_loss(full, batch.units, mask, norm_target=True))
    target = batch.units[mask]
    target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
    torch.testing.assert_close(out.loss, (full[mask] - target).pow(2).mean())
    assert float(out.logs["masked_fraction"]) == pytest.approx(12 / 16)


def test_mae_decoder_places_visible_units_by_position() -> None:
    # swapping which units are visible changes the masked predictions: the decoder knows where each unit sits
    torch.manual_seed(0)
    decoder = MAE(MAEConfig(), UnitEncoder()).decoder
    hidden = torch.randn(1, 2, UnitEncoder.hidden_size)
    masked = torch.tensor([[1, 2]])
    a = decoder(hidden, torch.tensor([[0, 3]]), masked)
    b = decoder(hidden, torch.tensor([[3, 0]]), masked)
    assert not torch.allclose(a, b)


def test_mae_errors_are_clear() -> None:
    enc = _vit()
    with pytest.raises(NotImplementedError, match="cannot encode a subset of units"):
        MAE(MAEConfig(), UnitEncoder())(UnitEncoder(), image_batch(_images(), PATCH))
    with pytest.raises(ValueError, match="objective.max_units=8 is below the batch's 16 units"):
        MAE(MAEConfig(max_units=8), enc)(enc, image_batch(_images(), PATCH))
    batch = image_batch(_images(), PATCH)
    padded = batch.replace(padding_mask=batch.padding_mask.clone().index_fill_(1, torch.tensor([15]), True))
    with pytest.raises(ValueError, match="padded"):
        MAE(MAEConfig(), enc)(enc, padded)
    enc.unit_dim = 12  # an encoder that declares another unit size than the batch has
    with pytest.raises(ValueError, match="unit_dim is 12 but the batch's units have 16 features"):
        MAE(MAEConfig(), enc)(enc, batch)
    enc.unit_dim = None  # an encoder that does not declare it
    with pytest.raises(ValueError, match="mae reconstructs .* but ViTEncoder has no unit_dim"):
        MAE(MAEConfig(), enc)


# ---------------------------------------------------------------- SimMIM


def test_simmim_masks_blocks_on_the_grid_and_regresses_them_with_l1() -> None:
    enc = _vit(28)  # a 7 x 7 grid
    objective = SimMIM(SimMIMConfig(), enc)
    batch = image_batch(_images(28), PATCH)
    calls: list[tuple] = []
    _record(enc, "encode_at", calls)
    torch.manual_seed(5)
    out = objective(enc, batch)

    torch.manual_seed(5)
    mask = block_mask_2d(B, 7, 7, ratio=0.6, min_block=4)
    ((_, positions), kwargs), = calls
    assert torch.equal(positions, mask) and torch.equal(kwargs["mask"], mask)
    assert mask.sum(1).float().mean() > 0.5 * 49
    pred = objective.head(enc.encode(batch, mask=mask).hidden)  # [B, T, C]
    torch.testing.assert_close(out.loss, masked_regression_loss(pred, batch.units, mask, loss="l1"))
    torch.testing.assert_close(out.loss, (pred[mask] - batch.units[mask]).abs().mean())


def test_simmim_uses_random_masks_without_a_grid() -> None:
    enc = UnitEncoder()
    objective = SimMIM(SimMIMConfig(), enc)
    batch = Batch(units=torch.randn(B, 10, C), padding_mask=torch.zeros(B, 10, dtype=torch.bool))
    calls: list[tuple] = []
    _record(enc, "encode_at", calls)
    torch.manual_seed(1)
    objective(enc, batch)
    torch.manual_seed(1)
    ((_, positions), _), = calls
    assert torch.equal(positions, random_mask(batch.maskable, ratio=0.6))
    assert (positions.sum(1) == 6).all()


def test_simmim_rejects_a_grid_that_does_not_hold_the_units() -> None:
    enc = _vit()
    batch = image_batch(_images(), PATCH)
    batch = batch.replace(extras={**batch.extras, "grid": (3, 4)})
    with pytest.raises(ValueError, match=r"grid'\] = 3x4 does not hold the batch's 16 units"):
        SimMIM(SimMIMConfig(), enc)(enc, batch)


# ---------------------------------------------------------------- pretext


def _rotations(images: Tensor) -> tuple[Tensor, Tensor]:
    """RotNet's data: image ``i`` rotated by ``(i mod 4) * 90`` degrees, labelled ``i mod 4``."""
    labels = torch.arange(images.shape[0]) % 4
    return torch.stack([img.rot90(int(k), dims=(1, 2)) for img, k in zip(images, labels)]), labels


def test_pretext_is_cross_entropy_of_the_head_on_the_pooled_representation() -> None:
    enc = _vit()
    objective = Pretext(PretextConfig(), enc)
    images, labels = _rotations(_images())
    batch = image_batch(images, PATCH, pretext_labels=labels)
    out = objective(enc, batch)
    logits = objective.head(enc.encode(batch).pooled())
    torch.testing.assert_close(out.loss, F.cross_entropy(logits, labels))
    assert float(out.logs["pretext_accuracy"]) == (logits.argmax(-1) == labels).float().mean().item()
    assert len(Pretext(PretextConfig(hidden_dim=16), enc).head) == 4  # Linear-BN-ReLU, Linear


def test_pretext_errors_are_clear() -> None:
    enc = _vit()
    objective = Pretext(PretextConfig(), enc)
    with pytest.raises(ValueError, match=r"needs batch.extras\['pretext_labels'\].*data.views=rotation"):
        objective(enc, image_batch(_images(), PATCH))
    with pytest.raises(ValueError, match="objective.num_classes=4"):
        objective(enc, image_batch(_images(), PATCH, pretext_labels=torch.full((B,), 4)))
    with pytest.raises(ValueError, match=r"int64 of shape \[6\]"):
        objective(enc, image_batch(_images(), PATCH, pretext_labels=torch.zeros(B, 2, dtype=torch.long)))


# ---------------------------------------------------------------- learning, registry, config


def _rotation_batch(seed: int) -> Batch:
    images, labels = _rotations(_images(seed=seed))
    return image_batch(images, PATCH, pretext_labels=labels)


@pytest.mark.parametrize("name", ["mae", "simmim", "pretext"])
def test_loss_decreases(name: str) -> None:
    enc = _vit()
    spec = OBJECTIVES.get(name)
    model = SSLModel(enc, spec.cls(spec.config_cls(), enc))
    # one batch: the masks change every step
    losses = fit(model, _rotation_batch(seed=0), 30, lr=2e-3, optimizer=torch.optim.Adam, seed=lambda step: step - 1)
    first, last = first_last(losses)
    assert last < 0.9 * first, (first, last)


@pytest.mark.parametrize("name", ["mae", "simmim", "pretext"])
def test_each_name_builds_from_its_config_defaults(name: str) -> None:
    spec = OBJECTIVES.get(name)
    config = from_dict(spec.config_cls, {"name": name}, "objective")
    assert config == spec.config_cls()
    enc = _vit()
    assert enc.unit_dim == C  # 1 channel x 4 x 4: what MAE's decoder and SimMIM's head predict
    objective = spec.cls(config, enc)
    torch.manual_seed(0)
    out = objective(enc, _rotation_batch(seed=0))
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)


@pytest.mark.parametrize(("name", "key", "value"), [
    ("mae", "mask_ratio", 1.0), ("mae", "decoder_heads", 3), ("mae", "max_units", 0), ("simmim", "mask_ratio", 0.0),
    ("simmim", "min_block", 0), ("pretext", "num_classes", 1), ("pretext", "hidden_dim", -1),
])
def test_invalid_config_values_name_the_key(name: str, key: str, value: float) -> None:
    with pytest.raises(ConfigError, match=f"objective.{key}"):
        from_dict(OBJECTIVES.get(name).config_cls, {"name": name, key: value}, "objective")
