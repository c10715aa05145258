"""BYOL: the loss against lightly and the paper, stop-gradient, multi-crop, the EMA target's schedule, learning."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from lightly.loss import NegativeCosineSimilarity

from mmssl.objectives.byol import byol_loss
from tests.mmssl.objectives.loss_checks import assert_decreases_on_a_toy_embedding, assert_same_loss_and_grads, pair
from tests.mmssl.objectives.view_fixtures import (
    check_after_optimizer_step_moves_the_teacher,
    check_builds_from_its_config_defaults,
    check_invalid_config_value_is_named,
    check_learns_on_an_mlp,
    check_learns_with_a_vit,
    check_output,
    check_teacher_is_saved_and_resumes_exactly,
    check_teacher_takes_no_gradient_and_forward_leaves_it_unchanged,
    make_objective,
    projections,
    scheduled_cosine_momentum,
    smooth_images,
    teacher_target,
    views_batch,
    vit,
)

# ---------------------------------------------------------------- the loss


def test_byol_matches_lightly_negative_cosine() -> None:
    p, z = pair()
    assert_same_loss_and_grads(byol_loss(p, z), 2 + 2 * NegativeCosineSimilarity()(p, z.detach()), p)


def test_byol_is_the_squared_distance_of_unit_vectors() -> None:
    p, z = pair()
    ref = (F.normalize(p, dim=1) - F.normalize(z, dim=1)).pow(2).sum(1).mean()
    torch.testing.assert_close(byol_loss(p, z), ref)


def test_byol_stops_the_gradient_of_the_target() -> None:
    p, z = pair()
    grad_p, grad_z = torch.autograd.grad(byol_loss(p, z), (p, z), allow_unused=True)
    assert grad_z is None and grad_p.abs().sum() > 0
    assert byol_loss(z.detach(), z) == pytest.approx(0.0, abs=1e-6)


def test_inputs_that_are_not_matrices_are_named() -> None:
    with pytest.raises(ValueError, match="p and z"):
        byol_loss(torch.randn(4), torch.randn(4))


def test_byol_decreases_on_a_toy_embedding() -> None:
    assert_decreases_on_a_toy_embedding(
        lambda z1, z2, predictor, x1, x2: byol_loss(predictor(z1), z2) + byol_loss(predictor(z2), z1)
    )


# ---------------------------------------------------------------- the objective


def test_loss_equals_the_symmetric_loss_of_the_predictions_and_the_teacher_targets() -> None:
    enc = vit()
    objective = make_objective("byol", enc)
    batch = views_batch(smooth_images())
    out = objective(enc, batch)
    p1, p2 = (objective.predictor(z) for z in projections(objective, enc, batch.views))
    k1, k2 = (teacher_target(objective, v) for v in batch.views)
    torch.testing.assert_close(out.loss, byol_loss(p1, k2) + byol_loss(p2, k1))
    check_output(out)


def test_byol_multicrop_regresses_global_targets_from_every_view() -> None:
    enc = vit()
    objective = make_objective("byol", enc)
    batch = views_batch(smooth_images(), num_views=3)
    out = objective(enc, batch)
    views = batch.views
    p = [objective.predictor(z) for z in projections(objective, enc, views)]
    k = [teacher_target(objective, v) for v in views[:2]]  # the teacher sees the global views only
    pairs_sum = byol_loss(p[0], k[1]) + byol_loss(p[1], k[0]) + byol_loss(p[2], k[0]) + byol_loss(p[2], k[1])
    torch.testing.assert_close(out.loss, pairs_sum / 2)


def test_teacher_takes_no_gradient_and_forward_leaves_it_unchanged() -> None:
    check_teacher_takes_no_gradient_and_forward_leaves_it_unchanged("byol")


@pytest.mark.parametrize("step", [1, 6])
def test_after_optimizer_step_moves_the_teacher_by_the_scheduled_momentum(step: int) -> None:
    check_after_optimizer_step_moves_the_teacher("byol", step, scheduled_cosine_momentum)


def test_teacher_is_saved_and_resumes_exactly() -> None:
    check_teacher_is_saved_and_resumes_exactly("byol")


def test_loss_decreases() -> None:
    check_learns_on_an_mlp("byol")


def test_loss_decreases_with_a_vit() -> None:
    check_learns_with_a_vit("byol")


def test_builds_from_its_config_defaults() -> None:
    check_builds_from_its_config_defaults("byol")


def test_invalid_config_values_name_the_key() -> None:
    check_invalid_config_value_is_named("byol", "base_momentum", -0.1)
