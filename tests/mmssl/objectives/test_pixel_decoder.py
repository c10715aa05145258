"""The shared pixel decoder: feature maps of ResNet and ViT grids to patch units, its sub-pixel image layout, the
image <-> unit conversions, the weighted reconstruction loss and the grid checks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from domains.image.units import patchify, unpatchify
from mmssl.config import ConfigError
from mmssl.objectives.losses import masked_regression_loss
from mmssl.objectives.pixel_decoder import (
    PixelDecoder,
    feature_map,
    grid_ladder,
    input_grid,
    patch_units,
    unit_images,
    weighted_squared_error,
)
from mmssl.recipe import load_recipe, recipe_from_dict
from mmssl.types import Batch, EncoderOutput
from tests.mmssl.objectives.pixel_fixtures import B, batch_of, pixels, resnet, vit


@pytest.mark.parametrize(("build", "fmap_grid"), [(resnet, (4, 4)), (vit, (7, 7))])
def test_decodes_an_encoders_feature_map_to_the_units_of_the_input_grid(build, fmap_grid) -> None:
    enc, batch = build(), batch_of(pixels())
    out = enc.encode(batch)
    fmap = feature_map(out, "test")
    assert fmap.shape == (B, 32, *fmap_grid)
    torch.testing.assert_close(fmap.flatten(2).transpose(1, 2), out.hidden)  # row-major cells
    decoder = PixelDecoder(32, 16, width=8, depth=2)
    assert decoder(fmap, input_grid(batch, "test")).shape == (B, 49, 16)


def test_the_last_convolution_is_sub_pixel_its_cells_are_the_patches_of_the_image() -> None:
    torch.manual_seed(0)
    decoder = PixelDecoder(32, 3 * 4 * 4, width=8, depth=1)
    fmap = torch.randn(2, 32, 4, 4)
    units = decoder(fmap, (7, 7))
    channels = decoder.head(decoder.upsample(fmap, (7, 7)))  # [2, 48, 7, 7]
    image = F.pixel_shuffle(channels, 4)  # [2, 3, 28, 28]
    torch.testing.assert_close(unit_images(units, (7, 7), channels=3), image)
    torch.testing.assert_close(patch_units(image, (7, 7)), units)


def test_image_unit_conversions_match_the_image_domains() -> None:
    images = torch.rand(2, 3, 12, 16)
    torch.testing.assert_close(patch_units(images, (3, 4)), patchify(images, 4))
    torch.testing.assert_close(
        unit_images(patchify(images, 4), (3, 4), channels=3), unpatchify(patchify(images, 4), (3, 4), 4)
    )
    with pytest.raises(ValueError, match="do not cut into square patches on a 5x4 grid"):
        patch_units(images, (5, 4))


def test_grid_ladder_grows_geometrically_to_the_target() -> None:
    assert grid_ladder((4, 4), (7, 7), 2) == [(5, 5), (7, 7)]
    assert grid_ladder((4, 4), (16, 8), 2) == [(8, 6), (16, 8)]
    assert grid_ladder((7, 7), (7, 7), 3) == [(7, 7)] * 3


def test_weighted_squared_error_is_the_written_out_weighted_mean() -> None:
    torch.manual_seed(0)
    pred, target = torch.randn(2, 5, 3), torch.randn(2, 5, 3)
    mask = torch.rand(2, 5) < 0.5
    # 0/1 weights on whole units: the masked MSE of MAE and SimMIM
    torch.testing.assert_close(
        weighted_squared_error(pred, target, mask.unsqueeze(-1)), masked_regression_loss(pred, target, mask)
    )
    weight = torch.rand(2, 5, 3)
    expected = (weight * (pred - target) ** 2).sum() / weight.sum()
    torch.testing.assert_close(weighted_squared_error(pred, target, weight), expected)


def test_the_decoder_needs_a_grid_on_both_sides() -> None:
    flat = EncoderOutput(hidden=torch.zeros(2, 6, 4), padding_mask=torch.zeros(2, 6, dtype=torch.bool))
    with pytest.raises(ValueError, match="dae decodes images from the encoder's 2-D feature map"):
        feature_map(flat, "dae")
    units = Batch(units=torch.zeros(2, 6, 4), padding_mask=torch.zeros(2, 6, dtype=torch.bool))
    with pytest.raises(ValueError, match="it needs units on a 2-D grid"):
        input_grid(units, "dae")
    with pytest.raises(ValueError, match="Batch.grid = 2x2 does not hold the batch's 6 units"):
        input_grid(units.replace(grid=(2, 2)), "dae")


@pytest.mark.parametrize("name", ["dae", "vae", "context_encoder"])
def test_a_recipe_of_units_without_a_grid_is_refused_at_load_time(name: str) -> None:
    raw = {"name": "t", "domain": "text", "objective": {"name": name}}
    with pytest.raises(ConfigError, match=f"objective.name={name} decodes images .* domain text gives ids units"):
        recipe_from_dict(raw)


@pytest.mark.parametrize("name", ["dae", "vae", "context_encoder"])
def test_an_image_encoder_without_a_feature_map_is_refused_at_load_time(name: str) -> None:
    message = (
        f"objective.name={name} needs EncoderOutput.grid.*encoder.arch=imagegpt gives a sequence of palette tokens"
    )
    with pytest.raises(ConfigError, match=message):
        load_recipe(name, ["encoder.arch=imagegpt"])
