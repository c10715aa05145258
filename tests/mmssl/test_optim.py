"""AdamW decay groups and the warmup + cosine schedule."""

import math

import pytest
import torch
from torch import nn
from transformers import BertConfig, BertForMaskedLM

from mmssl.optim import build_optimizer, param_groups
from mmssl.recipe import TrainConfig


def test_no_decay_on_norms_and_biases() -> None:
    model = BertForMaskedLM(
        BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    )
    decay, no_decay = param_groups(model, 0.01)
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay_names = {names[id(p)] for p in no_decay["params"]}
    decay_names = {names[id(p)] for p in decay["params"]}
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] == 0.01
    for name, module in model.named_modules():
        if isinstance(module, nn.LayerNorm):
            assert f"{name}.weight" in no_decay_names and f"{name}.bias" in no_decay_names
    assert all(n.endswith("bias") or "LayerNorm" in n for n in no_decay_names)
    assert "bert.embeddings.word_embeddings.weight" in decay_names
    assert all(n.endswith("weight") for n in decay_names)
    assert len(decay_names) + len(no_decay_names) == len(list(model.parameters()))


def test_a_marked_matrix_is_not_decayed() -> None:
    """MSN's prototypes: a 2-D parameter the objective excludes goes to the no-decay group."""
    model = nn.Linear(4, 3)
    model.prototypes = nn.Parameter(torch.randn(5, 4))
    model.prototypes.no_weight_decay = True
    decay, no_decay = param_groups(model, 0.1)
    assert [p.shape for p in decay["params"]] == [(3, 4)]
    assert any(p is model.prototypes for p in no_decay["params"])


def test_warmup_then_cosine() -> None:
    model = nn.Linear(4, 4)
    cfg = TrainConfig(max_steps=100, warmup_steps=10, lr=1.0)
    opt, sched = build_optimizer(model, cfg)
    lrs = []
    for _ in range(100):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert lrs[0] == 0.0 and lrs[5] == pytest.approx(0.5) and lrs[10] == pytest.approx(1.0)
    assert lrs[55] == pytest.approx(0.5 * (1 + math.cos(math.pi * 45 / 90)))
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lrs[-1] < 0.01


def test_warmup_longer_than_run_is_capped() -> None:
    opt, sched = build_optimizer(nn.Linear(2, 2), TrainConfig(max_steps=5, warmup_steps=100, lr=1.0))
    lrs = []
    for _ in range(5):
        opt.step()
        sched.step()
        lrs.append(sched.get_last_lr()[0])
    assert lrs == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])  # the warmup spans the whole (short) run
