"""Image downstream: `mmssl finetune` / `mmssl evaluate` on an HF image dataset saved to disk, for a ViT
(AutoModelForImageClassification) and a ResNet (Hub-mixin backbone + linear head); exports reload
without mmssl and predict what the fine-tuned model predicted."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoModelForImageClassification

from domains.image.resnet import SmallResNet
from mmssl.cli import main
from mmssl.metrics import read_metrics
from mmssl.pretrain import pretrain
from tests.conftest import TINY_IMAGE


@pytest.fixture(scope="module")
def bars_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Noisy 28x28 images of a horizontal (label 0) or vertical (label 1) bar, as a DatasetDict on disk."""
    rng = np.random.default_rng(0)

    def split(n: int) -> datasets.Dataset:
        images, labels = [], []
        for i in range(n):
            pixels = rng.integers(0, 60, (28, 28), dtype=np.uint8)
            at = rng.integers(4, 22)
            if i % 2 == 0:
                pixels[at : at + 3, 3:25] = 230
            else:
                pixels[3:25, at : at + 3] = 230
            images.append(Image.fromarray(pixels))
            labels.append(i % 2)
        features = datasets.Features(
            {"image": datasets.Image(), "label": datasets.ClassLabel(names=["horizontal", "vertical"])}
        )
        return datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)

    path = tmp_path_factory.mktemp("bars") / "bars"
    datasets.DatasetDict({"train": split(96), "test": split(80)}).save_to_disk(str(path))
    return path


@pytest.fixture(scope="module", params=["mae", "simclr"])
def image_run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, tiny_images: Path) -> Path:
    name = request.param
    return pretrain(
        name, [*TINY_IMAGE, f"data.path={tiny_images}", "train.max_steps=3"], tmp_path_factory.mktemp(name) / "run"
    )


def _task(path: Path) -> list[str]:
    return ["--task", "hub", "--set", f"task.path={path}"]


def test_finetune_learns_and_the_export_reloads_without_mmssl(image_run: Path, bars_dataset: Path) -> None:
    args = [
        "finetune",
        str(image_run),
        *_task(bars_dataset),
        "--set",
        "train.max_steps=120",
        "--set",
        "train.lr=2e-3",
        "--set",
        "train.batch_size=16",
        "--set",
        "train.warmup_steps=4",
        "--baseline",
    ]
    assert main(args) == 0
    records = [r for r in read_metrics(image_run) if r.get("event") == "finetune"][-2:]
    assert [r["init"] for r in records] == ["pretrained", "random"]
    assert all(r["n_train"] == 96 and r["n_test"] == 80 and r["task"] == "hub" for r in records)
    assert records[0]["accuracy"] >= 0.9, records  # bar orientation is easy for either architecture

    export = Path(records[0]["output_dir"]) / "export"
    test = datasets.load_from_disk(str(bars_dataset))["test"]
    from domains.image.domain import ImageDomain

    processor = ImageDomain().load_processor(export)  # the export carries the image processor it was tuned with
    assert processor.to_dict() == ImageDomain().load_processor(image_run).to_dict()
    pixels = processor(images=[im for im in test["image"]], return_tensors="pt")["pixel_values"]
    if (export / "classifier_head.safetensors").exists():  # ResNet: mixin backbone + a plain linear head
        backbone = SmallResNet.from_pretrained(str(export)).eval()
        head = load_file(str(export / "classifier_head.safetensors"))
        head_config = json.loads((export / "classifier_head.json").read_text())
        assert head_config["id2label"] == {"0": "horizontal", "1": "vertical"} and head_config["num_labels"] == 2
        with torch.no_grad():
            logits = backbone(pixels).mean((2, 3)) @ head["weight"].T + head["bias"]
    else:
        model = AutoModelForImageClassification.from_pretrained(str(export)).eval()
        assert model.config.id2label == {0: "horizontal", 1: "vertical"}
        with torch.no_grad():
            logits = model(pixel_values=pixels).logits
    accuracy = float((logits.argmax(-1) == torch.tensor(test["label"])).float().mean())
    assert accuracy == pytest.approx(records[0]["accuracy"], abs=1e-6)


@pytest.mark.parametrize("protocol", ["linear", "knn"])
def test_frozen_probes_on_an_image_dataset(image_run: Path, bars_dataset: Path, protocol: str) -> None:
    assert main(["evaluate", str(image_run), "--protocol", protocol, "--set", "probe.k=10", *_task(bars_dataset)]) == 0
    record = [r for r in read_metrics(image_run) if r.get("event") == "evaluate"][-1]
    assert record["protocol"] == protocol and record["n_test"] == 80 and record["n_train"] == 96
    assert record["accuracy"] >= 0.6  # above chance (0.5) even for an encoder trained 3 steps on noise


def test_a_resnet_export_carries_its_processor_and_label_names(bars_dataset: Path, tmp_path: Path) -> None:
    """A grayscale ResNet export made by hand (no pretraining): the fine-tuned export reloads with the domain's
    processor, the Hub-mixin backbone and the head's JSON, and predicts what the fine-tuned model predicted."""
    from transformers import ViTImageProcessor

    from domains.image.domain import ImageDomain
    from mmssl.finetune import load_predictions

    source = tmp_path / "resnet"
    torch.manual_seed(0)
    SmallResNet(in_channels=1, depth=18, width=4).save_pretrained(str(source))
    ViTImageProcessor(
        size={"height": 28, "width": 28}, image_mean=[0.2], image_std=[0.3], patch_size=4
    ).save_pretrained(str(source))
    (source / "mmssl.json").write_text(json.dumps({"domain": "image"}))
    assert (
        main(
            [
                "finetune",
                str(source),
                *_task(bars_dataset),
                "--set",
                "train.max_steps=4",
                "--set",
                "train.batch_size=16",
                "--output-dir",
                str(tmp_path / "ft"),
            ]
        )
        == 0
    )
    out = tmp_path / "ft" / "hub-pretrained"
    export = out / "export"
    head_config = json.loads((export / "classifier_head.json").read_text())
    assert head_config["id2label"] == {"0": "horizontal", "1": "vertical"} and head_config["in_features"] == 32
    processor = ImageDomain().load_processor(export)
    assert processor.to_dict() == ImageDomain().load_processor(source).to_dict()
    test = datasets.load_from_disk(str(bars_dataset))["test"]
    pixels = processor(images=list(test["image"]), return_tensors="pt")["pixel_values"]
    backbone = SmallResNet.from_pretrained(str(export)).eval()
    head = load_file(str(export / "classifier_head.safetensors"))
    with torch.no_grad():
        logits = backbone(pixels).mean((2, 3)) @ head["weight"].T + head["bias"]
    prediction, label = load_predictions(out)
    assert np.array_equal(logits.argmax(-1).numpy(), prediction) and label.tolist() == test["label"]
