"""Multi-crop from a recipe: 2 global + N local crops with the recipe's sizes and scales, encoders that read crops of
different sizes (ViT position embeddings interpolated, ResNet pooled), and the bad settings a recipe load refuses."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from domains.image.data import ImageArrays
from domains.image.domain import ImageDataConfig, ImageDomain, ImageRows, ViewTransform, image_collate, make_processor
from domains.image.encoders import ImageEncoderConfig, build_image_encoder
from domains.image.units import image_batch
from domains.image.views import dino_views
from mmssl.config import ConfigError
from mmssl.datasets import prepare
from mmssl.objectives.views import encode_crops
from mmssl.recipe import load_recipe


def _batch(n: int = 6, side: int = 28) -> tuple[ImageArrays, object, object]:
    g = torch.Generator().manual_seed(0)
    arrays = ImageArrays(images=torch.randint(0, 256, (n, 1, side, side), dtype=torch.uint8, generator=g), source="t")
    processor = make_processor(arrays, patch_size=4)
    return arrays, processor, image_collate(processor, with_labels=False)([ImageRows(arrays)[i] for i in range(n)])


def _transform(**data: object) -> ViewTransform:
    _, processor, _ = _batch()
    return ViewTransform(ImageDataConfig(**data), processor)


def test_dino_preset_gives_two_global_and_n_local_crops_of_the_recipes_sizes() -> None:
    transform = _transform(views="dino", local_crops=3, local_size=12, local_scale=(0.1, 0.3), crop_scale=(0.5, 1.0))
    configs = transform.configs
    assert [c.size for c in configs] == [28, 28, 12, 12, 12]
    assert [c.scale for c in configs] == [(0.5, 1.0)] * 2 + [(0.1, 0.3)] * 3
    globals_, local = dino_views(size=28, n_local=1)[:2], dino_views(size=28, n_local=1)[2]
    assert (configs[0].blur_p, configs[1].blur_p, configs[1].solarize_p) == (1.0, 0.1, 0.2)  # BYOL's asymmetric pair
    assert (configs[2].blur_p, configs[2].solarize_p, configs[2].grayscale_p) == (local.blur_p, 0.0, local.grayscale_p)
    assert globals_[0].size == 28 and all(c.mean is not None for c in configs)  # every view normalised
    _, _, batch = _batch()
    torch.manual_seed(0)
    views = transform(batch).views
    assert [v.grid for v in views] == [(7, 7)] * 2 + [(3, 3)] * 3 and all(v.batch_size == 6 for v in views)


def test_two_view_presets_take_local_crops_augmented_as_their_second_view() -> None:
    configs = _transform(views="fashion-mnist", local_crops=2, local_size=16).configs
    assert [c.size for c in configs] == [28, 28, 16, 16] and configs[2].scale == (0.05, 0.4)  # DINO's default
    assert (configs[2].brightness, configs[2].blur_p) == (configs[1].brightness, configs[1].blur_p)
    assert len(_transform(views="fashion-mnist").configs) == 2  # no local crops unless asked
    assert len(_transform(views="crop").configs) == 1  # MAE's single crop, whatever num_views says


def test_global_size_resizes_the_augmented_views_and_leaves_the_local_crops() -> None:
    """FixRes (Touvron et al. 2019): train on smaller global views, probe the full-size images."""
    transform = _transform(views="fashion-mnist", local_crops=2, local_size=12, global_size=20)
    assert [c.size for c in transform.configs] == [20, 20, 12, 12]
    _, _, batch = _batch()
    views = transform(batch).views
    assert [v.grid for v in views] == [(5, 5)] * 2 + [(3, 3)] * 2
    assert views[0].units.shape == (6, 25, 16)  # 4x4 patches of the 20x20 crop
    assert [c.size for c in _transform(views="dino").configs] == [28, 28]  # the image's side unless asked


def test_the_dino_recipe_selects_multi_crop() -> None:
    data = load_recipe("dino").data
    assert data.local_crops >= 2 and data.local_size < 28 and data.local_size % 4 == 0


@pytest.mark.parametrize("arch", ["vit", "resnet"])
def test_encoders_read_crops_of_different_sizes(arch: str) -> None:
    torch.manual_seed(0)
    cfg = ImageEncoderConfig(arch=arch, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, resnet_width=4)
    encoder = build_image_encoder(cfg, (28, 28), channels=1).eval()
    _, _, batch = _batch()
    torch.manual_seed(0)
    views = _transform(views="fashion-mnist", local_crops=2, local_size=12).__call__(batch).views
    outputs = encode_crops(encoder, views)  # the global crops in one call, the local ones in another
    assert [o.pooled().shape for o in outputs] == [(6, encoder.hidden_size)] * 4
    for view, out in zip(views, outputs):
        torch.testing.assert_close(out.pooled(), encoder.encode(view).pooled(), rtol=1e-5, atol=1e-5)
    if arch == "vit":  # the local crop's 3x3 grid reads interpolated position embeddings, as transformers does
        pixels = torch.rand(2, 1, 12, 12)
        ref = encoder.model(pixel_values=pixels, interpolate_pos_encoding=True).last_hidden_state[:, 0]
        torch.testing.assert_close(encoder.encode(image_batch(pixels, 4)).pooled(), ref, rtol=1e-5, atol=1e-5)
    else:  # the ResNet averages whatever grid of cells its last stage leaves: 12 -> 6 -> 3 -> 2
        assert outputs[2].hidden.shape[1] == 4 and outputs[0].hidden.shape[1] == 16


# ---------------------------------------------------------------- bad settings, refused when the recipe loads


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["data.local_scale=[0.5, 0.2]"], "data.local_scale must be"),
        (["data.crop_scale=[0.0, 1.0]"], "data.crop_scale must be"),
        (["data.views=rotation", "data.local_crops=2"], "data.views=rotation makes none"),
        (["data.views=none"], "data.views=none makes none"),
        (["data.local_size=10"], "data.local_size=10 is not a multiple of encoder.patch_size=4"),
        (["data.local_size=0"], "data.local_size must be >= 1"),
        (["data.global_size=18"], "data.global_size=18 is not a multiple of encoder.patch_size=4"),
        (["data.global_size=0"], "data.global_size must be >= 1"),
        (["data.views=crop", "data.global_size=20"], "data.views=crop makes none at another size"),
        (
            ["data.source=imagefolder", "data.path=/nowhere", "data.image_size=16", "data.global_size=20"],
            "data.global_size=20 is larger than the 16x16",
        ),
        (
            ["data.source=imagefolder", "data.path=/nowhere", "data.image_size=16", "data.local_size=20"],
            "data.local_size=20 is larger than the 16x16",
        ),
    ],
)
def test_bad_multi_crop_settings_name_the_key_at_recipe_load(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_recipe("dino", overrides)


def test_a_local_crop_larger_than_a_prepared_datasets_images_is_refused_at_load() -> None:
    prepare("fashion-mnist-small")  # embedded: the header says 28x28
    with pytest.raises(ConfigError, match="data.local_size=32 is larger than the 28x28"):
        load_recipe("dino", ["data.name=fashion-mnist-small", "data.local_size=32"])
    assert load_recipe("dino", ["data.name=fashion-mnist-small", "data.local_size=28"]).data.local_size == 28


def test_a_local_crop_larger_than_loaded_images_is_refused_before_training(tiny_images: Path) -> None:
    """A numpy file's image size is known only once it is read: the recipe loads, the data refuses it."""
    recipe = load_recipe("dino", ["data.source=numpy", f"data.path={tiny_images}", "data.local_size=32"])
    with pytest.raises(ValueError, match="data.local_size=32 is larger than the 28x28 images"):
        ImageDomain().pretrain_data(recipe, Path("/nonexistent"), rank=1, world_size=1)
