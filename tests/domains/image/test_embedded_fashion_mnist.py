"""The Fashion-MNIST subset shipped inside the package (``fashion-mnist-small``): its contents, its provenance
(exact rows of the official splits, redrawn from the Debian files when they are installed), its registration as
embedded data and as a task, and a pretrain -> linear probe run that never touches the Debian package."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from domains.image import builders
from domains.image.data import load_arrays, read_idx
from mmssl.checkpoint import SUMMARY_FILE
from mmssl.cli import main
from mmssl.metrics import read_metrics
from mmssl.registry import DATASETS, TASKS
from tests.conftest import TINY_IMAGE

DEBIAN_DIR = Path("/") / builders.FASHION_MNIST_DIR
DEBIAN_INSTALLED = all(
    (DEBIAN_DIR / name).is_file()
    for prefix, _ in builders.FASHION_MNIST_SPLITS.values()
    for name in builders.fashion_mnist_idx_files(prefix)
)
SIZES = {"train": 10_000, "test": 2_000}


@pytest.fixture(scope="module")
def stored() -> dict[str, np.ndarray]:
    with np.load(builders.FASHION_MNIST_SMALL_FILE, allow_pickle=False) as archive:
        return {key: archive[key] for key in archive.files}


def test_the_file_is_small_and_holds_uint8_arrays(stored: dict[str, np.ndarray]) -> None:
    assert builders.FASHION_MNIST_SMALL_FILE.stat().st_size < 6_000_000
    for split, n in SIZES.items():
        assert stored[f"{split}_images"].shape == (n, 28, 28) and stored[f"{split}_images"].dtype == np.uint8
        assert stored[f"{split}_labels"].shape == (n,) and stored[f"{split}_labels"].dtype == np.uint8
        assert stored[f"{split}_index"].shape == (n,) and np.all(np.diff(stored[f"{split}_index"].astype(int)) > 0)
    assert stored["source"].item().startswith("Debian dataset-fashion-mnist ")


@pytest.mark.parametrize("split", ["train", "test"])
def test_a_split_loads_balanced_with_the_class_names(split: str) -> None:
    arrays = builders.load_fashion_mnist_small(split)
    assert arrays.images.shape == (SIZES[split], 1, 28, 28) and arrays.images.dtype == torch.uint8
    assert arrays.labels.dtype == torch.int64
    assert torch.bincount(arrays.labels).tolist() == [SIZES[split] // 10] * 10
    assert arrays.label_names == list(builders.FASHION_MNIST_CLASSES)
    assert 0 < int(arrays.images.float().mean()) < 255  # real pictures, not a blank array


def test_no_image_is_in_both_splits(stored: dict[str, np.ndarray]) -> None:
    train = {row.tobytes() for row in stored["train_images"]}
    assert not any(row.tobytes() in train for row in stored["test_images"])


@pytest.mark.skipif(not DEBIAN_INSTALLED, reason=f"Debian dataset-fashion-mnist is not installed ({DEBIAN_DIR})")
def test_rows_are_the_official_rows_and_the_draw_is_reproducible(stored: dict[str, np.ndarray]) -> None:
    for split, (prefix, _) in builders.FASHION_MNIST_SPLITS.items():
        official = read_idx(*(DEBIAN_DIR / name for name in builders.fashion_mnist_idx_files(prefix)))
        index = stored[f"{split}_index"].astype(np.int64)
        for i in (0, 1, len(index) // 2, len(index) - 1):
            assert np.array_equal(official.images[index[i], 0].numpy(), stored[f"{split}_images"][i])
            assert int(official.labels[index[i]]) == int(stored[f"{split}_labels"][i])
    redrawn = builders.fashion_mnist_small_arrays(DEBIAN_DIR)  # the same seed gives the same file contents
    assert redrawn.keys() == stored.keys() - {"source"}
    assert all(np.array_equal(redrawn[key], stored[key]) for key in redrawn)


def test_balanced_subset_draws_per_class_and_refuses_a_short_class() -> None:
    labels = np.array([0, 1, 1, 0, 2, 2, 1, 0, 2])
    index = builders.balanced_subset(labels, 2, np.random.default_rng(0))
    assert np.bincount(labels[index]).tolist() == [2, 2, 2] and np.all(np.diff(index) > 0)
    assert np.array_equal(index, builders.balanced_subset(labels, 2, np.random.default_rng(0)))
    with pytest.raises(ValueError, match="class 0 has 3 rows, fewer than the 4 asked for"):
        builders.balanced_subset(labels, 4, np.random.default_rng(0))


def test_registered_as_embedded_data_and_as_a_task(capsys: pytest.CaptureFixture[str]) -> None:
    builder = DATASETS.get("fashion-mnist-small")
    assert builder.embedded and builder.domain == "image"
    assert builder.resolve() is builders.build_fashion_mnist_small
    assert TASKS.get("fashion-mnist-small").domain == "image"
    assert main(["data", "list"]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("fashion-mnist-small "))
    assert line.split()[1:3] == ["image", "embedded"]


@pytest.fixture
def no_debian(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to read the Debian package (installed or fetched) fails the test."""

    def refuse() -> None:
        raise AssertionError("the embedded subset must not read the Debian package")

    monkeypatch.setattr(builders, "fashion_mnist_files", refuse)


