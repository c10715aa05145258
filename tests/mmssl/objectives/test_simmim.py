"""SimMIM: BEiT blocks on the unit grid regressed with L1, random masks without a grid, clear errors, learning."""

from __future__ import annotations

import pytest
import torch

from domains.image.units import image_batch
from mmssl.masking import block_mask_2d, random_mask
from mmssl.objectives.losses import masked_regression_loss
from mmssl.objectives.simmim import SimMIM, SimMIMConfig
from mmssl.types import Batch
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


def test_simmim_masks_blocks_on_the_grid_and_regresses_them_with_l1() -> None:
    enc = vit(28)  # a 7 x 7 grid
    objective = SimMIM(SimMIMConfig(), enc)
    batch = image_batch(images(28), PATCH)
    calls: list[tuple] = []
    record(enc, "encode_at", calls)
    torch.manual_seed(5)
    out = objective(enc, batch)

    torch.manual_seed(5)
    mask = block_mask_2d(B, 7, 7, ratio=0.6, min_block=4)
    (((_, positions), kwargs),) = calls
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
    record(enc, "encode_at", calls)
    torch.manual_seed(1)
    objective(enc, batch)
    torch.manual_seed(1)
    (((_, positions), _),) = calls
    assert torch.equal(positions, random_mask(batch.maskable, ratio=0.6))
    assert (positions.sum(1) == 6).all()


def test_simmim_rejects_a_grid_that_does_not_hold_the_units() -> None:
    enc = vit()
    batch = image_batch(images(), PATCH)
    batch = batch.replace(grid=(3, 4))
    with pytest.raises(ValueError, match=r"Batch.grid = 3x4 does not hold the batch's 16 units"):
        SimMIM(SimMIMConfig(), enc)(enc, batch)


def test_loss_decreases() -> None:
    check_learns_on_one_batch("simmim")


def test_builds_from_its_config_defaults() -> None:
    check_builds_from_its_config_defaults("simmim")


@pytest.mark.parametrize(("key", "value"), [("mask_ratio", 0.0), ("min_block", 0)])
def test_invalid_config_values_name_the_key(key: str, value: float) -> None:
    check_invalid_config_value_names_the_key("simmim", key, value)
