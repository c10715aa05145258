"""SimCLR: NT-Xent against lightly and the paper's formula, multi-crop pairing, two processes, learning."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from lightly.loss import NTXentLoss

from mmssl.objectives.simclr import nt_xent
from tests.mmssl.objectives.loss_checks import (
    LOCAL_B,
    B,
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


@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_nt_xent_matches_lightly(temperature: float) -> None:
    z1, z2 = pair()
    assert_same_loss_and_grads(nt_xent(z1, z2, temperature), NTXentLoss(temperature)(z1, z2), z1, z2)


def test_nt_xent_matches_the_paper_formula_with_2n_minus_2_negatives() -> None:
    z1, z2 = pair()
    views = F.normalize(torch.cat([z1, z2]), dim=1)
    n2 = views.shape[0]
    terms = []
    for i in range(n2):
        pos = (i + B) % n2
        denom = sum(torch.exp(views[i] @ views[k] / 0.5) for k in range(n2) if k != i)  # 2N - 1 terms: 1 pos + 2N-2 neg
        terms.append(-torch.log(torch.exp(views[i] @ views[pos] / 0.5) / denom))
    assert_same_loss_and_grads(nt_xent(z1, z2), torch.stack(terms).mean(), z1, z2)


def test_nt_xent_is_symmetric_in_the_views() -> None:
    z1, z2 = pair()
    torch.testing.assert_close(nt_xent(z1, z2), nt_xent(z2, z1))


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: nt_xent(torch.randn(4, 3), torch.randn(4, 2)), "z1 and z2"),
        (lambda: nt_xent(torch.randn(4, 3), torch.randn(4, 3), temperature=0.0), "temperature"),
    ],
)
def test_invalid_arguments_are_named(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()


def test_nt_xent_decreases_on_a_toy_embedding() -> None:
    assert_decreases_on_a_toy_embedding(lambda z1, z2, predictor, x1, x2: nt_xent(z1, z2, 0.2))


def test_nt_xent_stays_float32_under_bf16_autocast() -> None:
    assert_float32_under_bf16_autocast(nt_xent)


def _two_processes(rank: int) -> None:
    one_vs_two_processes("nt_xent", lambda a, b, rows: nt_xent(a, b, 0.5, gather=rows is not None), rank)
    z1, z2 = torch.randn(LOCAL_B, 3), torch.randn(LOCAL_B, 3)  # lightly's gathered NT-Xent, same convention
    torch.testing.assert_close(nt_xent(z1, z2), NTXentLoss(0.5, gather_distributed=True)(z1, z2))


@pytest.mark.timeout(120)
def test_two_processes_match_one_process_on_the_global_batch(tmp_path: Path) -> None:
    run_in_two_processes(_two_processes, tmp_path)


# ---------------------------------------------------------------- the objective


def test_loss_equals_nt_xent_of_the_projections() -> None:
    enc = vit()
    objective = make_objective("simclr", enc)
    batch = views_batch(smooth_images())
    out = objective(enc, batch)
    z1, z2 = projections(objective, enc, batch.views)
    torch.testing.assert_close(out.loss, nt_xent(z1, z2, objective.config.temperature))
    check_output(out)


def test_simclr_multicrop_pairs_every_view_with_both_global_views() -> None:
    enc = vit()
    objective = make_objective("simclr", enc)
    batch = views_batch(smooth_images(), num_views=4)
    out = objective(enc, batch)
    z = projections(objective, enc, batch.views)
    pairs = [(0, 1), (0, 2), (1, 2), (0, 3), (1, 3)]
    expected = torch.stack([nt_xent(z[i], z[j], objective.config.temperature) for i, j in pairs]).mean()
    torch.testing.assert_close(out.loss, expected)


def test_loss_decreases() -> None:
    check_learns_on_an_mlp("simclr")


def test_loss_decreases_with_a_vit() -> None:
    check_learns_with_a_vit("simclr")


def test_builds_from_its_config_defaults() -> None:
    check_builds_from_its_config_defaults("simclr")


def test_invalid_config_values_name_the_key() -> None:
    check_invalid_config_value_is_named("simclr", "temperature", 0.0)
