"""VICReg: the loss and its three terms against lightly, two processes, bf16, the objective, learning."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightly.loss import VICRegLoss
from lightly.loss.vicreg_loss import covariance_loss, invariance_loss, variance_loss

from mmssl.objectives.vicreg import vicreg_loss
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
    check_output,
    make_objective,
    projections,
    smooth_images,
    views_batch,
    vit,
)

# ---------------------------------------------------------------- the loss


def test_vicreg_matches_lightly_total_and_terms() -> None:
    z1, z2 = pair(b=16)
    loss, terms = vicreg_loss(z1, z2)
    assert_same_loss_and_grads(loss, VICRegLoss()(z1, z2), z1, z2)
    torch.testing.assert_close(terms["invariance"], invariance_loss(z1, z2))
    torch.testing.assert_close(terms["variance"], (variance_loss(z1) + variance_loss(z2)) / 2)
    torch.testing.assert_close(terms["covariance"], covariance_loss(z1) + covariance_loss(z2))


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: vicreg_loss(torch.randn(4, 3), torch.randn(4, 3), var_weight=-1), "var_weight"),
        (lambda: vicreg_loss(torch.randn(4, 3), torch.randn(4, 3), eps=0), "eps"),
    ],
)
def test_invalid_arguments_are_named(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()


def test_vicreg_decreases_on_a_toy_embedding() -> None:
    assert_decreases_on_a_toy_embedding(lambda z1, z2, predictor, x1, x2: vicreg_loss(z1, z2)[0])


def test_vicreg_stays_float32_under_bf16_autocast() -> None:
    assert_float32_under_bf16_autocast(vicreg_loss)


def _two_processes(rank: int) -> None:
    one_vs_two_processes("vicreg", lambda a, b, rows: vicreg_loss(a, b, gather=rows is not None)[0], rank)


@pytest.mark.timeout(120)
def test_two_processes_match_one_process_on_the_global_batch(tmp_path: Path) -> None:
    run_in_two_processes(_two_processes, tmp_path)


# ---------------------------------------------------------------- the objective


def test_loss_equals_the_weighted_terms_of_the_projections() -> None:
    enc = vit()
    objective = make_objective("vicreg", enc)
    batch = views_batch(smooth_images())
    out = objective(enc, batch)
    cfg = objective.config
    z1, z2 = projections(objective, enc, batch.views)
    torch.testing.assert_close(
        out.loss, vicreg_loss(z1, z2, cfg.sim_weight, cfg.var_weight, cfg.cov_weight, cfg.eps)[0]
    )
    check_output(out)
    assert set(out.terms) == {"invariance", "variance", "covariance"}
    weighted = cfg.sim_weight * out.terms["invariance"] + cfg.var_weight * out.terms["variance"]
    torch.testing.assert_close(out.loss, weighted + cfg.cov_weight * out.terms["covariance"])


def test_loss_decreases() -> None:
    check_learns_on_an_mlp("vicreg")


def test_builds_from_its_config_defaults() -> None:
    check_builds_from_its_config_defaults("vicreg")


def test_invalid_config_values_name_the_key() -> None:
    check_invalid_config_value_is_named("vicreg", "var_weight", -1.0)
