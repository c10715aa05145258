"""SwAV: Sinkhorn-Knopp and the swapped prediction against lightly, the queue, two processes, the prototypes'
freeze and normalisation, multi-crop, resume, learning, and the prototypes a batch allows."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from lightly.loss import SwaVLoss
from lightly.loss.swav_loss import sinkhorn as lightly_sinkhorn
from torch import Tensor

from domains.image.units import image_batch
from mmssl.config import ConfigError, from_dict
from mmssl.objectives import objective_spec
from mmssl.objectives.base import SSLModel
from mmssl.objectives.swav import SwAV, SwAVConfig, check_prototypes_fit, sinkhorn, swapped_prediction_loss
from mmssl.recipe import load_recipe
from tests.fitting import first_last, fit
from tests.mmssl.objectives.loss_checks import (
    LOCAL_B,
    WORLD,
    assert_decreases_on_a_toy_embedding,
    assert_float32_under_bf16_autocast,
    assert_same_loss_and_grads,
    one_vs_two_processes,
    run_in_two_processes,
)
from tests.mmssl.objectives.view_fixtures import (
    PATCH,
    MLPEncoder,
    new_images_every_step,
    smooth_images,
    views_batch,
    vit,
)

SMALL = {"projector_hidden_dim": 64, "projector_dim": 32, "num_prototypes": 8}


def scores(seed: int, views: int = 2, b: int = 8, k: int = 5, d: int = 6) -> list[Tensor]:
    """``views`` float64 ``[b, k]`` cosine scores of unit embeddings and unit prototypes, leaves that require a
    gradient (the loss checks back-propagate twice)."""
    g = torch.Generator().manual_seed(seed)
    prototypes = F.normalize(torch.randn(k, d, generator=g, dtype=torch.float64), dim=1)
    z = [torch.randn(b, d, generator=g, dtype=torch.float64) for _ in range(views)]
    return [(F.normalize(zi, dim=1) @ prototypes.T).requires_grad_() for zi in z]


def swav(config: SwAVConfig | None = None, seed: int = 0) -> SSLModel:
    enc = vit(seed)
    torch.manual_seed(1)
    return SSLModel(enc, SwAV(config or SwAVConfig(**SMALL), enc))


# ---------------------------------------------------------------- Sinkhorn-Knopp


def test_sinkhorn_matches_lightly_and_equipartitions() -> None:
    s, _ = scores(0)
    codes = sinkhorn(s, 0.05, 3)
    torch.testing.assert_close(codes, lightly_sinkhorn(s, iterations=3, epsilon=0.05))
    torch.testing.assert_close(codes.sum(1), torch.ones(8, dtype=torch.float64))  # a distribution per sample
    many = sinkhorn(s, 0.5, 200)  # converged (faster at a softer epsilon): every prototype holds N / K samples
    torch.testing.assert_close(many.sum(0), torch.full((5,), 8 / 5, dtype=torch.float64), rtol=1e-4, atol=1e-4)


def test_sinkhorn_counts_shared_rows_once_as_rows_of_the_batch() -> None:
    s, queue = scores(1, b=6)
    together = sinkhorn(torch.cat([s, queue]), gather=False)
    torch.testing.assert_close(sinkhorn(s, shared=queue, gather=False), together[:6])
    torch.testing.assert_close(sinkhorn(s, shared=queue), lightly_sinkhorn(torch.cat([s, queue]))[:6])


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: sinkhorn(torch.randn(3)), "scores"),
        (lambda: sinkhorn(torch.randn(3, 4), shared=torch.randn(2, 5)), "shared"),
        (lambda: swapped_prediction_loss([torch.randn(3, 4)], [torch.randn(3, 4)]), "at least 2 views"),
        (lambda: swapped_prediction_loss([torch.randn(3, 4)] * 2, [torch.randn(3, 5)]), "one shape"),
        (lambda: swapped_prediction_loss([torch.randn(3, 4)] * 2, [torch.randn(3, 4)], 0.0), "temperature"),
    ],
)
def test_invalid_arguments_are_named(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()


# ---------------------------------------------------------------- the swapped prediction


@pytest.mark.parametrize("num_local", [0, 2])
def test_swav_loss_matches_lightly_with_multi_crop(num_local: int) -> None:
    s = scores(2, views=2 + num_local)
    codes = [sinkhorn(si) for si in s[:2]]
    ref = SwaVLoss(temperature=0.1)(s[:2], s[2:]).squeeze(0)
    assert_same_loss_and_grads(swapped_prediction_loss(s, codes, 0.1), ref, *s)


def test_swav_loss_with_a_queue_matches_lightly() -> None:
    s = scores(3, views=3)
    q1, q2 = scores(4, b=7)
    codes = [sinkhorn(s[0], shared=q1), sinkhorn(s[1], shared=q2)]
    ref = SwaVLoss(temperature=0.1)(s[:2], s[2:], queue_outputs=[q1, q2]).squeeze(0)
    assert_same_loss_and_grads(swapped_prediction_loss(s, codes, 0.1), ref, *s)


def test_swav_loss_is_the_paper_formula_for_two_views() -> None:
    s1, s2 = scores(5)
    q1, q2 = sinkhorn(s1), sinkhorn(s2)
    p1, p2 = F.softmax(s1 / 0.1, dim=1), F.softmax(s2 / 0.1, dim=1)
    ref = -((q2 * p1.log()).sum(1).mean() + (q1 * p2.log()).sum(1).mean()) / 2  # eq. 1, averaged over the 2 terms
    assert_same_loss_and_grads(swapped_prediction_loss([s1, s2], [q1, q2]), ref, s1, s2)


def test_swav_loss_decreases_on_a_toy_embedding() -> None:
    def loss_of(z1: Tensor, z2: Tensor, predictor: torch.nn.Module, x1: Tensor, x2: Tensor) -> Tensor:
        prototypes = F.normalize(predictor.weight, dim=1)  # 16 learnable prototypes for 64 samples
        s = [F.normalize(z, dim=1) @ prototypes.T for z in (z1, z2)]
        return swapped_prediction_loss(s, [sinkhorn(si) for si in s])

    assert_decreases_on_a_toy_embedding(loss_of)


def test_swav_loss_stays_float32_under_bf16_autocast() -> None:
    assert_float32_under_bf16_autocast(lambda s1, s2: swapped_prediction_loss([s1, s2], [sinkhorn(s1), sinkhorn(s2)]))


# ---------------------------------------------------------------- two processes


def _two_processes(rank: int) -> None:
    prototypes = F.normalize(torch.randn(4, 6, generator=torch.Generator().manual_seed(7)), dim=1)

    def loss_fn(a: Tensor, b: Tensor, rows: slice | None) -> Tensor:
        s = [F.normalize(z, dim=1) @ prototypes.T for z in (a, b)]
        return swapped_prediction_loss(s, [sinkhorn(si, gather=rows is not None) for si in s])

    one_vs_two_processes("swav", loss_fn, rank)
    # the codes of each process's rows are those of one process on the global batch, queue or not
    g = torch.Generator().manual_seed(8)
    global_scores, queue = torch.randn(WORLD * LOCAL_B, 4, generator=g), torch.randn(5, 4, generator=g)
    rows = slice(rank * LOCAL_B, (rank + 1) * LOCAL_B)
    for shared in (None, queue):
        expected = sinkhorn(global_scores, shared=shared, gather=False)[rows]
        torch.testing.assert_close(sinkhorn(global_scores[rows], shared=shared), expected)
    torch.testing.assert_close(
        sinkhorn(global_scores[rows]), lightly_sinkhorn(global_scores[rows], gather_distributed=True)
    )


@pytest.mark.timeout(120)
def test_two_processes_match_one_process_on_the_global_batch(tmp_path: Path) -> None:
    run_in_two_processes(_two_processes, tmp_path)


# ---------------------------------------------------------------- the objective


def test_loss_is_the_swapped_prediction_of_every_view_with_multi_crop() -> None:
    model = swav()
    batch = views_batch(smooth_images(), num_views=4)
    out = model(batch)
    objective = model.objective
    z = [F.normalize(objective.projector(model.encoder.encode(v).pooled()), dim=1) for v in batch.views]
    s = [zi @ objective.prototypes.weight.T for zi in z]
    expected = swapped_prediction_loss(s, [sinkhorn(si) for si in s[:2]], objective.config.temperature)
    torch.testing.assert_close(out.loss, expected)
    assert out.loss.requires_grad and all(not v.requires_grad for v in out.logs.values())


def _prototype_grad_after_one_backward(model: SSLModel) -> Tensor | None:
    model.zero_grad(set_to_none=True)
    model(views_batch(smooth_images())).loss.backward()
    return model.objective.prototypes.weight.grad


def test_prototypes_take_no_gradient_for_the_first_steps_then_do() -> None:
    model = swav(SwAVConfig(**SMALL, freeze_prototypes_steps=2))
    for step in (1, 2):
        assert _prototype_grad_after_one_backward(model) is None
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder.parameters())  # it learns
        model.after_optimizer_step(step, 10)
    assert _prototype_grad_after_one_backward(model).abs().sum() > 0


def test_prototypes_are_renormalised_after_each_optimizer_step() -> None:
    model = swav()
    weight = model.objective.prototypes.weight
    torch.testing.assert_close(weight.norm(dim=1), torch.ones(8))
    with torch.no_grad():
        weight.mul_(3.0)  # what an optimizer step might do
    model.after_optimizer_step(1, 10)
    torch.testing.assert_close(weight.norm(dim=1), torch.ones(8))
    assert int(model.objective.steps_done) == 1


def test_queue_fills_first_and_is_used_once_full_and_started() -> None:
    model = swav(SwAVConfig(**SMALL, queue_size=16, queue_start_step=3))
    objective = model.objective
    for step in (1, 2, 3):
        assert not objective.queue_in_use()
        model(new_images_every_step(step))
        model.after_optimizer_step(step, 10)
    assert int(objective.queued) == 16 and objective.queue_in_use()  # 3 x 8 projections, capped at the queue
    batch = new_images_every_step(4)
    queues, start = [q.negatives() for q in objective.queues], int(objective.queues[0].ptr)
    out = model(batch)
    z = [F.normalize(objective.projector(model.encoder.encode(v).pooled()), dim=1) for v in batch.views]
    s = [zi @ objective.prototypes.weight.T for zi in z]
    codes = [sinkhorn(si, shared=q @ objective.prototypes.weight.T) for si, q in zip(s, queues)]
    torch.testing.assert_close(out.loss, swapped_prediction_loss(s, codes))
    for queue, zi in zip(objective.queues, z):  # then this batch's global views are enqueued
        torch.testing.assert_close(queue.negatives()[start : start + 8], zi.detach())


def test_eval_mode_leaves_the_queue_alone() -> None:
    model = swav(SwAVConfig(**SMALL, queue_size=16)).eval()
    model(views_batch(smooth_images()))
    assert int(model.objective.queued) == 0 and int(model.objective.queues[0].ptr) == 0


def test_prototypes_queue_and_step_are_saved_and_resume_exactly() -> None:
    config = SwAVConfig(**SMALL, queue_size=16, queue_start_step=1, freeze_prototypes_steps=1)
    model = swav(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for step in range(1, 4):
        loss = model(new_images_every_step(step)).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        model.after_optimizer_step(step, 10)
    state = copy.deepcopy(model.state_dict())
    keys = {"objective.prototypes.weight", "objective.steps_done", "objective.queued", "objective.queues.0.queue"}
    assert keys <= set(state) and model.objective.queue_in_use()

    resumed = swav(config, seed=5)
    resumed.load_state_dict(state)
    batch = new_images_every_step(9)
    assert torch.equal(model(batch).loss, resumed(batch).loss)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), resumed.state_dict().values()))


def test_loss_decreases() -> None:
    torch.manual_seed(0)
    enc = MLPEncoder()
    model = SSLModel(enc, SwAV(SwAVConfig(**SMALL, freeze_prototypes_steps=5), enc))
    first, last = first_last(fit(model, new_images_every_step, 40, lr=2e-3, optimizer=torch.optim.Adam))
    assert last < first - 0.05 * max(abs(first), 1.0), (first, last)


def test_builds_from_its_config_defaults() -> None:
    config = from_dict(SwAVConfig, {"name": "swav"}, "objective")
    assert config == objective_spec("swav").config_cls() and config.num_prototypes == 3000
    with torch.device("meta"):  # the paper's heads and 3000 prototypes without the memory
        objective = SwAV(config, vit())
    assert objective.prototypes.weight.shape == (3000, 128) and not objective.queues
    with pytest.raises(ValueError, match="data.views"):
        SwAV(SwAVConfig(**SMALL), vit())(vit(), image_batch(smooth_images(), PATCH))


@pytest.mark.parametrize(
    ("key", "value"), [("num_prototypes", 0), ("epsilon", 0.0), ("queue_size", -1), ("freeze_prototypes_steps", -1)]
)
def test_invalid_config_values_name_the_key(key: str, value: float) -> None:
    with pytest.raises(ConfigError, match=f"objective.{key}"):
        from_dict(SwAVConfig, {"name": "swav", key: value}, "objective")
    with pytest.raises(ConfigError, match="unknown key 'objective.prototypes'"):
        from_dict(SwAVConfig, {"name": "swav", "prototypes": 10}, "objective")


# ---------------------------------------------------------------- prototypes the batch allows


def test_more_prototypes_than_the_batch_and_queue_allow_are_refused() -> None:
    check_prototypes_fit(3000, 256, 3840)  # the official 256-sample run: 3000 prototypes with a 3840 queue
    check_prototypes_fit(4096, 256, 3840)  # as many prototypes as samples: allowed
    with pytest.raises(ValueError, match=r"objective.num_prototypes=3000 .* train.batch_size .* objective.queue_size"):
        check_prototypes_fit(3000, 256, 0)
    model = swav(SwAVConfig(**{**SMALL, "num_prototypes": 9}))
    with pytest.raises(ValueError, match="objective.num_prototypes=9"):
        model(views_batch(smooth_images()))  # 8 samples, no queue


def test_the_recipe_check_names_the_prototypes() -> None:
    """``SwAVConfig.check_recipe`` runs when the recipe loads: too many prototypes for the batch and queue."""
    assert load_recipe("swav").objective.num_prototypes == 300
    with pytest.raises(ConfigError, match="recipes/swav.yaml: objective.num_prototypes=5000"):
        load_recipe("swav", ["objective.num_prototypes=5000", "objective.queue_size=0"])
