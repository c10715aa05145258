"""Image domain: collation matches transformers' image processor, views are per-sample, RotNet labels."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from domains.image.data import ImageArrays
from domains.image.domain import ImageDataConfig, ImageDomain, ImageRows, ViewTransform, image_collate, make_processor
from domains.image.units import unpatchify
from mmssl.config import ConfigError
from mmssl.recipe import load_recipe


def _arrays(n: int = 16, c: int = 1, side: int = 28) -> ImageArrays:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, c, side, side), dtype=torch.uint8, generator=g)
    return ImageArrays(images=images, labels=torch.arange(n) % 3, label_names=["a", "b", "c"], source="test")


def test_collate_matches_vit_image_processor() -> None:
    arrays = _arrays(c=3)
    processor = make_processor(arrays, patch_size=4)
    batch = image_collate(processor, with_labels=True)([ImageRows(arrays)[i] for i in range(4)])
    ours = unpatchify(batch.units, batch.grid, 4)
    ref = processor(
        [img.permute(1, 2, 0).numpy() for img in arrays.images[:4]],
        return_tensors="pt",
        input_data_format="channels_last",
    )["pixel_values"]
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    assert batch.extras["labels"].tolist() == [0, 1, 2, 0]
    assert batch.units.shape == (4, 49, 48) and not batch.padding_mask.any()


def test_two_views_are_per_sample_and_seeded() -> None:
    arrays = _arrays()
    arrays = ImageArrays(images=arrays.images[:1].repeat(8, 1, 1, 1), source="same image")
    processor = make_processor(arrays, patch_size=4)
    batch = image_collate(processor, with_labels=False)([ImageRows(arrays)[i] for i in range(8)])
    transform = ViewTransform(ImageDataConfig(views="fashion-mnist"), processor)
    torch.manual_seed(0)
    out = transform(batch)
    views = out.views
    assert len(views) == 2 and all(v.units.shape == batch.units.shape for v in views)
    assert not torch.allclose(views[0].units[0], views[0].units[1])  # identical images, different draws
    assert not torch.allclose(views[0].units, views[1].units)
    torch.manual_seed(0)
    again = transform(batch).views
    assert torch.equal(again[0].units, views[0].units)


def test_multi_crop_local_views() -> None:
    arrays = _arrays()
    processor = make_processor(arrays, patch_size=4)
    batch = image_collate(processor, with_labels=False)([ImageRows(arrays)[i] for i in range(4)])
    views = ViewTransform(ImageDataConfig(views="byol", local_crops=2, local_size=12), processor)(batch).views
    assert [v.grid for v in views] == [(7, 7), (7, 7), (3, 3), (3, 3)]
    with pytest.raises(ConfigError, match="local_size=10 is not a multiple of encoder.patch_size=4"):
        load_recipe("byol", ["data.local_crops=1", "data.local_size=10", "encoder.patch_size=4"])  # when it loads


def test_rotation_labels_undo_the_rotation() -> None:
    arrays = _arrays(n=12)
    processor = make_processor(arrays, patch_size=4)
    batch = image_collate(processor, with_labels=False)([ImageRows(arrays)[i] for i in range(12)])
    torch.manual_seed(1)
    out = ViewTransform(ImageDataConfig(views="rotation"), processor)(batch)
    k = out.extras["pretext_labels"]
    assert set(k.tolist()) <= {0, 1, 2, 3} and len(set(k.tolist())) > 1
    rotated = unpatchify(out.units, (7, 7), 4)
    original = unpatchify(batch.units, (7, 7), 4)
    for i in range(12):
        torch.testing.assert_close(torch.rot90(rotated[i], -int(k[i]), dims=(1, 2)), original[i])


def test_config_errors_name_the_key() -> None:
    with pytest.raises(ValueError, match="data.views must be one of"):
        ImageDataConfig(views="jitter")
    with pytest.raises(ValueError, match="data.path is required"):
        ImageDataConfig(source="numpy")


def test_pretrain_data_from_numpy_and_patch_size_check(tmp_path) -> None:
    images = np.random.default_rng(0).integers(0, 256, (10, 28, 28), dtype=np.uint8)
    np.save(tmp_path / "x.npy", images)
    recipe = SimpleNamespace(
        data=ImageDataConfig(source="numpy", path=str(tmp_path / "x.npy")), encoder=SimpleNamespace(patch_size=4)
    )
    data = ImageDomain().pretrain_data(recipe, tmp_path, 0, 1)
    assert len(data.dataset) == 10 and data.summary["image_shape"] == [1, 28, 28]
    assert (tmp_path / "processor" / "preprocessor_config.json").is_file()
    bad = SimpleNamespace(data=recipe.data, encoder=SimpleNamespace(patch_size=5))
    with pytest.raises(ValueError, match="patch_size=5"):
        ImageDomain().pretrain_data(bad, tmp_path, 0, 1)
