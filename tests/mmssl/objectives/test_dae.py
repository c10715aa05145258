"""Denoising autoencoder: the three corruptions, the (emphasised) squared error written out, learning, exact resume,
the export, and the recipe's load-time checks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mmssl.config import ConfigError
from mmssl.objectives.base import SSLModel
from mmssl.objectives.dae import DAE, DAEConfig, corrupt
from mmssl.recipe import load_recipe
from tests.mmssl.objectives.pixel_fixtures import (
    batch_of,
    check_export_reloads_the_features,
    check_loss_decreases,
    check_resumes_exactly,
    pixels,
    resnet,
    vit,
)


def test_masking_noise_forces_a_fraction_of_elements_to_the_black_pixel() -> None:
    units = batch_of(pixels()).units  # standardised: a 0 pixel is -MEAN / STD
    torch.manual_seed(0)
    corrupted, changed = corrupt(units, DAEConfig(corruption="masking", corruption_fraction=0.4))
    low = units.amin(dim=(0, 1))
    assert abs(changed.float().mean().item() - 0.4) < 0.03
    assert torch.equal(corrupted[changed], low.expand_as(units)[changed])
    assert torch.equal(corrupted[~changed], units[~changed])


def test_salt_and_pepper_sets_the_features_extremes_and_gaussian_adds_noise_everywhere() -> None:
    units = batch_of(pixels()).units
    torch.manual_seed(0)
    corrupted, changed = corrupt(units, DAEConfig(corruption="salt_and_pepper", corruption_fraction=0.5))
    low, high = units.amin(dim=(0, 1)).expand_as(units), units.amax(dim=(0, 1)).expand_as(units)
    hit = corrupted[changed]
    assert ((hit == low[changed]) | (hit == high[changed])).all()
    assert 0.3 < (hit == high[changed]).float().mean() < 0.7  # a fair coin
    torch.manual_seed(1)
    noisy, everywhere = corrupt(units, DAEConfig(corruption="gaussian", noise_std=0.3))
    torch.manual_seed(1)
    torch.testing.assert_close(noisy, units + 0.3 * torch.randn_like(units))
    assert everywhere.all()


@pytest.mark.parametrize("beta", [1.0, 0.0, 0.25])
def test_loss_is_the_written_out_emphasised_squared_error(beta: float) -> None:
    enc, batch = resnet(), batch_of(pixels())
    objective = DAE(DAEConfig(uncorrupted_weight=beta), enc)
    torch.manual_seed(3)
    out = objective(enc, batch)

    torch.manual_seed(3)
    chosen = torch.rand_like(batch.units) < 0.25
    corrupted = torch.where(chosen, batch.units.amin(dim=(0, 1)), batch.units)
    pred = objective.reconstruct(enc, batch, corrupted)
    err = (pred - batch.units) ** 2
    expected = (err[chosen].sum() + beta * err[~chosen].sum()) / (chosen.sum() + beta * (~chosen).sum())
    torch.testing.assert_close(out.loss, expected)
    if beta == 0.0:  # full emphasis: the corrupted elements only
        torch.testing.assert_close(out.loss, err[chosen].mean())


@pytest.mark.parametrize("build", [resnet, vit])
def test_loss_decreases(build) -> None:
    check_loss_decreases(lambda: SSLModel(enc := build(), DAE(DAEConfig(decoder_width=16), enc)))


def test_resumes_exactly() -> None:
    state = check_resumes_exactly(lambda seed: SSLModel(enc := resnet(seed), DAE(DAEConfig(decoder_width=8), enc)))
    assert any(k.startswith("objective.decoder.blocks.0.1.running_mean") for k in state)  # decoder batch norm


def test_export_reloads_the_features_without_mmssl(tmp_path: Path) -> None:
    enc = resnet()
    check_export_reloads_the_features(SSLModel(enc, DAE(DAEConfig(decoder_width=8), enc)), tmp_path)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("objective.corruption_fraction=1.5", "objective.corruption_fraction must be in \\[0, 1\\], got 1.5"),
        ("objective.corruption_fraction=-0.1", "objective.corruption_fraction must be in \\[0, 1\\]"),
        ("objective.corruption=blur", "objective.corruption"),
        ("objective.noise_std=-1", "objective.noise_std must be >= 0"),
        ("objective.uncorrupted_weight=2", "objective.uncorrupted_weight must be in \\[0, 1\\]"),
        ("objective.decoder_depth=0", "objective.decoder_depth must be >= 1"),
    ],
)
def test_bad_settings_are_refused_at_recipe_load_time(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_recipe("dae", [override])


def test_emphasis_with_gaussian_noise_is_refused() -> None:
    with pytest.raises(ConfigError, match="objective.corruption=gaussian corrupts every element"):
        load_recipe("dae", ["objective.corruption=gaussian", "objective.uncorrupted_weight=0"])
