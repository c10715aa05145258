"""S4L-Rotation: the loss written out, the supervised-only arm, learning, clear errors, load-time checks, exact resume."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import Tensor

from domains.image.encoders import ImageEncoderConfig, build_image_encoder
from domains.image.pretext import rotate_all
from domains.image.units import image_batch
from mmssl.checkpoint import STATE_JSON, latest_checkpoint
from mmssl.config import ConfigError
from mmssl.datasets import prepare
from mmssl.encoder import Encoder
from mmssl.metrics import read_metrics
from mmssl.objectives.base import SSLModel
from mmssl.objectives.s4l import S4L, S4LConfig, s4l_loss
from mmssl.pretrain import pretrain
from mmssl.recipe import load_recipe
from mmssl.registry import DOMAINS
from mmssl.types import Batch
from tests.fitting import first_last, fit
from tests.mmssl.objectives.masking_fixtures import PATCH, check_invalid_config_value_names_the_key, vit

UNLABELLED, LABELLED, K = 4, 3, 5


def resnet() -> Encoder:
    """A ResNet: batch norm makes the encoding of a row depend on the other rows of its batch."""
    torch.manual_seed(0)
    cfg = ImageEncoderConfig(arch="resnet", resnet_width=4, patch_size=PATCH)
    return build_image_encoder(cfg, (16, 16), channels=1)


def s4l_images(seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """``(unlabelled [4, 1, 16, 16], labelled [3, 1, 16, 16], classes [3])``."""
    g = torch.Generator().manual_seed(seed)
    pixels = torch.rand(UNLABELLED + LABELLED, 1, 16, 16, generator=g)
    return pixels[:UNLABELLED], pixels[UNLABELLED:], torch.tensor([0, 3, 4])


def s4l_batch(unlabelled: Tensor, labelled: Tensor, classes: Tensor) -> Batch:
    """What the image domain's S4L transform gives: every image in four rotations, classes at the upright labelled."""
    rotated, k = rotate_all(torch.cat([unlabelled, labelled]))
    supervised = torch.full((len(rotated),), -100)
    supervised[len(unlabelled) : len(unlabelled) + len(labelled)] = classes
    return image_batch(rotated, PATCH, pretext_labels=k, supervised_labels=supervised)


