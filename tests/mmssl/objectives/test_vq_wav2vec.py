"""vq-wav2vec: the quantised frames are the targets, the temperature schedule, learning, resume, recipe checks."""

from __future__ import annotations

import pytest
import torch

from mmssl.config import ConfigError
from mmssl.objectives.base import SSLModel
from mmssl.objectives.cpc import future_contrastive_loss, sample_negatives
from mmssl.objectives.vq_wav2vec import VQWav2Vec, VQWav2VecConfig, linear_temperature
from mmssl.recipe import load_recipe
from tests.mmssl.objectives.cpc_fixtures import TINY_VQ, assert_resumes_exactly, cpc_encoder, waves


def build(seed: int) -> SSLModel:
    encoder = cpc_encoder(seed, **TINY_VQ)
    torch.manual_seed(seed + 1)
    return SSLModel(encoder, VQWav2Vec(VQWav2VecConfig(prediction_steps=4, num_negatives=6), encoder))


def test_temperature_anneals_linearly_over_the_first_70_percent() -> None:
    assert linear_temperature(0, 0, 2.0, 0.5, 0.7) == 2.0  # before the first update
    assert linear_temperature(35, 100, 2.0, 0.5, 0.7) == pytest.approx(1.25)
    assert linear_temperature(70, 100, 2.0, 0.5, 0.7) == 0.5 == linear_temperature(100, 100, 2.0, 0.5, 0.7)


def test_the_loss_is_wavvecs_binary_form_on_the_quantised_frames() -> None:
    """The objective's loss, rebuilt from the encoder's own outputs: the context network reads codewords
    (one of V per group), and ``W_k c_t`` is scored against the codewords ``k`` frames ahead."""
    model = build(0).eval()  # eval: the quantizer takes the argmax codeword (no Gumbel noise)
    batch = waves(short=800)
    torch.manual_seed(7)
    out = model(batch)
    enc_out, frames = model.encoder.encode_with_features(batch)
    quantizer = model.encoder.quantizer_head().quantizer
    codebook = quantizer.codevectors[0].reshape(2, 8, -1)  # [G, V, D / G]
    for g in range(2):  # every frame is one codeword per group
        part = frames[..., g * 8 : (g + 1) * 8].reshape(-1, 1, 8)
        assert bool((part - codebook[g][None]).abs().amax(-1).min(-1).values.lt(1e-6).all())
    valid = ~enc_out.padding_mask
    torch.manual_seed(7)
    negatives = sample_negatives(valid, 6, "sequence")
    predictions = model.objective.predictors(enc_out.hidden)
    sums, counts, _ = future_contrastive_loss(predictions, frames, valid, negatives, loss="binary")
    assert torch.allclose(out.loss, (sums / counts).mean(), atol=1e-5)


def test_vq_wav2vec_learns_and_anneals() -> None:
    model = build(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    batch = waves(short=800)
    losses = []
    for step in range(1, 16):
        torch.manual_seed(0)
        out = model(batch)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        model.after_optimizer_step(step, 20)
        losses.append(out.loss.item())
    assert losses[-1] < 0.7 * losses[0], losses
    assert float(out.logs["quantized"]) == 1.0 and float(out.logs["codewords_used"]) > 1
    assert float(out.logs["gumbel_temperature"]) == pytest.approx(linear_temperature(14, 20, 2.0, 0.5, 0.7))
    assert model.encoder.model.quantizer.weight_proj.weight.grad is not None  # straight-through to the quantizer


def test_vq_wav2vec_resumes_exactly_with_its_temperature() -> None:
    assert_resumes_exactly(build, {"objective.step", "objective.max_steps", "encoder.model.quantizer.codevectors"})


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["encoder.num_codevector_groups=3"], "encoder.codevector_dim must be divisible by encoder.num_codevector"),
        (["data.max_seconds=0.08", "data.min_seconds=0.05"], "objective.prediction_steps=8 reaches past the 6 units"),
        (["objective.num_negatives=200"], "objective.num_negatives=200 exceeds the 197 other units"),
        (["objective.gumbel_end=3.0"], "gumbel_end"),
        (["encoder.arch=wav2vec2"], "encoder.arch=wav2vec2 is bidirectional"),
    ],
)
def test_recipe_load_refuses(overrides: list[str], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_recipe("vq_wav2vec", overrides)
