"""The colour-photograph crop builder (``mmssl data prepare skimage-photos``) on a tiny local source: the crops, their
count, the split by photograph and the prepared format; the scikit-image wheel itself is not downloaded here."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from domains.image import builders
from domains.image.builders import CROP_SIDE, build_photo_crops, crop_splits, photo_crops
from domains.image.data import load_arrays
from mmssl.registry import DATASETS


def smooth_photo(seed: int, height: int, width: int) -> np.ndarray:
    """``uint8 [height, width, 3]``: random colours at 8x8 upsampled, a textured stand-in for a photograph."""
    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
    return np.asarray(small.resize((width, height), Image.Resampling.BILINEAR))


@pytest.fixture
def small_crops(monkeypatch: pytest.MonkeyPatch) -> None:
    """Base side 64 and two scales, so a photograph gives a handful of crops."""
    monkeypatch.setattr(builders, "CROP_BASE_SIDE", 64)
    monkeypatch.setattr(builders, "CROP_SCALES", (1.0, 0.5))


def expected_count(height: int, width: int) -> int:
    """Crops of a photograph at base 64 and scales 1, 0.5, stride 16 (none flat)."""
    total = 0
    for scale in (1.0, 0.5):
        w, h = round(width * 64 / min(height, width) * scale), round(height * 64 / min(height, width) * scale)
        total += ((h - CROP_SIDE) // 16 + 1) * ((w - CROP_SIDE) // 16 + 1)
    return total


def test_photo_crops_cut_every_scale(small_crops: None) -> None:
    photo = smooth_photo(0, 100, 150)  # resized to 64 x 96, then 32 x 48
    crops = photo_crops(photo)
    assert crops.dtype == np.uint8 and crops.shape == (expected_count(100, 150), 3, CROP_SIDE, CROP_SIDE)
    resized = np.asarray(Image.fromarray(photo).resize((96, 64), Image.Resampling.LANCZOS))
    assert np.array_equal(crops[0], resized[:32, :32].transpose(2, 0, 1))  # the first crop: top left, scale 1
    assert np.array_equal(crops[1], resized[:32, 16:48].transpose(2, 0, 1))  # the next: one stride to the right


def test_flat_regions_are_dropped(small_crops: None) -> None:
    flat = np.full((64, 64, 3), 7, np.uint8)
    assert photo_crops(flat).shape == (0, 3, CROP_SIDE, CROP_SIDE)
    with pytest.raises(ValueError, match="no test crop survived"):
        crop_splits({"a": smooth_photo(0, 64, 64), "flat": flat}, ["flat"], "test photos")


def test_build_writes_splits_by_photograph(small_crops: None, tmp_path) -> None:
    photos = {"a": smooth_photo(1, 64, 80), "b": smooth_photo(2, 90, 64), "c": smooth_photo(3, 64, 64)}
    build_photo_crops(photos, tmp_path, ["b"], "local photos")
    train, test = load_arrays(tmp_path / "train"), load_arrays(tmp_path / "test")
    assert train.images.shape[1:] == test.images.shape[1:] == (3, CROP_SIDE, CROP_SIDE)
    assert train.label_names == test.label_names == ["a", "b", "c"]
    assert len(train) == expected_count(64, 80) + expected_count(64, 64) and len(test) == expected_count(90, 64)
    assert set(train.labels.tolist()) == {0, 2} and set(test.labels.tolist()) == {1}  # no photograph in both
    assert torch.equal(test.images[0], torch.from_numpy(photo_crops(photos["b"])[0]))
    assert "local photos" in train.source and "b" in test.source


def test_unknown_test_photograph_is_an_error() -> None:
    with pytest.raises(ValueError, match="non-empty subset"):
        crop_splits({"a": smooth_photo(0, 64, 64)}, ["z"], "test photos")


def test_builder_is_registered() -> None:
    spec = DATASETS.get("skimage-photos")
    assert spec.build == "domains.image.builders:build_skimage_photos" and spec.domain == "image"
    assert set(builders.SKIMAGE_TEST_PHOTOS) <= set(builders.SKIMAGE_PHOTOS_FILES)
