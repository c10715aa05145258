"""SimSiam: the loss against lightly, stop-gradient, the objective's wiring, learning."""

from __future__ import annotations

import pytest
import torch
from lightly.loss import NegativeCosineSimilarity

from mmssl.objectives.simsiam import simsiam_loss
from tests.mmssl.objectives.loss_checks import assert_decreases_on_a_toy_embedding, assert_same_loss_and_grads, pair
from tests.mmssl.objectives.view_fixtures import (
    check_builds_from_its_config_defaults,
    check_invalid_config_value_is_named,
    check_learns_on_an_mlp,
    check_output,
    make_objective,
    projections,
    smooth_images,
    views_batch,
    vit,
)

# ---------------------------------------------------------------- the loss


def test_simsiam_matches_lightly_negative_cosine() -> None:
    p, z = pair()
    assert_same_loss_and_grads(simsiam_loss(p, z), NegativeCosineSimilarity()(p, z.detach()), p)


def test_simsiam_stops_the_gradient_of_the_target() -> None:
    p, z = pair()
    grad_p, grad_z = torch.autograd.grad(simsiam_loss(p, z), (p, z), allow_unused=True)
    assert grad_z is None and grad_p.abs().sum() > 0
    assert simsiam_loss(z.detach(), z) == pytest.approx(-1.0, abs=1e-6)


def test_simsiam_decreases_on_a_toy_embedding() -> None:
    assert_decreases_on_a_toy_embedding(
        lambda z1, z2, predictor, x1, x2: (simsiam_loss(predictor(z1), z2) + simsiam_loss(predictor(z2), z1)) / 2
    )


# ---------------------------------------------------------------- the objective


def test_loss_equals_the_symmetric_loss_of_the_predictions() -> None:
    enc = vit()
    objective = make_objective("simsiam", enc)
    batch = views_batch(smooth_images())
    out = objective(enc, batch)
    z1, z2 = projections(objective, enc, batch.views)
    p1, p2 = objective.predictor(z1), objective.predictor(z2)
    torch.testing.assert_close(out.loss, (simsiam_loss(p1, z2) + simsiam_loss(p2, z1)) / 2)
    check_output(out)


def test_loss_decreases() -> None:
    check_learns_on_an_mlp("simsiam")


def test_builds_from_its_config_defaults() -> None:
    check_builds_from_its_config_defaults("simsiam")


def test_invalid_config_values_name_the_key() -> None:
    check_invalid_config_value_is_named("simsiam", "predictor_hidden_dim", 0)
