"""experiments/mlm_word_order.py: a model without position information cannot tell shuffled blocks apart."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from experiment_loader import load_experiment
from transformers import BertConfig, BertForMaskedLM

from domains.text.tokenizer import TokenizerConfig, train_tokenizer


@pytest.fixture(scope="module")
def word_order():
    yield from load_experiment("mlm_word_order")


@pytest.fixture(scope="module")
def tokenizer():
    texts = [
        "It is a truth universally acknowledged, that a single man in possession of a good fortune",
        "must be in want of a wife. However little known the feelings or views of such a man may be",
    ] * 20
    return train_tokenizer(iter(texts), TokenizerConfig(vocab_size=200, min_frequency=1), "bert", 64)


def _model(tokenizer, positions: bool) -> BertForMaskedLM:
    torch.manual_seed(0)
    model = BertForMaskedLM(
        BertConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=64,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    with torch.no_grad():
        model.bert.embeddings.position_embeddings.weight.mul_(50.0 if positions else 0.0)
    return model.eval()


def test_shuffling_changes_nothing_without_positions_and_something_with_them(word_order, tokenizer) -> None:
    ids = torch.randint(5, len(tokenizer), (600,), generator=torch.Generator().manual_seed(1)).tolist()
    # without position embeddings BERT is permutation-equivariant: the same loss on shuffled blocks
    blind = word_order.word_order_report(_model(tokenizer, positions=False), tokenizer, ids, block=20, n_blocks=8)
    assert blind["shuffled_loss"] == pytest.approx(blind["ordered_loss"], abs=1e-5)
    assert blind["shuffled_accuracy"] == blind["ordered_accuracy"] and blind["masked_tokens"] > 0
    aware = word_order.word_order_report(_model(tokenizer, positions=True), tokenizer, ids, block=20, n_blocks=8)
    assert abs(aware["shuffled_loss"] - aware["ordered_loss"]) > 1e-3
    with pytest.raises(ValueError, match="fewer than 8 blocks of 100"):
        word_order.word_order_report(_model(tokenizer, positions=False), tokenizer, ids, block=100, n_blocks=8)


def test_command_line_on_an_export(word_order, tokenizer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _model(tokenizer, positions=True).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    returned = word_order.main([str(tmp_path), "--block", "30", "--blocks", "4"])
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert record == returned and record["benchmark"] == "mlm_word_order" and record["block"] == 30
    assert record["ordered_loss"] > 0 and record["unigram_loss"] > 0
