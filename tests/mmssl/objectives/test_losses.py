"""The shared masked-regression loss: parity with HF ViTMAE, masked units only, argument contracts, two processes,
learning."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import ViTMAEConfig, ViTMAEForPreTraining

from mmssl.objectives.losses import masked_regression_loss
from tests.mmssl.objectives.loss_checks import (
    assert_decreases_on_a_toy_embedding,
    grads,
    one_vs_two_processes,
    run_in_two_processes,
)


@pytest.mark.parametrize("norm_pix_loss", [False, True])
def test_masked_regression_matches_hf_vit_mae_loss(norm_pix_loss: bool) -> None:
    torch.manual_seed(0)
    config = ViTMAEConfig(
        image_size=8,
        patch_size=2,
        num_channels=3,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        decoder_hidden_size=16,
        decoder_num_hidden_layers=1,
        decoder_num_attention_heads=2,
        decoder_intermediate_size=32,
        mask_ratio=0.75,
        norm_pix_loss=norm_pix_loss,
    )
    model = ViTMAEForPreTraining(config).eval()
    pixels = torch.randn(2, 3, 8, 8)
    out = model(pixels)  # logits [2, 16, 12], mask [2, 16] (1 = masked)
    ours = masked_regression_loss(out.logits, model.patchify(pixels), out.mask.bool(), norm_target=norm_pix_loss)
    torch.testing.assert_close(ours, out.loss)
    torch.testing.assert_close(grads(ours, out.logits)[0], grads(out.loss, out.logits)[0])


@pytest.mark.parametrize("kind", ["mse", "l1", "smooth_l1"])
def test_masked_regression_averages_over_masked_units_only(kind: str) -> None:
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(3, 5, 4, generator=g), torch.randn(3, 5, 4, generator=g)
    mask = torch.rand(3, 5, generator=g) < 0.5
    elementwise = {
        "mse": lambda d: d**2,
        "l1": torch.abs,
        "smooth_l1": lambda d: torch.where(d.abs() < 0.5, d**2, d.abs() - 0.25),  # beta = 0.5
    }
    per_unit = [elementwise[kind](pred[b, t] - target[b, t]).mean() for b in range(3) for t in range(5) if mask[b, t]]
    ours = masked_regression_loss(pred, target, mask, loss=kind, beta=0.5)
    torch.testing.assert_close(ours, torch.stack(per_unit).mean())
    pred[~mask] = 1e6  # unmasked predictions cost nothing
    torch.testing.assert_close(masked_regression_loss(pred, target, mask, loss=kind, beta=0.5), ours)


def test_masked_regression_with_nothing_masked_is_zero() -> None:
    pred = torch.randn(2, 3, 4, requires_grad=True)
    loss = masked_regression_loss(pred, torch.randn(2, 3, 4), torch.zeros(2, 3, dtype=torch.bool))
    loss.backward()
    assert loss.item() == 0.0 and pred.grad.abs().sum() == 0


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: masked_regression_loss(torch.randn(2, 3, 4), torch.randn(2, 3, 4), torch.ones(2, 3)), "mask"),
        (lambda: masked_regression_loss(torch.randn(2, 4), torch.randn(2, 5), torch.ones(2).bool()), "pred and target"),
        (lambda: masked_regression_loss(torch.randn(2, 4), torch.randn(2, 4), torch.ones(2).bool(), loss="l3"), "loss"),
        (
            lambda: masked_regression_loss(torch.ones(2, 1), torch.ones(2, 1), torch.ones(2).bool(), norm_target=True),
            "norm_target",
        ),
    ],
)
def test_invalid_arguments_are_named(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()


def test_masked_regression_decreases_on_a_toy_embedding() -> None:
    # reconstruct the clean 16-feature input of 4 units from the noisy view's embedding
    assert_decreases_on_a_toy_embedding(
        lambda z1, z2, predictor, x1, x2: masked_regression_loss(
            predictor(z2).view(-1, 4, 4), x1.view(-1, 4, 4), torch.arange(4).expand(x1.shape[0], 4) % 2 == 0
        )
    )


GLOBAL_MASK = torch.tensor([1, 1, 0, 1, 0, 0, 1, 0], dtype=torch.bool)  # 3 masked units on rank 0, 1 on rank 1


def _two_processes(rank: int) -> None:
    # the reference passes the full count on both processes, which the global normaliser maps back to it
    one_vs_two_processes(
        "masked_regression", lambda a, b, rows: masked_regression_loss(a, b, GLOBAL_MASK[rows or slice(None)]), rank
    )


@pytest.mark.timeout(120)
def test_two_processes_match_one_process_on_the_global_batch(tmp_path: Path) -> None:
    run_in_two_processes(_two_processes, tmp_path)
