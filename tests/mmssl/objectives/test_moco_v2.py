"""MoCo v2: InfoNCE against lightly's memory bank and the formula, the momentum teacher, the key queue, learning."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from lightly.loss import NTXentLoss

from mmssl.objectives.moco_v2 import info_nce
from tests.mmssl.objectives.loss_checks import (
    B,
    D,
    assert_decreases_on_a_toy_embedding,
    assert_same_loss_and_grads,
    grads,
    pair,
    toy_queue,
)
from tests.mmssl.objectives.view_fixtures import (
    check_after_optimizer_step_moves_the_teacher,
    check_builds_from_its_config_defaults,
    check_invalid_config_value_is_named,
    check_learns_on_an_mlp,
    check_output,
    check_teacher_is_saved_and_resumes_exactly,
    check_teacher_takes_no_gradient_and_forward_leaves_it_unchanged,
    make_objective,
    projections,
    smooth_images,
    teacher_target,
    views_batch,
    vit,
)

# ---------------------------------------------------------------- the loss


def test_info_nce_with_queue_matches_lightly_memory_bank() -> None:
    q, k = pair()
    queue = F.normalize(torch.randn(20, D, dtype=torch.float64), dim=1)
    ref_fn = NTXentLoss(0.2, memory_bank_size=(20, D)).double()
    ref_fn.memory_bank.bank = queue.clone()
    ref = ref_fn(q, k.detach())  # lightly's positive is q.k, its negatives the bank, like MoCo
    assert_same_loss_and_grads(info_nce(q, k, queue, 0.2), ref, q)


def test_info_nce_without_queue_uses_the_other_keys_as_negatives() -> None:
    q, k = pair()
    qn, kn = F.normalize(q, dim=1), F.normalize(k.detach(), dim=1)
    ref = torch.stack([-torch.log_softmax(qn[i] @ kn.T / 0.2, 0)[i] for i in range(B)]).mean()
    assert_same_loss_and_grads(info_nce(q, k), ref, q)
    assert info_nce(q, k).grad_fn is not None and grads(info_nce(q, k), q)[0].abs().sum() > 0


def test_info_nce_sends_no_gradient_to_keys() -> None:
    q, k = pair()
    for loss in (info_nce(q, k), info_nce(q, k, torch.randn(5, D, dtype=torch.float64))):
        grad_q, grad_k = torch.autograd.grad(loss, (q, k), allow_unused=True)
        assert grad_k is None and grad_q.abs().sum() > 0


def test_a_queue_of_another_width_is_named() -> None:
    with pytest.raises(ValueError, match="queue"):
        info_nce(torch.randn(4, 3), torch.randn(4, 3), torch.randn(5, 2))


def test_info_nce_decreases_on_a_toy_embedding() -> None:
    assert_decreases_on_a_toy_embedding(
        lambda z1, z2, predictor, x1, x2: info_nce(predictor(z1), z2, toy_queue(z1.shape[1]))
    )


# ---------------------------------------------------------------- the objective


def test_loss_equals_symmetric_info_nce_against_the_teacher_keys_and_the_queue() -> None:
    enc = vit()
    objective = make_objective("moco_v2", enc)
    batch = views_batch(smooth_images())
    queue = objective.queue.queue.clone()
    out = objective(enc, batch)
    t = objective.config.temperature
    z1, z2 = projections(objective, enc, batch.views)
    k1, k2 = (teacher_target(objective, v) for v in batch.views)
    torch.testing.assert_close(out.loss, (info_nce(z1, k2, queue, t) + info_nce(z2, k1, queue, t)) / 2)
    check_output(out)


def test_teacher_takes_no_gradient_and_forward_leaves_it_unchanged() -> None:
    check_teacher_takes_no_gradient_and_forward_leaves_it_unchanged("moco_v2")


@pytest.mark.parametrize("step", [1, 6])
def test_after_optimizer_step_moves_the_teacher_by_the_constant_momentum(step: int) -> None:
    check_after_optimizer_step_moves_the_teacher("moco_v2", step, lambda config, step: config.momentum)


def test_teacher_and_queue_are_saved_and_resume_exactly() -> None:
    state = check_teacher_is_saved_and_resumes_exactly("moco_v2")
    assert {"objective.queue.queue", "objective.queue.ptr"} <= set(state)
    assert int(state["objective.queue.ptr"]) == (2 * 2 * B) % 20  # two steps of 2B keys in a queue of 20


def test_moco_v2_enqueues_both_views_keys_after_the_loss_in_training_only() -> None:
    enc = vit()
    objective = make_objective("moco_v2", enc)
    batch = views_batch(smooth_images())
    v1, v2 = batch.views
    objective(enc, batch)
    keys = F.normalize(torch.cat([teacher_target(objective, v1), teacher_target(objective, v2)]), dim=1)
    torch.testing.assert_close(objective.queue.queue[: 2 * B], keys)
    assert int(objective.queue.ptr) == 2 * B
    queue = objective.queue.queue.clone()
    objective.eval()
    objective(enc, batch)
    assert torch.equal(objective.queue.queue, queue) and int(objective.queue.ptr) == 2 * B


def test_loss_decreases() -> None:
    check_learns_on_an_mlp("moco_v2")


def test_builds_from_its_config_defaults() -> None:
    check_builds_from_its_config_defaults("moco_v2")


@pytest.mark.parametrize(("key", "value"), [("momentum", 1.5), ("queue_size", 0)])
def test_invalid_config_values_name_the_key(key: str, value: float) -> None:
    check_invalid_config_value_is_named("moco_v2", key, value)
