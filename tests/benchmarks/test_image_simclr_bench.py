"""Smoke test of benchmarks/image_simclr.py: it runs end to end and reports well-formed figures.

Timings and accuracies are never asserted (the machine is shared and noisy; a 3-second budget
trains nothing); docs/benchmarks.md holds the numbers.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from bench_loader import load_benchmark

pytest.importorskip("lightly")
pytest.importorskip("torchvision")

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")  # Debian dataset-fashion-mnist; both sides read it


@pytest.fixture(scope="module")
def image_simclr():
    if not (FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip("needs Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist)")
    yield from load_benchmark("image_simclr")


def test_quick_run_ends_with_one_json_line(image_simclr, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    returned = image_simclr.main(["--quick", "--profile", "1", "--work-dir", str(tmp_path)])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    record = json.loads(last)
    assert record == returned
    assert record["benchmark"] == "image_simclr"
    for key in ("mmssl_images_per_s", "lightly_images_per_s", "ratio"):
        assert math.isfinite(record[key]) and record[key] > 0, key
    # the ratio of the medians, within the rounding of the figures (0.1 images/s) and of the ratio (0.001): a
    # busy machine can bring the tiny model down to a few images/s, where that rounding exceeds 1%
    ours, theirs = record["mmssl_images_per_s"], record["lightly_images_per_s"]
    assert (ours - 0.05) / (theirs + 0.05) - 5e-4 <= record["ratio"] <= (ours + 0.05) / (theirs - 0.05) + 5e-4
    assert (record["repeats"], record["steps"], record["skip"], record["batch_size"]) == (1, 2, 1, 32)
    assert record["model"] == {"resnet_depth": 18, "resnet_width": 4, "projector": [32, 16]}
    assert record["precision"] in ("bf16", "no") and record["cores"] >= 1 and record["torch_threads"] >= 1
    for side in ("mmssl", "lightly"):
        assert len(record[f"{side}_runs"]) == len(record[f"{side}_cpu"]) == len(record[f"{side}_other"]) == 1
        assert record["budget_steps"][side] >= 1
    assert set(record["knn"]) == {"mmssl", "lightly", "random_init"}
    assert all(0.0 <= acc <= 1.0 for acc in record["knn"].values())
    assert (record["knn_train"], record["knn_test"]) == (200, 200)
    assert all(ms > 0 for ms in record["profile_ms"].values())


def test_lightly_transform_mirrors_the_recipe_view(image_simclr) -> None:
    """lightly's SimCLRTransform gets the recipe's view settings: crops, flip, jitter, and nothing else."""
    from domains.image.views import ViewConfig, fashion_mnist_views

    view = ViewConfig(**{**fashion_mnist_views()[0].__dict__, "mean": (0.3,), "std": (0.35,)})
    first, second = image_simclr.lightly_transform(view).transforms
    assert first is second  # both views from one distribution, as the recipe's pair
    ops = first.transform.transforms
    text = repr(first.transform)
    assert "RandomResizedCrop(size=(28, 28), scale=(0.2, 1.0)" in text and "RandomHorizontalFlip(p=0.5)" in text
    assert "ColorJitter(brightness=(0.6, 1.4), contrast=(0.6, 1.4))" in text and "RandomGrayscale(p=0.0)" in text
    assert "Normalize(mean=[0.3], std=[0.35]" in text
    jitter = next(op for op in ops if type(op).__name__ == "RandomApply")
    blur = next(op for op in ops if type(op).__name__ == "GaussianBlur")
    assert jitter.p == pytest.approx(0.8) and blur.prob == 0.0
    with pytest.raises(ValueError, match="cannot express"):
        image_simclr.lightly_transform(ViewConfig(size=28, mean=(0.3,), std=(0.35,), solarize_p=0.2))