def cross_entropy_by_hand(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean over rows of ``log(sum_j exp(z_j)) - z_y``."""
    rows = [math.log(sum(math.exp(v) for v in z.tolist())) - z[int(y)].item() for z, y in zip(logits, targets)]
    return torch.tensor(sum(rows) / len(rows))


def test_s4l_loss_is_supervised_plus_weighted_rotation_cross_entropy() -> None:
    class_logits = torch.tensor([[2.0, -1.0, 0.5], [0.0, 1.0, 3.0]])
    classes = torch.tensor([0, 1])
    rotation_logits = torch.tensor([[1.0, 0.0, -1.0, 2.0], [0.5, 0.5, 0.0, -2.0], [3.0, 1.0, 1.0, 0.0]])
    rotations = torch.tensor([3, 0, 2])
    loss, supervised, rotation = s4l_loss(class_logits, classes, rotation_logits, rotations, 0.7)
    expected_sup, expected_rot = (
        cross_entropy_by_hand(class_logits, classes),
        cross_entropy_by_hand(rotation_logits, rotations),
    )
    torch.testing.assert_close(supervised, expected_sup)
    torch.testing.assert_close(rotation, expected_rot)
    torch.testing.assert_close(loss, expected_sup + 0.7 * expected_rot)
    loss, supervised, rotation = s4l_loss(class_logits, classes, None, None, 0.0)
    assert rotation is None and torch.equal(loss, supervised)


def test_objective_classifies_the_upright_labelled_rows_and_rotations_of_every_row() -> None:
    enc = vit()
    objective = S4L(S4LConfig(num_labels=K, rotation_weight=0.5), enc)
    batch = s4l_batch(*s4l_images())
    out = objective(enc, batch)
    pooled = enc.encode(batch).pooled()  # [4 * 7, D]
    upright_labelled = pooled[UNLABELLED : UNLABELLED + LABELLED]
    sup = F.cross_entropy(objective.classifier(upright_labelled), torch.tensor([0, 3, 4]))
    rot = F.cross_entropy(objective.rotation_head(pooled), torch.arange(4).repeat_interleave(UNLABELLED + LABELLED))
    torch.testing.assert_close(out.loss, sup + 0.5 * rot)
    torch.testing.assert_close(out.terms["supervised"], sup)
    torch.testing.assert_close(out.terms["rotation"], rot)


def test_rotation_weight_0_is_the_network_trained_on_the_labelled_images_alone() -> None:
    """w = 0: loss and gradients are those of the classifier on the upright labelled images encoded on their own
    (batch norm never sees an unlabelled or rotated image), whatever the unlabelled images are."""
    unlabelled, labelled, classes = s4l_images()
    enc = resnet()
    objective = S4L(S4LConfig(num_labels=K, rotation_weight=0.0), enc)
    params = [*enc.parameters(), *objective.classifier.parameters()]
    out = objective(enc, s4l_batch(unlabelled, labelled, classes))
    grads = torch.autograd.grad(out.loss, params)
    alone = F.cross_entropy(objective.classifier(enc.encode(image_batch(labelled, PATCH)).pooled()), classes)
    torch.testing.assert_close(out.loss, alone)
    for ours, ref in zip(grads, torch.autograd.grad(alone, params)):
        torch.testing.assert_close(ours, ref)
    other = objective(enc, s4l_batch(torch.rand_like(unlabelled), labelled, classes))
    torch.testing.assert_close(other.loss, out.loss)
    assert "rotation" not in out.terms
    with_rotation = S4L(S4LConfig(num_labels=K, rotation_weight=1.0), enc)
    with_rotation.classifier.load_state_dict(objective.classifier.state_dict())
    assert not torch.allclose(with_rotation(enc, s4l_batch(unlabelled, labelled, classes)).terms["supervised"], alone)


def test_loss_decreases() -> None:
    enc = resnet()  # a 2-layer ViT on 7 noise images is unstable at this learning rate; the ResNet is the recipe's
    model = SSLModel(enc, S4L(S4LConfig(num_labels=K), enc))
    losses = fit(model, s4l_batch(*s4l_images()), 30, lr=2e-3, optimizer=torch.optim.Adam)
    first, last = first_last(losses)
    assert last < 0.9 * first, (first, last)


def test_errors_are_clear() -> None:
    enc = vit()
    objective = S4L(S4LConfig(num_labels=K), enc)
    unlabelled, labelled, classes = s4l_images()
    with pytest.raises(ValueError, match=r"needs batch.extras\['pretext_labels'\] and \['supervised_labels'\]"):
        objective(enc, image_batch(unlabelled, PATCH))
    batch = s4l_batch(unlabelled, labelled, classes)
    no_labels = batch.replace(extras={**batch.extras, "supervised_labels": torch.full((28,), -100)})
    with pytest.raises(ValueError, match="marks no labelled row"):
        objective(enc, no_labels)
    with pytest.raises(ValueError, match=r"objective.num_labels=5"):
        objective(enc, s4l_batch(unlabelled, labelled, torch.tensor([0, 1, 5])))


@pytest.mark.parametrize(
    ("key", "value"), [("rotation_weight", -0.5), ("rotation_weight", float("nan")), ("num_labels", 1)]
)
def test_invalid_config_values_name_the_key(key: str, value: float) -> None:
    check_invalid_config_value_names_the_key("s4l", key, value)


# ---------------------------------------------------------------------------- the recipe, checked at load time
@pytest.fixture
def small_prepared() -> list[str]:
    """fashion-mnist-small prepared in the test cache (from the shipped file, no download) and the overrides that
    pretrain on its train split."""
    prepare("fashion-mnist-small")
    return ["data.name=fashion-mnist-small", "data.labels_per_class=2", "data.labelled_batch_size=4"]


def test_recipe_derives_the_classes_and_refuses_more_labels_per_class_than_a_class_holds(small_prepared) -> None:
    assert load_recipe("s4l", small_prepared).objective.num_labels == 10
    with pytest.raises(
        ConfigError, match=r"data.labels_per_class=1001 is more than class \d of .* holds \(1000 images\)"
    ):
        load_recipe("s4l", [*small_prepared, "data.labels_per_class=1001"])
    with pytest.raises(ConfigError, match="data.split=test.*draw them from data.split=train"):
        load_recipe("s4l", [*small_prepared, "data.split=test"])


def test_recipe_refuses_images_without_labels(tiny_images: Path, tmp_path: Path) -> None:
    numpy = ["data.source=numpy", "data.labelled_batch_size=4"]
    with pytest.raises(ConfigError, match=r"data.labels_per_class=60 draws labelled images.*has no labels \(a .npy"):
        load_recipe("s4l", [*numpy, f"data.path={tiny_images}"])
    npz = tmp_path / "images.npz"
    np.savez(npz, images=np.zeros((4, 28, 28), dtype=np.uint8))
    with pytest.raises(ConfigError, match="the .npz has no 'labels' array"):
        load_recipe("s4l", [*numpy, f"data.path={npz}"])
    with pytest.raises(ConfigError, match="data.source=hub loads the images only"):
        load_recipe("s4l", ["data.source=hub", "data.name=some/dataset"])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["objective.rotation_weight=-1"], "objective.rotation_weight must be >= 0"),
        (["data.views=fashion-mnist"], "data.labels_per_class=60 adds labelled images to rotation batches"),
        (["data.labels_per_class=null", "data.labelled_batch_size=null"], "objective.name=s4l .* set data.labels_per"),
    ],
)
def test_recipe_refuses_settings_that_do_not_fit(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_recipe("s4l", overrides)


def test_a_labelled_subset_for_an_objective_that_reads_none_is_refused() -> None:
    with pytest.raises(ConfigError, match="data.labels_per_class=2 adds labelled images, and objective.name=pretext"):
        load_recipe("rotation", ["data.labels_per_class=2"])


# ---------------------------------------------------------------------------- exact resume through mmssl pretrain
@pytest.fixture(scope="module")
def s4l_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny 4-step run, and the same run stopped at step 2 then resumed to 4 (the labelled subset of 20 images
    is 5 minibatches of 4: the resumed steps draw from the middle of an epoch)."""
    root = tmp_path_factory.mktemp("s4l")
    overrides = [*DOMAINS.get("image").smoke_overrides(load_recipe("s4l").data), "train.checkpoint_every=2"]
    full = pretrain("s4l", [*overrides, "train.max_steps=4"], root / "full")
    part = pretrain("s4l", [*overrides, "train.max_steps=2"], root / "part")
    return full, pretrain("s4l", [*overrides, "train.max_steps=4"], part, resume=True)


def test_a_resumed_run_continues_exactly_with_the_labelled_stream_where_it_stopped(s4l_runs) -> None:
    full, resumed = s4l_runs
    losses = lambda run: [r["loss"] for r in read_metrics(run) if "loss" in r]  # noqa: E731
    assert len(losses(full)) == 4 and losses(resumed) == pytest.approx(losses(full), rel=1e-5)
    states = [json.loads((latest_checkpoint(run) / STATE_JSON).read_text())["labelled"] for run in s4l_runs]
    assert states[0] == states[1] == {"epoch": 0, "cursor": 16, "size": 20}  # 4 steps x 4 of the 20 labelled


def test_the_classifier_ships_with_the_export_and_loads_without_mmssl(s4l_runs) -> None:
    full, _ = s4l_runs
    export = full / "export"
    head = load_file(str(export / "classifier_head.safetensors"))
    config = json.loads((export / "classifier_head.json").read_text())
    weights = load_file(str(latest_checkpoint(full) / "model.safetensors"))
    assert torch.equal(head["weight"], weights["objective.classifier.weight"])
    assert torch.equal(head["bias"], weights["objective.classifier.bias"])
    assert config["num_labels"] == 10 and config["in_features"] == head["weight"].shape[1]
