"""Masked LM: parity with transformers' BertForMaskedLM loss and gradients, masked positions only, learning."""

from __future__ import annotations

import pytest
import torch

from mmssl.masking import bert_mask
from mmssl.objectives.base import SSLModel
from mmssl.objectives.mlm import MaskedLM, MaskedLMConfig
from tests.fitting import first_last, fit
from tests.mmssl.objectives.lm_fixtures import B, T, V, bert, gpt, token_batch


def test_mlm_matches_bert_for_masked_lm_loss_and_grads() -> None:
    enc = bert().eval()
    objective = MaskedLM(MaskedLMConfig(), enc)
    batch = token_batch()
    torch.manual_seed(7)
    out = objective(enc, batch)
    out.loss.backward()
    ours = enc.model.bert.embeddings.word_embeddings.weight.grad.clone()
    enc.zero_grad()

    torch.manual_seed(7)  # the same draw the objective made
    mask, corrupted = bert_mask(batch.units, batch.maskable, mask_token_id=4, vocab_size=V)
    labels = batch.units.masked_fill(~mask, -100)
    ref = enc.model(input_ids=corrupted, labels=labels)  # projects every position onto the vocabulary
    ref.loss.backward()
    assert out.terms["mlm"].item() == pytest.approx(ref.loss.item(), rel=1e-5)
    torch.testing.assert_close(ours, enc.model.bert.embeddings.word_embeddings.weight.grad, rtol=1e-4, atol=1e-6)


def test_mlm_projects_only_masked_positions() -> None:
    enc = bert()
    objective = MaskedLM(MaskedLMConfig(), enc)
    shapes = []
    handle = enc.model.cls.predictions.decoder.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape)))
    torch.manual_seed(0)
    objective(enc, token_batch())
    handle.remove()
    ((n, v),) = shapes
    assert v == V and 0 < n < B * T * 0.3  # ~15% of the maskable positions, not B*T


def test_mlm_never_predicts_padding() -> None:
    enc = bert()
    objective = MaskedLM(MaskedLMConfig(mask_prob=0.9), enc)
    batch = token_batch(padding_from=10)
    torch.manual_seed(0)
    mask, _ = bert_mask(batch.units, batch.maskable, mask_token_id=4, vocab_size=V, mask_prob=0.9)
    assert not mask[batch.padding_mask].any()
    torch.manual_seed(0)
    assert objective(enc, batch).logs["masked_fraction"] == pytest.approx(
        mask.sum().item() / batch.maskable.sum().item()
    )


def test_loss_decreases() -> None:
    enc = bert()
    objective = MaskedLM(MaskedLMConfig(), enc)
    first, last = first_last(fit(SSLModel(enc, objective), token_batch(), 40, lr=3e-3, seed=lambda step: step - 1))
    # MLM redraws its mask every step, so it memorises slower than CLM; it must clearly learn
    assert last < 0.85 * first, (first, last)


def test_sentence_order_term_needs_pairs() -> None:
    enc = bert()
    objective = MaskedLM(MaskedLMConfig(sentence_order_weight=1.0), enc)
    with pytest.raises(ValueError, match="data.sentence_pairs=true"):
        objective(enc, token_batch())


def test_mlm_requires_a_mask_token() -> None:
    with pytest.raises(ValueError, match="mask token"):
        MaskedLM(MaskedLMConfig(), gpt())
