"""Pretext classification: cross-entropy of the head on the pooled representation, clear errors, learning."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from domains.image.units import image_batch
from mmssl.objectives.pretext import Pretext, PretextConfig
from tests.mmssl.objectives.masking_fixtures import (
    PATCH,
    B,
    check_builds_from_its_config_defaults,
    check_invalid_config_value_names_the_key,
    check_learns_on_one_batch,
    images,
    rotations,
    vit,
)


def test_pretext_is_cross_entropy_of_the_head_on_the_pooled_representation() -> None:
    enc = vit()
    objective = Pretext(PretextConfig(), enc)
    rotated, labels = rotations(images())
    batch = image_batch(rotated, PATCH, pretext_labels=labels)
    out = objective(enc, batch)
    logits = objective.head(enc.encode(batch).pooled())
    torch.testing.assert_close(out.loss, F.cross_entropy(logits, labels))
    assert float(out.logs["pretext_accuracy"]) == (logits.argmax(-1) == labels).float().mean().item()
    assert len(Pretext(PretextConfig(hidden_dim=16), enc).head) == 4  # Linear-BN-ReLU, Linear


def test_pretext_errors_are_clear() -> None:
    enc = vit()
    objective = Pretext(PretextConfig(), enc)
    with pytest.raises(ValueError, match=r"needs batch.extras\['pretext_labels'\].*data.views=rotation"):
        objective(enc, image_batch(images(), PATCH))
    with pytest.raises(ValueError, match="objective.num_classes=4"):
        objective(enc, image_batch(images(), PATCH, pretext_labels=torch.full((B,), 4)))
    with pytest.raises(ValueError, match=r"int64 of shape \[6\]"):
        objective(enc, image_batch(images(), PATCH, pretext_labels=torch.zeros(B, 2, dtype=torch.long)))


def test_loss_decreases() -> None:
    check_learns_on_one_batch("pretext")


def test_builds_from_its_config_defaults() -> None:
    check_builds_from_its_config_defaults("pretext")


@pytest.mark.parametrize(("key", "value"), [("num_classes", 1), ("hidden_dim", -1)])
def test_invalid_config_values_name_the_key(key: str, value: float) -> None:
    check_invalid_config_value_names_the_key("pretext", key, value)
