"""Augmented views: every joint-embedding objective names the recipe setting when views are missing or too many,
and the multi-crop pairing and diagnostics that the objectives share."""

from __future__ import annotations

import pytest
import torch

from domains.image.units import image_batch
from mmssl.objectives.views import contrastive_accuracy, embedding_std, global_pairs
from tests.mmssl.objectives.view_fixtures import (
    CONFIGS,
    PATCH,
    TWO_VIEWS_ONLY,
    make_objective,
    smooth_images,
    views_batch,
    vit,
)


@pytest.mark.parametrize("name", TWO_VIEWS_ONLY)
def test_two_view_methods_reject_local_views(name: str) -> None:
    enc = vit()
    with pytest.raises(ValueError, match=f"{name} uses exactly two views, got 3"):
        make_objective(name, enc)(enc, views_batch(smooth_images(), num_views=3))


@pytest.mark.parametrize("name", list(CONFIGS))
def test_missing_views_name_the_recipe_setting(name: str) -> None:
    enc = vit()
    objective = make_objective(name, enc)
    images = smooth_images()
    for batch in (image_batch(images, PATCH), image_batch(images, PATCH).replace(views=(image_batch(images, PATCH),))):
        with pytest.raises(ValueError, match=rf"{name} needs 2 augmented views in Batch.views.*data.views"):
            objective(enc, batch)


def test_global_pairs_pair_each_local_view_with_both_global_views() -> None:
    assert global_pairs(2) == [(0, 1)]
    assert global_pairs(4) == [(0, 1), (0, 2), (1, 2), (0, 3), (1, 3)]


def test_diagnostics_at_a_perfect_match_and_at_collapse() -> None:
    z = torch.eye(4)
    assert float(contrastive_accuracy(z, z)) == 1.0
    assert float(contrastive_accuracy(z, z, negatives=-z)) == 1.0  # its own key beats every queued one
    assert float(contrastive_accuracy(z, z.roll(1, 0))) == 0.0
    assert float(embedding_std(torch.ones(8, 4))) == 0.0  # every sample the same vector: collapsed
    assert float(embedding_std(torch.randn(512, 64, generator=torch.Generator().manual_seed(0)))) == pytest.approx(
        64**-0.5, rel=0.1
    )  # well spread: about 1 / sqrt(D)
