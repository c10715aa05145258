"""MAE: visible units encoded, masked units decoded, the normalised masked regression, clear errors, learning."""

from __future__ import annotations

import pytest
import torch

from domains.image.units import image_batch
from mmssl.masking import random_mask
from mmssl.objectives.losses import masked_regression_loss
from mmssl.objectives.mae import MAE, MAEConfig, split_units
from tests.mmssl.objectives.masking_fixtures import (
    PATCH,
    B,
    C,
    UnitEncoder,
    check_builds_from_its_config_defaults,
    check_invalid_config_value_names_the_key,
    check_learns_on_one_batch,
    images,
    record,
    vit,
)


@pytest.mark.parametrize(("size", "visible_count"), [(16, 4), (28, 12)])  # T = 16 and 49: round(0.25 T)
def test_mae_encodes_the_visible_units_and_decodes_only_the_masked_ones(size: int, visible_count: int) -> None:
    enc = vit(size)
    objective = MAE(MAEConfig(), enc)
    calls: list[tuple] = []
    record(enc, "encode_visible", calls)
    decoded = []
    objective.decoder.head.register_forward_hook(lambda m, i, o: decoded.append(tuple(o.shape)))
    objective(enc, image_batch(images(size), PATCH))
    (((_, visible), _),) = calls
    units = (size // PATCH) ** 2
    assert visible.shape == (B, visible_count) == (B, round((1 - 0.75) * units))
    assert decoded == [(B, units - visible_count, C)]  # the head runs on the masked units alone
    assert all(len(set(row.tolist())) == visible_count for row in visible)


def test_mae_loss_is_the_normalised_masked_regression_on_masked_units() -> None:
    enc = vit()
    objective = MAE(MAEConfig(), enc)
    batch = image_batch(images(), PATCH)
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
    enc = vit()
    with pytest.raises(NotImplementedError, match="cannot encode a subset of units"):
        MAE(MAEConfig(), UnitEncoder())(UnitEncoder(), image_batch(images(), PATCH))
    with pytest.raises(ValueError, match="objective.max_units=8 is below the batch's 16 units"):
        MAE(MAEConfig(max_units=8), enc)(enc, image_batch(images(), PATCH))
    batch = image_batch(images(), PATCH)
    padded = batch.replace(padding_mask=batch.padding_mask.clone().index_fill_(1, torch.tensor([15]), True))
    with pytest.raises(ValueError, match="padded"):
        MAE(MAEConfig(), enc)(enc, padded)
    enc.unit_dim = 12  # an encoder that declares another unit size than the batch has
    with pytest.raises(ValueError, match="unit_dim is 12 but the batch's units have 16 features"):
        MAE(MAEConfig(), enc)(enc, batch)
    enc.unit_dim = None  # an encoder that does not declare it
    with pytest.raises(ValueError, match="mae reconstructs .* but ViTEncoder has no unit_dim"):
        MAE(MAEConfig(), enc)


def test_loss_decreases() -> None:
    check_learns_on_one_batch("mae")


def test_builds_from_its_config_defaults() -> None:
    check_builds_from_its_config_defaults("mae")


@pytest.mark.parametrize(("key", "value"), [("mask_ratio", 1.0), ("decoder_heads", 3), ("max_units", 0)])
def test_invalid_config_values_name_the_key(key: str, value: float) -> None:
    check_invalid_config_value_names_the_key("mae", key, value)
