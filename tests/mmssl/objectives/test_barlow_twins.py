"""Barlow Twins: the loss against lightly and its fixed point, two processes, bf16, the objective, learning."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightly.loss import BarlowTwinsLoss

from mmssl.objectives.barlow_twins import barlow_twins_loss
from tests.mmssl.objectives.loss_checks import (
    assert_decreases_on_a_toy_embedding,
    assert_float32_under_bf16_autocast,
    assert_same_loss_and_grads,
    one_vs_two_processes,
    pair,
    run_in_two_processes,
)
from tests.mmssl.objectives.view_fixtures import (
    check_builds_from_its_config_defaults,
    check_invalid_config_value_is_named,
    check_learns_on_an_mlp,
    check_learns_with_a_vit,
    check_output,
    make_objective,
    projections,
    smooth_images,
    views_batch,
    vit,
)

# ---------------------------------------------------------------- the loss


def test_barlow_twins_matches_lightly() -> None:
    z1, z2 = pair(b=16)
    assert_same_loss_and_grads(barlow_twins_loss(z1, z2), BarlowTwinsLoss(lambda_param=5e-3)(z1, z2), z1, z2)


def test_barlow_twins_is_zero_for_identical_decorrelated_views() -> None:
    z = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])
    assert barlow_twins_loss(z, z).item() == pytest.approx(0.0, abs=1e-4)  # C = I up to BN's eps


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: barlow_twins_loss(torch.randn(1, 3), torch.randn(1, 3)), "at least 2"),
        (lambda: barlow_twins_loss(torch.randn(4, 3), torch.randn(4, 3), lambda_offdiag=-1), "lambda_offdiag"),
    ],
)
def test_invalid_arguments_are_named(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()


def test_barlow_twins_decreases_on_a_toy_embedding() -> None:
    assert_decreases_on_a_toy_embedding(lambda z1, z2, predictor, x1, x2: barlow_twins_loss(z1, z2))


def test_barlow_twins_stays_float32_under_bf16_autocast() -> None:
    assert_float32_under_bf16_autocast(barlow_twins_loss)


def _two_processes(rank: int) -> None:
    one_vs_two_processes("barlow_twins", lambda a, b, rows: barlow_twins_loss(a, b, gather=rows is not None), rank)


@pytest.mark.timeout(120)
def test_two_processes_match_one_process_on_the_global_batch(tmp_path: Path) -> None:
    run_in_two_processes(_two_processes, tmp_path)


# ---------------------------------------------------------------- the objective


def test_loss_equals_barlow_twins_loss_of_the_projections() -> None:
    enc = vit()
    objective = make_objective("barlow_twins", enc)
    batch = views_batch(smooth_images())
    out = objective(enc, batch)
    z1, z2 = projections(objective, enc, batch.views)
    torch.testing.assert_close(out.loss, barlow_twins_loss(z1, z2, objective.config.lambda_offdiag))
    check_output(out)


def test_loss_decreases() -> None:
    check_learns_on_an_mlp("barlow_twins")


def test_loss_decreases_with_a_vit() -> None:
    check_learns_with_a_vit("barlow_twins")


def test_builds_from_its_config_defaults() -> None:
    check_builds_from_its_config_defaults("barlow_twins")


def test_invalid_config_values_name_the_key() -> None:
    check_invalid_config_value_is_named("barlow_twins", "lambda_offdiag", -1.0)
