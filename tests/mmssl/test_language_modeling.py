"""Masked and causal LM objectives: parity with transformers' own losses, and learning."""

from types import SimpleNamespace

import pytest
import torch
from transformers import BertConfig, BertForMaskedLM, GPT2Config, GPT2LMHeadModel

from domains.text.encoders import HFTextEncoder
from mmssl.masking import bert_mask
from mmssl.objectives.base import SSLModel
from mmssl.objectives.language_modeling import CausalLM, CausalLMConfig, MaskedLM, MaskedLMConfig
from mmssl.types import Batch
from tests.fitting import fit, first_last

V, T, B = 120, 24, 6


def _bert() -> HFTextEncoder:
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    return HFTextEncoder(BertForMaskedLM(cfg), SimpleNamespace(mask_token_id=4))


def _gpt() -> HFTextEncoder:
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=V, n_embd=32, n_layer=2, n_head=2, n_inner=64, n_positions=64)
    return HFTextEncoder(GPT2LMHeadModel(cfg), SimpleNamespace(mask_token_id=None))


def _batch(padding_from: int | None = None) -> Batch:
    ids = torch.randint(5, V, (B, T), generator=torch.Generator().manual_seed(1))
    special = torch.zeros(B, T, dtype=torch.bool)
    special[:, 0] = special[:, -1] = True
    pad = torch.zeros(B, T, dtype=torch.bool)
    if padding_from is not None:
        pad[: B // 2, padding_from:] = True
    return Batch(units=ids, padding_mask=pad, special_mask=special)


def test_mlm_matches_bert_for_masked_lm_loss_and_grads() -> None:
    enc = _bert().eval()
    objective = MaskedLM(MaskedLMConfig(), enc)
    batch = _batch()
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
    enc = _bert()
    objective = MaskedLM(MaskedLMConfig(), enc)
    shapes = []
    handle = enc.model.cls.predictions.decoder.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape)))
    torch.manual_seed(0)
    objective(enc, _batch())
    handle.remove()
    (n, v), = shapes
    assert v == V and 0 < n < B * T * 0.3  # ~15% of the maskable positions, not B*T


def test_mlm_never_predicts_padding() -> None:
    enc = _bert()
    objective = MaskedLM(MaskedLMConfig(mask_prob=0.9), enc)
    batch = _batch(padding_from=10)
    torch.manual_seed(0)
    mask, _ = bert_mask(batch.units, batch.maskable, mask_token_id=4, vocab_size=V, mask_prob=0.9)
    assert not mask[batch.padding_mask].any()
    torch.manual_seed(0)
    assert objective(enc, batch).logs["masked_fraction"] == pytest.approx(mask.sum().item() / batch.maskable.sum().item())


def test_clm_matches_gpt2_lm_head_loss() -> None:
    enc = _gpt().eval()
    batch = Batch(units=_batch().units, padding_mask=torch.zeros(B, T, dtype=torch.bool))
    out = CausalLM(CausalLMConfig(), enc)(enc, batch)
    ref = enc.model(input_ids=batch.units, labels=batch.units)
    assert out.loss.item() == pytest.approx(ref.loss.item(), rel=1e-5)


def test_clm_ignores_padding() -> None:
    enc = _gpt().eval()
    batch = _batch(padding_from=12)
    batch = Batch(units=batch.units, padding_mask=batch.padding_mask)
    out = CausalLM(CausalLMConfig(), enc)(enc, batch)
    labels = batch.units.masked_fill(batch.padding_mask, -100)
    ref = enc.model(input_ids=batch.units, attention_mask=(~batch.padding_mask).long(), labels=labels)
    assert out.loss.item() == pytest.approx(ref.loss.item(), rel=1e-5)


@pytest.mark.parametrize("which", ["mlm", "clm"])
def test_loss_decreases(which: str) -> None:
    enc = _bert() if which == "mlm" else _gpt()
    objective = MaskedLM(MaskedLMConfig(), enc) if which == "mlm" else CausalLM(CausalLMConfig(), enc)
    first, last = first_last(fit(SSLModel(enc, objective), _batch(), 40, lr=3e-3, seed=lambda step: step - 1))
    # MLM redraws its mask every step, so it memorises slower than CLM; both must clearly learn
    assert last < 0.85 * first, (first, last)


def test_sentence_order_term_needs_pairs() -> None:
    enc = _bert()
    objective = MaskedLM(MaskedLMConfig(sentence_order_weight=1.0), enc)
    with pytest.raises(ValueError, match="data.sentence_pairs=true"):
        objective(enc, _batch())


def test_mlm_requires_a_mask_token() -> None:
    with pytest.raises(ValueError, match="mask token"):
        MaskedLM(MaskedLMConfig(), _gpt())
