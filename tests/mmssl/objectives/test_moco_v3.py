"""MoCo v3: the loss against the official formula, two processes, the momentum teacher's schedule, learning."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mmssl.objectives.moco_v3 import moco_v3_loss
from tests.mmssl.objectives.loss_checks import (
    B,
    assert_decreases_on_a_toy_embedding,
    assert_same_loss_and_grads,
    one_vs_two_processes,
    pair,
    run_in_two_processes,
)
from tests.mmssl.objectives.view_fixtures import (
    check_after_optimizer_step_moves_the_teacher,
    check_builds_from_its_config_defaults,
    check_learns_on_an_mlp,
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


def test_moco_v3_loss_matches_the_official_formula() -> None:
    q, k = pair()
    tau = 0.2
    qn, kn = F.normalize(q, dim=1), F.normalize(k.detach(), dim=1)
    ce = torch.stack([torch.logsumexp(qn[i] @ kn.T / tau, 0) - qn[i] @ kn[i] / tau for i in range(B)]).mean()
    assert_same_loss_and_grads(moco_v3_loss(q, k, tau), 2 * tau * ce, q)


def test_moco_v3_loss_sends_no_gradient_to_keys() -> None:
    q, k = pair()
    grad_q, grad_k = torch.autograd.grad(moco_v3_loss(q, k), (q, k), allow_unused=True)
    assert grad_k is None and grad_q.abs().sum() > 0


def test_mismatched_shapes_are_named() -> None:
    with pytest.raises(ValueError, match="q and k"):
        moco_v3_loss(torch.randn(4, 3), torch.randn(3, 3))


def test_moco_v3_loss_decreases_on_a_toy_embedding() -> None:
    assert_decreases_on_a_toy_embedding(
        lambda z1, z2, predictor, x1, x2: moco_v3_loss(predictor(z1), z2) + moco_v3_loss(predictor(z2), z1)
    )


def _two_processes(rank: int) -> None:
    one_vs_two_processes("moco_v3", lambda a, b, rows: moco_v3_loss(a, b, 0.2, gather=rows is not None), rank)


@pytest.mark.timeout(120)
def test_two_processes_match_one_process_on_the_global_batch(tmp_path: Path) -> None:
    run_in_two_processes(_two_processes, tmp_path)


# ---------------------------------------------------------------- the objective


def test_loss_equals_the_symmetric_loss_of_the_predictions_and_the_teacher_keys() -> None:
    enc = vit()
    objective = make_objective("moco_v3", enc)
    batch = views_batch(smooth_images())
    out = objective(enc, batch)
    t = objective.config.temperature
    p1, p2 = (objective.predictor(z) for z in projections(objective, enc, batch.views))
    k1, k2 = (teacher_target(objective, v) for v in batch.views)
    torch.testing.assert_close(out.loss, moco_v3_loss(p1, k2, t) + moco_v3_loss(p2, k1, t))
    check_output(out)


def test_teacher_takes_no_gradient_and_forward_leaves_it_unchanged() -> None:
    check_teacher_takes_no_gradient_and_forward_leaves_it_unchanged("moco_v3")


@pytest.mark.parametrize("step", [1, 6])
def test_after_optimizer_step_moves_the_teacher_by_the_scheduled_momentum(step: int) -> None:
    check_after_optimizer_step_moves_the_teacher("moco_v3", step, scheduled_cosine_momentum)


def test_teacher_is_saved_and_resumes_exactly() -> None:
    check_teacher_is_saved_and_resumes_exactly("moco_v3")


def test_loss_decreases() -> None:
    check_learns_on_an_mlp("moco_v3")


def test_builds_from_its_config_defaults() -> None:
    check_builds_from_its_config_defaults("moco_v3")
