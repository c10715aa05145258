"""CPC: the InfoNCE over k steps written out on fixed tensors, negative sampling, learning, resume, recipe checks."""

from __future__ import annotations

import math

import pytest
import torch

from mmssl.config import ConfigError
from mmssl.objectives.base import SSLModel
from mmssl.objectives.cpc import (
    CPC,
    CPCConfig,
    StepPredictors,
    future_contrastive_loss,
    predictive_coding_output,
    sample_negatives,
)
from mmssl.recipe import load_recipe
from tests.mmssl.objectives.cpc_fixtures import assert_resumes_exactly, cpc_encoder, waves


def written_out(pred, z, valid, negatives, step, loss):
    """Loops over rows, units and steps: the positive ``z[b, t + k step]`` against every sampled negative whose
    index is not the positive's, CPC's softmax or wav2vec's sigmoid form; per step sum, count and correct."""
    b_, t_, k_, _ = pred.shape
    sums, counts, correct = [0.0] * k_, [0] * k_, [0] * k_
    flat = z.reshape(b_ * t_, -1)
    for b in range(b_):
        for t in range(t_):
            for k in range(1, k_ + 1):
                target = t + k * step
                if target >= t_ or not (valid[b, t] and valid[b, target]):
                    continue
                p = pred[b, t, k - 1]
                pos = float(p @ z[b, target])
                negs = [float(p @ flat[n]) for n in negatives[b, t].tolist() if n != b * t_ + target]
                if loss == "infonce":
                    term = -pos + math.log(math.exp(pos) + sum(math.exp(s) for s in negs))
                else:
                    term = -math.log(1 / (1 + math.exp(-pos))) - sum(math.log(1 / (1 + math.exp(s))) for s in negs)
                sums[k - 1] += term
                counts[k - 1] += 1
                correct[k - 1] += int(all(pos > s for s in negs))
    return torch.tensor(sums), torch.tensor(counts, dtype=torch.float), torch.tensor(correct, dtype=torch.float)


def fixed_case():
    """B=2 rows of T=6 units (the second row's last two are padding), K=3 steps, D=4, N=4 negatives per unit with
    the positive of some step among them (left out of that step's denominator only)."""
    g = torch.Generator().manual_seed(0)
    pred, z = torch.randn(2, 6, 3, 4, generator=g), torch.randn(2, 6, 4, generator=g)
    valid = torch.ones(2, 6, dtype=torch.bool)
    valid[1, 4:] = False
    negatives = torch.randint(0, 12, (2, 6, 4), generator=g)
    negatives[0, 0] = torch.tensor([1, 2, 5, 7])  # the positives of k = 1 and 2, another unit, another row
    negatives[1, 2] = torch.tensor([9, 9, 3, 0])  # row 1's t = 2 -> k = 1 target is 6 + 3 = 9, twice
    return pred, z, valid, negatives


@pytest.mark.parametrize("loss", ["infonce", "binary"])
def test_future_loss_matches_the_written_out_sum_over_steps(loss: str) -> None:
    pred, z, valid, negatives = fixed_case()
    sums, counts, correct = future_contrastive_loss(pred, z, valid, negatives, step=1, loss=loss)
    ref_sums, ref_counts, ref_correct = written_out(pred, z, valid, negatives, 1, loss)
    assert torch.equal(counts, ref_counts) and counts.tolist() == [8.0, 6.0, 4.0]  # T - k real pairs, padding out
    assert torch.allclose(sums, ref_sums, atol=1e-5) and torch.equal(correct, ref_correct)


def test_future_loss_on_a_grid_predicts_rows_below() -> None:
    """On a row-major 2x3 grid one step is one row (``step=3``): k = 1 pairs each top unit with the one below it."""
    pred, z, valid, negatives = fixed_case()
    sums, counts, _ = future_contrastive_loss(pred, z, valid, negatives, step=3)
    ref_sums, ref_counts, _ = written_out(pred, z, valid, negatives, 3, "infonce")
    assert counts.tolist() == [4.0, 0.0, 0.0] and torch.equal(counts, ref_counts)
    assert torch.allclose(sums, ref_sums, atol=1e-5)


