"""The image domain's raw-feature baseline: pixels in [0, 1], behind :meth:`ImageDomain.raw_features` and
``mmssl evaluate --init raw``, equal to the raw-pixel probes ``experiments/image_recipes.py`` records."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from domains.image.baselines import pixel_features
from domains.image.data import ImageArrays
from domains.image.domain import make_processor
from mmssl.cli import main
from mmssl.probes import fit_linear_probe, knn_accuracy
from mmssl.registry import DOMAINS
from mmssl.tasks import ProbeConfig, TaskConfig
from mmssl.types import Extra


@pytest.fixture(scope="module")
def bars(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Noisy 12x12 images of a horizontal (label 0) or vertical (label 1) bar: 40 train, 20 test, on disk."""
    rng = np.random.default_rng(0)

    def split(n: int) -> datasets.Dataset:
        images = []
        for i in range(n):
            pixels = rng.integers(0, 60, (12, 12), dtype=np.uint8)
            at = rng.integers(2, 9)
            if i % 2:
                pixels[2:10, at : at + 2] = 230
            else:
                pixels[at : at + 2, 2:10] = 230
            images.append(Image.fromarray(pixels))
        features = datasets.Features(
            {"image": datasets.Image(), "label": datasets.ClassLabel(names=["horizontal", "vertical"])}
        )
        return datasets.Dataset.from_dict({"image": images, "label": [i % 2 for i in range(n)]}, features=features)

    path = tmp_path_factory.mktemp("bars") / "bars"
    datasets.DatasetDict({"train": split(40), "test": split(20)}).save_to_disk(str(path))
    return path


def test_pixel_features_are_the_flattened_pixels_in_0_1() -> None:
    images = torch.arange(2 * 3 * 2 * 2, dtype=torch.uint8).reshape(2, 3, 2, 2) * 10
    arrays = ImageArrays(images=images, labels=torch.tensor([0, 1]), source="test")
    features = pixel_features(arrays)
    assert features.shape == (2, 12) and features.dtype == torch.float32
    torch.testing.assert_close(features[1], images[1].flatten().float() / 255)  # channel-major, as the images lie
    assert float(features.max()) <= 1.0


def test_raw_features_keep_the_rows_and_labels_the_encoder_sees(bars: Path) -> None:
    task, domain = TaskConfig(name="hub", path=str(bars), max_train_samples=30), DOMAINS.get("image")
    data = domain.task_data(task)
    raw = domain.raw_features(data, task)
    assert raw.name == "pixels" and raw.train[0].shape == (30, 144) and raw.test[0].shape == (20, 144)
    collate = domain.task_collate(make_processor(data.train.arrays, patch_size=4), task)
    for rows, (_, labels) in ((data.train, raw.train), (data.test, raw.test)):
        assert torch.equal(labels, collate([rows[i] for i in range(len(rows))]).extras[Extra.LABELS])


def _result(out: str) -> dict:
    return json.loads([line for line in out.splitlines() if line.startswith("{")][-1])


def test_evaluate_init_raw_gives_the_raw_pixel_probes(
    bars: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    export = tmp_path / "export"  # init=raw reads nothing of an export but the domain it names
    export.mkdir()
    (export / "mmssl.json").write_text(json.dumps({"domain": "image"}))
    # the reference: experiments/image_recipes.py's pixel_probes(), on this task's arrays
    data = DOMAINS.get("image").task_data(TaskConfig(name="hub", path=str(bars)))
    flat = [
        (a.images.reshape(len(a.labels), -1).float() / 255.0, torch.as_tensor(a.labels))
        for a in (data.train.arrays, data.test.arrays)
    ]
    task = ["--task", "hub", "--set", f"task.path={bars}", "--init", "raw"]
    assert main(["evaluate", str(export), "--protocol", "linear", *task]) == 0
    linear = _result(capsys.readouterr().out)
    assert linear["baseline"] == "pixels" and linear["feature_dim"] == 144 and linear["n_test"] == 20
    assert linear["accuracy"] == fit_linear_probe(flat[0], flat[1], ProbeConfig())["accuracy"]
    assert main(["evaluate", str(export), "--protocol", "knn", *task]) == 0
    assert _result(capsys.readouterr().out)["accuracy"] == knn_accuracy(flat[0], flat[1], num_classes=2)
