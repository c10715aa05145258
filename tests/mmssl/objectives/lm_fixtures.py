"""Tiny transformers BERT and GPT-2 encoders and token batches for the language-model objective tests."""

from __future__ import annotations

from types import SimpleNamespace

import torch
from transformers import BertConfig, BertForMaskedLM, GPT2Config, GPT2LMHeadModel

from domains.text.encoders import HFTextEncoder
from mmssl.types import Batch

V, T, B = 120, 24, 6


def bert() -> HFTextEncoder:
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    return HFTextEncoder(BertForMaskedLM(cfg), SimpleNamespace(mask_token_id=4))


def gpt() -> HFTextEncoder:
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=V, n_embd=32, n_layer=2, n_head=2, n_inner=64, n_positions=64)
    return HFTextEncoder(GPT2LMHeadModel(cfg), SimpleNamespace(mask_token_id=None))


def token_batch(padding_from: int | None = None) -> Batch:
    """``[B, T]`` random ids above the 5 special ones, first and last special; the first half padded from
    ``padding_from`` on."""
    ids = torch.randint(5, V, (B, T), generator=torch.Generator().manual_seed(1))
    special = torch.zeros(B, T, dtype=torch.bool)
    special[:, 0] = special[:, -1] = True
    pad = torch.zeros(B, T, dtype=torch.bool)
    if padding_from is not None:
        pad[: B // 2, padding_from:] = True
    return Batch(units=ids, padding_mask=pad, special_mask=special)
