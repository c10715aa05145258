"""Causal LM: parity with transformers' GPT2LMHeadModel loss, padding ignored, learning."""

from __future__ import annotations

import pytest
import torch

from mmssl.objectives.base import SSLModel
from mmssl.objectives.clm import CausalLM, CausalLMConfig
from mmssl.types import Batch
from tests.fitting import first_last, fit
from tests.mmssl.objectives.lm_fixtures import B, T, bert, gpt, token_batch


def test_clm_matches_gpt2_lm_head_loss() -> None:
    enc = gpt().eval()
    batch = Batch(units=token_batch().units, padding_mask=torch.zeros(B, T, dtype=torch.bool))
    out = CausalLM(CausalLMConfig(), enc)(enc, batch)
    ref = enc.model(input_ids=batch.units, labels=batch.units)
    assert out.loss.item() == pytest.approx(ref.loss.item(), rel=1e-5)


def test_clm_ignores_padding() -> None:
    enc = gpt().eval()
    batch = token_batch(padding_from=12)
    batch = Batch(units=batch.units, padding_mask=batch.padding_mask)
    out = CausalLM(CausalLMConfig(), enc)(enc, batch)
    labels = batch.units.masked_fill(batch.padding_mask, -100)
    ref = enc.model(input_ids=batch.units, attention_mask=(~batch.padding_mask).long(), labels=labels)
    assert out.loss.item() == pytest.approx(ref.loss.item(), rel=1e-5)


def test_loss_decreases() -> None:
    enc = gpt()
    objective = CausalLM(CausalLMConfig(), enc)
    first, last = first_last(fit(SSLModel(enc, objective), token_batch(), 40, lr=3e-3, seed=lambda step: step - 1))
    assert last < 0.85 * first, (first, last)


def test_clm_refuses_a_bidirectional_encoder() -> None:
    assert gpt().causal and not bert().causal  # declared by the text encoder from the model class
    with pytest.raises(ValueError, match="clm predicts each unit from the ones before it and needs a causal encoder"):
        CausalLM(CausalLMConfig(), bert())