def test_negatives_equal_to_the_positive_leave_the_denominator() -> None:
    """One prediction whose every sampled negative is its positive: InfoNCE has nothing to contrast (0, correct),
    the binary form keeps only ``-log sigmoid(pos)``."""
    pred, z = torch.tensor([[[[1.0, 2.0]], [[0.0, 0.0]]]]), torch.tensor([[[0.5, 0.5], [0.3, -0.2]]])
    valid, negatives = torch.ones(1, 2, dtype=torch.bool), torch.ones(1, 2, 3, dtype=torch.long)  # all = unit 1
    sums, counts, correct = future_contrastive_loss(pred, z, valid, negatives)
    assert sums.tolist() == [0.0] and counts.tolist() == [1.0] and correct.tolist() == [1.0]
    binary = future_contrastive_loss(pred, z, valid, negatives, loss="binary")[0]
    assert torch.allclose(binary, -torch.nn.functional.logsigmoid(torch.tensor([0.3 - 0.4])))


@pytest.mark.parametrize("pool", ["sequence", "batch"])
def test_negatives_are_real_units_of_their_pool(pool: str) -> None:
    valid = torch.arange(7)[None, :] < torch.tensor([7, 4, 1])[:, None]  # right-padded rows
    idx = sample_negatives(valid, 50, pool, torch.Generator().manual_seed(0))
    assert idx.shape == (3, 7, 50) and bool(valid.reshape(-1)[idx].all())
    rows = idx // 7
    if pool == "sequence":
        assert bool((rows == torch.arange(3)[:, None, None]).all())
        assert set(idx[1].reshape(-1).tolist()) == {7, 8, 9, 10}  # every real unit of row 1 is drawn
    else:
        assert set(rows.reshape(-1).tolist()) == {0, 1, 2}


def test_the_loss_is_the_mean_over_steps_of_each_steps_mean() -> None:
    pred, z, valid, _ = fixed_case()
    predictors = StepPredictors(4, 4, 3)
    with torch.no_grad():
        predictors.proj.weight.copy_(torch.randn(12, 4, generator=torch.Generator().manual_seed(1)))
    context = torch.randn(2, 6, 4, generator=torch.Generator().manual_seed(2))
    config = CPCConfig(prediction_steps=3, num_negatives=4, negatives="sequence")
    torch.manual_seed(3)
    out = predictive_coding_output(predictors, context, z, valid, config)
    torch.manual_seed(3)
    negatives = sample_negatives(valid, 4, "sequence")
    sums, counts, _ = written_out(predictors(context).detach(), z, valid, negatives, 1, "infonce")
    assert torch.allclose(out.loss, (sums / counts).mean(), atol=1e-5)


def build(seed: int) -> SSLModel:
    encoder = cpc_encoder(seed)
    torch.manual_seed(seed + 1)
    return SSLModel(encoder, CPC(CPCConfig(prediction_steps=4, num_negatives=8), encoder))


def test_cpc_loss_falls_and_reaches_every_part() -> None:
    model = build(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    batch = waves(short=800)
    losses = []
    for _ in range(15):
        torch.manual_seed(0)
        out = model(batch)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        losses.append(out.loss.item())
    assert losses[0] == pytest.approx(math.log(9), abs=0.2)  # chance: the positive among 1 + 8 scores
    assert losses[-1] < 0.8 * losses[0], losses
    assert all(p.grad is not None for p in model.parameters())


def test_cpc_resumes_exactly() -> None:
    assert_resumes_exactly(build, {"objective.predictors.proj.weight"})


def test_cpc_refuses_an_encoder_that_sees_the_future() -> None:
    from domains.audio.encoders import AudioEncoderConfig, build_audio_encoder

    wav2vec2 = build_audio_encoder(AudioEncoderConfig(hidden_size=32, num_heads=2, conv_dim=(16,) * 7))
    with pytest.raises(ValueError, match="causal encoder"):
        CPC(CPCConfig(), wav2vec2)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["data.max_seconds=0.1", "data.min_seconds=0.05"], "prediction_steps=12 reaches past the 8 units"),  # 8 frames
        (["objective.negatives=sequence", "objective.num_negatives=500"], "objective.num_negatives=500 exceeds"),
        (["objective.num_negatives=5000"], r"exceeds the \d+ other units objective.negatives=batch"),
        (["encoder.arch=wav2vec2"], "causal.*encoder.arch=wav2vec2 is bidirectional"),
        (["objective.negatives=others"], "objective.negatives"),
        (["objective.prediction_steps=0"], "objective.prediction_steps"),
    ],
)
def test_recipe_load_refuses(overrides: list[str], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_recipe("cpc", overrides)


def test_short_rows_fail_with_the_setting_named() -> None:
    model = build(0)
    with pytest.raises(ValueError, match="objective.prediction_steps=4"):
        model(waves(seconds=0.05))  # 3 frames
