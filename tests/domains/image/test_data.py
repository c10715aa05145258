"""Tests for the image readers, the cache format and the Fashion-MNIST builder.

The fast tests write tiny synthetic IDX / numpy / PNG / Hugging Face inputs; the ``slow``
one fetches the Debian package and builds Fashion-MNIST end to end (``pytest -m slow``).
"""

from __future__ import annotations

import gzip
import logging
import struct
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from domains.image import builders
from domains.image.data import (
    ImageArrays,
    load_arrays,
    load_hf_image_dataset,
    load_imagefolder,
    load_numpy,
    read_idx,
    read_idx_array,
    save_arrays,
)
from mmssl import datasets as mmssl_datasets
from mmssl.registry import DATASETS

IDX_TYPE_BYTES = {np.dtype(np.uint8): 0x08, np.dtype(np.int32): 0x0C, np.dtype(np.float32): 0x0D}


def write_idx(path: Path, array: np.ndarray, compress: bool = False) -> Path:
    """Write ``array`` as an IDX file: big-endian magic, dimensions and data."""
    header = bytes([0, 0, IDX_TYPE_BYTES[array.dtype], array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    path.write_bytes(gzip.compress(payload) if compress else payload)
    return path


def random_images(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


# --------------------------------------------------------------------------- ImageArrays
def test_image_arrays_validates_fields() -> None:
    images = torch.zeros(4, 1, 5, 5, dtype=torch.uint8)
    labels = torch.tensor([0, 1, 1, 0])
    assert len(ImageArrays(images=images, labels=labels, label_names=["a", "b"], source="toy")) == 4
    with pytest.raises(ValueError, match=r"toy.*uint8 tensor"):
        ImageArrays(images=images.float(), source="toy")
    with pytest.raises(ValueError, match=r"C=1\|3"):
        ImageArrays(images=torch.zeros(4, 2, 5, 5, dtype=torch.uint8), source="toy")
    with pytest.raises(ValueError, match="3 labels for 4 images"):
        ImageArrays(images=images, labels=labels[:3], source="toy")
    with pytest.raises(ValueError, match="int64"):
        ImageArrays(images=images, labels=labels.int(), source="toy")
    with pytest.raises(ValueError, match="label 1 has no name"):
        ImageArrays(images=images, labels=labels, label_names=["a"], source="toy")
    with pytest.raises(ValueError, match="without labels"):
        ImageArrays(images=images, label_names=["a"], source="toy")
    with pytest.raises(ValueError, match="source"):
        ImageArrays(images=images, source="")


# --------------------------------------------------------------------------- IDX
@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_round_trip(tmp_path: Path, compress: bool) -> None:
    pixels = random_images((6, 4, 3))
    labels = np.array([0, 2, 1, 2, 0, 1], dtype=np.uint8)
    arrays = read_idx(
        write_idx(tmp_path / "images.idx", pixels, compress),
        write_idx(tmp_path / "labels.idx", labels, compress),
        label_names=["x", "y", "z"],
    )
    assert arrays.images.shape == (6, 1, 4, 3) and arrays.images.dtype == torch.uint8
    assert torch.equal(arrays.images[:, 0], torch.from_numpy(pixels))
    assert arrays.labels.tolist() == labels.tolist() and arrays.labels.dtype == torch.int64
    assert arrays.label_names == ["x", "y", "z"]
    assert arrays.source == str(tmp_path / "images.idx")
    assert read_idx(tmp_path / "images.idx").labels is None


def test_read_idx_array_is_big_endian(tmp_path: Path) -> None:
    for values in (np.arange(-3, 9, dtype=np.int32).reshape(3, 4), np.linspace(-1, 1, 5, dtype=np.float32)):
        read = read_idx_array(write_idx(tmp_path / "values.idx", values))
        assert read.dtype == values.dtype and np.array_equal(read, values)


def test_read_idx_errors_name_the_file(tmp_path: Path) -> None:
    good = write_idx(tmp_path / "good.idx", random_images((5, 4, 4)))
    raw = good.read_bytes()
    bad_magic = tmp_path / "bad-magic.idx"
    bad_magic.write_bytes(b"\x01\x00" + raw[2:])
    with pytest.raises(ValueError, match=r"bad-magic\.idx: bad IDX magic 01000803"):
        read_idx(bad_magic)
    truncated = tmp_path / "truncated.idx"
    truncated.write_bytes(raw[:-7])
    with pytest.raises(ValueError, match=r"truncated\.idx: truncated IDX data: .*5 x 4 x 4 uint8 = 80 bytes.*73"):
        read_idx(truncated)
    truncated_gz = tmp_path / "truncated.idx.gz"
    truncated_gz.write_bytes(gzip.compress(raw)[:-10])
    with pytest.raises(ValueError, match=r"truncated\.idx\.gz: truncated or corrupt gzip"):
        read_idx(truncated_gz)
    trailing = tmp_path / "trailing.idx"
    trailing.write_bytes(raw + b"\0\0")
    with pytest.raises(ValueError, match=r"trailing\.idx: 2 bytes after the IDX data"):
        read_idx(trailing)
    labels = write_idx(tmp_path / "labels.idx", np.zeros(4, dtype=np.uint8))
    with pytest.raises(ValueError, match=r"labels\.idx has 4 labels but .*good\.idx has 5 images"):
        read_idx(good, labels)
    with pytest.raises(ValueError, match=r"labels\.idx: expected uint8 images"):
        read_idx(labels)


# --------------------------------------------------------------------------- numpy
def test_load_numpy_layouts(tmp_path: Path) -> None:
    nchw = random_images((5, 3, 6, 4))
    from_nhwc = load_numpy(nchw.transpose(0, 2, 3, 1), labels=[0, 1, 2, 1, 0])
    assert torch.equal(from_nhwc.images, torch.from_numpy(nchw))
    assert from_nhwc.labels.tolist() == [0, 1, 2, 1, 0] and from_nhwc.source == "numpy array"
    assert torch.equal(load_numpy(nchw).images, torch.from_numpy(nchw))
    gray = random_images((5, 6, 4))
    assert torch.equal(load_numpy(gray).images, torch.from_numpy(gray)[:, None])
    np.save(tmp_path / "gray.npy", gray)
    from_npy = load_numpy(tmp_path / "gray.npy", labels=np.arange(5))
    assert from_npy.images.shape == (5, 1, 6, 4) and from_npy.source == str(tmp_path / "gray.npy")
    np.savez(tmp_path / "set.npz", images=nchw.transpose(0, 2, 3, 1), labels=np.array([1, 0, 1, 0, 1]))
    from_npz = load_numpy(tmp_path / "set.npz", label_names=["no", "yes"])
    assert torch.equal(from_npz.images, torch.from_numpy(nchw)) and from_npz.labels.tolist() == [1, 0, 1, 0, 1]
    cubes = random_images((2, 3, 3, 3))
    with pytest.raises(ValueError, match="layout='NCHW' or 'NHWC'"):
        load_numpy(cubes)
    assert torch.equal(load_numpy(cubes, layout="NHWC").images, torch.from_numpy(cubes.transpose(0, 3, 1, 2)))


def test_load_numpy_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="must be uint8"):
        load_numpy(np.zeros((2, 4, 4), dtype=np.float32))
    with pytest.raises(ValueError, match="channels must be 1 or 3"):
        load_numpy(np.zeros((2, 5, 4, 4), dtype=np.uint8))
    with pytest.raises(ValueError, match="labels must be integers"):
        load_numpy(np.zeros((2, 4, 4), dtype=np.uint8), labels=[0.5, 1.0])
    np.savez(tmp_path / "pixels.npz", x=np.zeros((2, 4, 4), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"pixels\.npz: no 'images' array; arrays in the file: x"):
        load_numpy(tmp_path / "pixels.npz")
    np.savez(tmp_path / "both.npz", images=np.zeros((2, 4, 4), dtype=np.uint8), labels=np.array([0, 1]))
    with pytest.raises(ValueError, match=r"both\.npz: has a 'labels' array"):
        load_numpy(tmp_path / "both.npz", labels=[1, 0])
    with pytest.raises(ValueError, match=r"\.npy or \.npz"):
        load_numpy(tmp_path / "images.png")


# --------------------------------------------------------------------------- imagefolder
def make_imagefolder(root: Path) -> None:
    """cat/ has two RGB images and a corrupt one, dog/ one grayscale image and a README."""
    (root / "cat").mkdir(parents=True)
    (root / "dog" / "nested").mkdir(parents=True)
    Image.fromarray(np.full((6, 5, 3), 10, dtype=np.uint8)).save(root / "cat" / "a.png")
    Image.fromarray(np.full((6, 5, 3), 20, dtype=np.uint8)).save(root / "cat" / "b.jpg", quality=100)
    (root / "cat" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    Image.fromarray(np.full((6, 5), 30, dtype=np.uint8)).save(root / "dog" / "nested" / "c.png")
    (root / "dog" / "README.txt").write_text("not an image\n")


def test_load_imagefolder_skips_and_reports_corrupt_files(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    make_imagefolder(tmp_path / "pets")
    with caplog.at_level(logging.WARNING, logger="domains.image.data"):
        arrays, skipped = load_imagefolder(tmp_path / "pets")
    broken = tmp_path / "pets" / "cat" / "broken.png"
    assert list(skipped) == [broken] and len(skipped) == 1
    assert str(broken) in caplog.text and "skipped 1 of 4 image files" in caplog.text
    assert arrays.label_names == ["cat", "dog"] and arrays.labels.tolist() == [0, 0, 1]
    assert arrays.skipped == ((str(broken), skipped[broken]),)  # what the run's data summary counts
    assert arrays.images.shape == (3, 3, 6, 5)  # the grayscale dog is repeated to RGB
    assert arrays.images[:, 0, 0, 0].tolist() == [10, 20, 30]
    gray, _ = load_imagefolder(tmp_path / "pets", channels=1, size=(4, 8))
    assert gray.images.shape == (3, 1, 4, 8)
    assert load_imagefolder(tmp_path / "pets", size=3)[0].images.shape == (3, 3, 3, 3)


def test_load_imagefolder_errors(tmp_path: Path) -> None:
    make_imagefolder(tmp_path / "pets")
    Image.fromarray(np.zeros((7, 7), dtype=np.uint8)).save(tmp_path / "pets" / "dog" / "big.png")
    with pytest.raises(ValueError, match=r"is 6x5 but .*big\.png is 7x7; resize .* with --set data\.image_size=N"):
        load_imagefolder(tmp_path / "pets")
    (tmp_path / "pets" / "empty").mkdir()
    with pytest.raises(ValueError, match=r"empty: class folder has no image files"):
        load_imagefolder(tmp_path / "pets", size=4)
    with pytest.raises(ValueError, match="no class subfolders"):
        load_imagefolder(tmp_path / "pets" / "empty")
    with pytest.raises(FileNotFoundError, match=r"data\.path=.*missing: no such folder"):
        load_imagefolder(tmp_path / "missing")
    with pytest.raises(ValueError, match=r"data\.path=.*a\.png is a file, not a folder"):
        load_imagefolder(tmp_path / "pets" / "cat" / "a.png")


# --------------------------------------------------------------------------- Hugging Face
@pytest.fixture
def hf_folder(tmp_path: Path) -> tuple[Path, np.ndarray]:
    """A ``save_to_disk`` DatasetDict with Image + ClassLabel columns (train: 6, test: 2 rows)."""
    pixels = random_images((8, 4, 4))
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["even", "odd"])})
    rows = {"image": [Image.fromarray(p) for p in pixels], "label": [i % 2 for i in range(8)]}
    full = datasets.Dataset.from_dict(rows, features=features)
    splits = datasets.DatasetDict({"train": full.select(range(6)), "test": full.select(range(6, 8))})
    splits.save_to_disk(str(tmp_path / "hf"))
    return tmp_path / "hf", pixels


def test_load_hf_image_dataset_from_disk(hf_folder: tuple[Path, np.ndarray]) -> None:
    folder, pixels = hf_folder
    train = load_hf_image_dataset(folder, "train")
    assert torch.equal(train.images[:, 0], torch.from_numpy(pixels[:6]))
    assert train.labels.tolist() == [0, 1, 0, 1, 0, 1] and train.label_names == ["even", "odd"]
    assert "train" in train.source
    streamed = load_hf_image_dataset(folder, "test", streaming=True, limit=1, label_column=None)
    assert torch.equal(streamed.images[:, 0], torch.from_numpy(pixels[6:7])) and streamed.labels is None


def test_load_hf_image_dataset_through_load_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A plain image folder goes through ``datasets.load_dataset`` (its imagefolder builder)."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    for name, value in (("cat", 10), ("dog", 30)):  # datasets infers labels only with files one level deep
        (tmp_path / "pets" / name).mkdir(parents=True)
        Image.fromarray(np.full((6, 5, 3), value, dtype=np.uint8)).save(tmp_path / "pets" / name / "a.png")
    arrays = load_hf_image_dataset(tmp_path / "pets", "train", channels=1)
    assert arrays.images.shape == (2, 1, 6, 5) and arrays.label_names == ["cat", "dog"]
    assert sorted(zip(arrays.labels.tolist(), arrays.images[:, 0, 0, 0].tolist())) == [(0, 10), (1, 30)]


def test_load_hf_image_dataset_errors(hf_folder: tuple[Path, np.ndarray]) -> None:
    folder, _ = hf_folder
    with pytest.raises(ValueError, match=r"no image column 'img'; available columns: image, label"):
        load_hf_image_dataset(folder, "train", image_column="img")
    with pytest.raises(ValueError, match=r"no label column 'fine_label'; available columns: image, label"):
        load_hf_image_dataset(folder, "train", label_column="fine_label")
    with pytest.raises(ValueError, match=r"no split 'validation'; available splits: train, test"):
        load_hf_image_dataset(folder, "validation")
    with pytest.raises(ValueError, match="column 'label' holds int, expected images"):
        load_hf_image_dataset(folder, "train", image_column="label", label_column=None)


# --------------------------------------------------------------------------- cache format
def test_save_load_round_trip(tmp_path: Path) -> None:
    arrays = ImageArrays(
        images=torch.from_numpy(random_images((7, 3, 5, 6))),
        labels=torch.tensor([2, 0, 1, 2, 0, 1, 1]),
        label_names=["r", "g", "b"],
        source="synthetic colours",
    )
    assert save_arrays(arrays, tmp_path / "split") == tmp_path / "split" / "images.safetensors"
    loaded = load_arrays(tmp_path / "split")
    assert torch.equal(loaded.images, arrays.images) and torch.equal(loaded.labels, arrays.labels)
    assert (loaded.label_names, loaded.source) == (arrays.label_names, arrays.source)
    unlabelled = ImageArrays(images=arrays.images[:, :1], source="gray")
    save_arrays(unlabelled, tmp_path / "unlabelled")
    again = load_arrays(tmp_path / "unlabelled")
    assert torch.equal(again.images, unlabelled.images) and again.labels is None and again.label_names is None


def test_load_arrays_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nowhere.*was not written by save_arrays"):
        load_arrays(tmp_path / "nowhere")
    (tmp_path / "foreign").mkdir()
    save_file({"images": torch.zeros(1, 1, 2, 2, dtype=torch.uint8)}, str(tmp_path / "foreign" / "images.safetensors"))
    with pytest.raises(ValueError, match=r"images\.safetensors: header says None"):
        load_arrays(tmp_path / "foreign")
    (tmp_path / "garbage").mkdir()
    (tmp_path / "garbage" / "images.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        load_arrays(tmp_path / "garbage")


# --------------------------------------------------------------------------- Fashion-MNIST
def test_fashion_mnist_is_registered() -> None:
    builder = DATASETS.get("fashion-mnist")
    assert builder.domain == "image" and builder.resolve() is builders.build_fashion_mnist
    assert len(builders.FASHION_MNIST_CLASSES) == 10
    with pytest.raises(ValueError, match="known: train, test"):
        builders.load_fashion_mnist("validation")  # type: ignore[arg-type]


@pytest.mark.slow
def test_fashion_mnist_builder_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MMSSL_CACHE", str(tmp_path))
    train, test = builders.load_fashion_mnist("train"), builders.load_fashion_mnist("test")
    assert mmssl_datasets.is_prepared("fashion-mnist")
    assert train.images.shape == (60_000, 1, 28, 28) and test.images.shape == (10_000, 1, 28, 28)
    assert train.label_names == test.label_names == list(builders.FASHION_MNIST_CLASSES)
    assert torch.bincount(train.labels).tolist() == [6_000] * 10
    assert torch.bincount(test.labels).tolist() == [1_000] * 10
    # Pinned with the authors' reader (utils/mnist_reader.py in the package: np.frombuffer, offset 16 / 8).
    assert train.labels[:10].tolist() == [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]
    assert test.labels[:10].tolist() == [9, 2, 1, 1, 6, 1, 4, 6, 5, 7]
    assert int(train.images.sum(dtype=torch.int64)) == 3_431_114_169
    assert int(test.images.sum(dtype=torch.int64)) == 573_469_082
    assert "dataset-fashion-mnist" in train.source and "train" in train.source
