"""wav2vec 2.0: mmssl's loss equals transformers' Wav2Vec2ForPreTraining loss on the same weights, masks
and distractors; distractor sampling, span masks and temperature annealing; export round trip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForAudioClassification, Wav2Vec2ForPreTraining, Wav2Vec2Model
from transformers.models.wav2vec2.modeling_wav2vec2 import _compute_mask_indices, _sample_negative_indices

from domains.audio.encoders import AudioEncoderConfig, Wav2Vec2Encoder, build_audio_encoder
from mmssl.objectives.wav2vec2 import (
    Wav2Vec2Config,
    Wav2Vec2Objective,
    gumbel_temperature,
    quantized_contrastive_loss,
    sample_distractors,
)
from mmssl.types import Batch

TINY_W2V = AudioEncoderConfig(
    hidden_size=32,
    num_layers=2,
    num_heads=2,
    intermediate_size=64,
    conv_dim=(16,) * 7,
    num_conv_pos_embeddings=16,
    num_conv_pos_embedding_groups=2,
    num_codevectors_per_group=16,
    codevector_dim=16,
    proj_codevector_dim=16,
)


def _batch(lengths: list[int], seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    waves = torch.zeros(len(lengths), max(lengths))
    pad = torch.ones(len(lengths), max(lengths), dtype=torch.bool)
    for i, n in enumerate(lengths):
        waves[i, :n] = torch.randn(n, generator=g)
        pad[i, :n] = False
    return Batch(units=waves, padding_mask=pad)


def _hf_inputs(encoder: Wav2Vec2Encoder, batch: Batch, num_negatives: int, seed: int):
    np.random.seed(seed)
    frames = encoder.output_padding_mask(batch)
    attention = (~frames).long()
    mask = _compute_mask_indices(
        tuple(frames.shape), mask_prob=0.65, mask_length=10, attention_mask=attention, min_masks=2
    )
    negatives = _sample_negative_indices(tuple(frames.shape), num_negatives, mask)
    return torch.tensor(mask), torch.tensor(negatives, dtype=torch.long)


@pytest.mark.parametrize("feat_extract_norm,stable", [("layer", True), ("group", False)])
@pytest.mark.parametrize("train_mode", [False, True])
def test_loss_matches_transformers_wav2vec2_for_pretraining(
    feat_extract_norm: str, stable: bool, train_mode: bool
) -> None:
    torch.manual_seed(0)
    cfg = AudioEncoderConfig(
        **{**TINY_W2V.__dict__, "feat_extract_norm": feat_extract_norm, "do_stable_layer_norm": stable}
    )
    encoder = build_audio_encoder(cfg)
    objective = Wav2Vec2Objective(Wav2Vec2Config(num_negatives=10), encoder)
    model: Wav2Vec2ForPreTraining = encoder.model
    lengths = [16000, 16000] if feat_extract_norm == "group" else [16000, 11000]  # group norm: no padding
    batch = _batch(lengths)
    mask, negatives = _hf_inputs(encoder, batch, 10, seed=1)
    encoder.train(train_mode)
    attention = (~batch.padding_mask).long() if batch.padding_mask.any() else None
    torch.manual_seed(5)  # the same Gumbel noise for both (train mode)
    ours = objective.loss(encoder, batch, mask, negatives)
    torch.manual_seed(5)
    ref = model(batch.units, attention_mask=attention, mask_time_indices=mask, sampled_negative_indices=negatives)
    n = mask.sum()
    assert torch.allclose(ours.terms["contrastive"] * n, ref.contrastive_loss, rtol=1e-5, atol=1e-4)
    assert torch.allclose(ours.terms["diversity"] * n, ref.diversity_loss, rtol=1e-5, atol=1e-5)
    assert torch.allclose(ours.loss * n, ref.loss, rtol=1e-5, atol=1e-4)
    # gradients agree too (same graph through transformers' modules)
    ours.loss.backward()
    g_ours = model.wav2vec2.feature_extractor.conv_layers[0].conv.weight.grad.clone()
    model.zero_grad()
    torch.manual_seed(5)
    (
        model(batch.units, attention_mask=attention, mask_time_indices=mask, sampled_negative_indices=negatives).loss
        / n
    ).backward()
    assert torch.allclose(g_ours, model.wav2vec2.feature_extractor.conv_layers[0].conv.weight.grad, atol=1e-5)


def test_distractors_come_from_other_masked_units_of_the_same_row() -> None:
    g = torch.Generator().manual_seed(0)
    mask = torch.zeros(3, 40, dtype=torch.bool)
    mask[0, 5:15] = True
    mask[1, 20:40] = True
    mask[2, 7] = True  # a single masked unit: it can only point at itself
    idx = sample_distractors(mask, 50, generator=g)
    for b in range(3):
        for t in mask[b].nonzero().flatten().tolist():
            rows, cols = idx[b, t] // 40, idx[b, t] % 40
            assert (rows == b).all() and mask[b, cols].all()
            if mask[b].sum() > 1:
                assert (cols != t).all()
    counts = torch.bincount((idx[1, 20:40] % 40).flatten(), minlength=40)[20:40]
    assert counts.min() > 0.5 * counts.float().mean()  # roughly uniform


def test_contrastive_loss_is_low_when_context_equals_target() -> None:
    q = torch.randn(2, 30, 8)
    mask = torch.zeros(2, 30, dtype=torch.bool)
    mask[:, 3:20] = True
    neg = sample_distractors(mask, 5)
    good, acc = quantized_contrastive_loss(q, q, mask, neg, 0.1)
    bad, _ = quantized_contrastive_loss(torch.randn(2, 30, 8), q, mask, neg, 0.1)
    assert good < bad and acc > 0.9


def test_gumbel_temperature_anneals_and_resumes_from_the_saved_step() -> None:
    assert gumbel_temperature(0, 2.0, 0.5, 0.999995) == 2.0
    assert gumbel_temperature(10**7, 2.0, 0.5, 0.999995) == 0.5
    encoder = build_audio_encoder(TINY_W2V)
    objective = Wav2Vec2Objective(Wav2Vec2Config(gumbel_decay=0.5), encoder)
    objective.after_optimizer_step(encoder, 1, 10)
    objective(encoder, _batch([8000, 8000]))
    assert encoder.model.quantizer.temperature == 1.0
    assert "step" in objective.state_dict()


def test_export_loads_with_transformers(tmp_path: Path) -> None:
    encoder = build_audio_encoder(TINY_W2V).eval()
    encoder.export(tmp_path)
    batch = _batch([8000, 8000])
    base = Wav2Vec2Model.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        ours = encoder.encode(batch).hidden
        theirs = base(batch.units).last_hidden_state
    assert torch.allclose(ours, theirs, atol=1e-5)
    pre = Wav2Vec2ForPreTraining.from_pretrained(tmp_path)
    assert torch.equal(pre.quantizer.codevectors, encoder.model.quantizer.codevectors)
    clf = AutoModelForAudioClassification.from_pretrained(tmp_path, num_labels=3)
    assert clf(batch.units).logits.shape == (2, 3)