def test_prepare_copies_the_embedded_subset(no_debian: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "prepare", "fashion-mnist-small", "--force"]) == 0
    folder = Path(capsys.readouterr().out.strip())
    for split in SIZES:
        copied, embedded = load_arrays(folder / split), builders.load_fashion_mnist_small(split)
        assert torch.equal(copied.images, embedded.images) and torch.equal(copied.labels, embedded.labels)


def test_pretrain_and_linear_probe_without_the_debian_package(no_debian: None, tmp_path: Path) -> None:
    """The recipe's data and task on the embedded subset, on the smallest encoder (a 2-layer ViT of width 32)."""
    run = tmp_path / "run"
    small = ["encoder.arch=vit", "objective.projector_hidden_dim=64", "objective.projector_dim=32"]
    overrides = [*TINY_IMAGE, *small, "data.source=prepared", "data.name=fashion-mnist-small", "train.max_steps=2"]
    args = ["pretrain", "vicreg", "--output-dir", str(run)]
    assert main([*args, *(arg for o in overrides for arg in ("--set", o))]) == 0
    summary = json.loads((run / SUMMARY_FILE).read_text())
    assert [summary[key] for key in ("data_name", "images", "image_shape")] == [
        "fashion-mnist-small",
        10_000,
        [1, 28, 28],
    ]
    task = ["--task", "fashion-mnist-small", "--set", "task.max_train_samples=200"]
    assert main(["evaluate", str(run), "--protocol", "linear", *task]) == 0
    record = [r for r in read_metrics(run) if r.get("event") == "evaluate"][-1]
    assert (record["task"], record["n_train"], record["n_test"]) == ("fashion-mnist-small", 200, 2_000)
    assert record["accuracy"] > 0.2  # ten balanced classes: chance is 0.1


def test_an_unreadable_embedded_file_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "fashion-mnist-small.npz"
    with zipfile.ZipFile(broken, "w") as archive:
        archive.writestr("nothing.txt", "not the subset")
    monkeypatch.setattr(builders, "FASHION_MNIST_SMALL_FILE", broken)
    assert main(["data", "prepare", "fashion-mnist-small", "--force"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"mmssl: error: {broken} is unreadable") and "--write-embedded" in err
    monkeypatch.setattr(builders, "FASHION_MNIST_SMALL_FILE", tmp_path / "gone.npz")
    assert main(["data", "prepare", "fashion-mnist-small", "--force"]) == 2
    assert "gone.npz is missing from this installation" in capsys.readouterr().err
