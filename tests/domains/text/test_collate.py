"""Packed blocks to batches, and ALBERT sentence-order pairs."""

from types import SimpleNamespace

import pytest
import torch

from domains.text.collate import BlockCollator, SentenceOrderTransform, build_pairs, unpack_pairs

TOK = SimpleNamespace(cls_token_id=2, sep_token_id=3, pad_token_id=0, eos_token_id=None)


def test_bert_blocks_get_cls_and_sep() -> None:
    rows = [{"input_ids": list(range(10, 16))}, {"input_ids": list(range(20, 26))}]
    batch = BlockCollator(TOK, "bert", sentence_pairs=False)(rows)
    assert batch.units[0].tolist() == [2, *range(10, 16), 3]
    assert batch.special_mask[0].tolist() == [True] + [False] * 6 + [True]
    assert not batch.padding_mask.any() and batch.num_units == 16


def test_bert_lines_of_different_lengths_are_padded_after_their_own_sep() -> None:
    rows = [{"input_ids": [10, 11, 12, 13]}, {"input_ids": [20, 21]}]
    batch = BlockCollator(TOK, "bert", sentence_pairs=False)(rows)
    assert batch.units.tolist() == [[2, 10, 11, 12, 13, 3], [2, 20, 21, 3, 0, 0]]
    assert batch.padding_mask.tolist() == [[False] * 6, [False] * 4 + [True] * 2]
    assert batch.special_mask.tolist() == [
        [True, False, False, False, False, True],
        [True, False, False, True, False, False],
    ]
    # only the real tokens between [CLS] and [SEP] may be masked
    assert batch.maskable.sum(1).tolist() == [4, 2] and batch.num_units == 10


def test_gpt_lines_are_padded_and_marked() -> None:
    batch = BlockCollator(TOK, "gpt2", sentence_pairs=False)([{"input_ids": [5, 6, 7]}, {"input_ids": [8]}])
    assert batch.units.tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch.padding_mask.tolist() == [[False, False, False], [False, True, True]]


def test_sentence_pairs_refuse_ragged_rows() -> None:
    with pytest.raises(ValueError, match="data.packing=concat"):
        BlockCollator(TOK, "bert", sentence_pairs=True)([{"input_ids": [5, 6, 7, 8]}, {"input_ids": [8, 9]}])


def test_gpt_blocks_are_raw() -> None:
    batch = BlockCollator(TOK, "gpt2", sentence_pairs=False)([{"input_ids": [5, 6, 7]}])
    assert batch.units.tolist() == [[5, 6, 7]] and batch.special_mask is None


@pytest.mark.parametrize("swap", [False, True])
def test_build_pairs_layout(swap: bool) -> None:
    raw = torch.arange(10, 20).view(1, 10)
    batch = build_pairs(raw, torch.tensor([4]), torch.tensor([swap]), cls_id=2, sep_id=3)
    first, second = ([10, 11, 12, 13], list(range(14, 20)))
    if swap:
        first, second = second, first
    assert batch.units[0].tolist() == [2, *first, 3, *second, 3]
    assert batch.extras["token_type_ids"][0].tolist() == [0] * (len(first) + 2) + [1] * (len(second) + 1)
    assert batch.extras["sop_labels"].tolist() == [int(swap)]
    assert torch.equal(unpack_pairs(batch).sort().values, raw)


def test_transform_keeps_tokens_and_swaps_half() -> None:
    torch.manual_seed(0)
    raw = torch.randint(10, 1000, (512, 61))
    collated = BlockCollator(TOK, "bert", sentence_pairs=True)([{"input_ids": r.tolist()} for r in raw])
    assert collated.units.shape == (512, 64) and not collated.extras["sop_labels"].any()
    out = SentenceOrderTransform(2, 3)(collated)
    assert out.units.shape == (512, 64)
    assert out.special_mask.sum(1).eq(3).all()
    assert out.extras["sop_labels"].float().mean().item() == pytest.approx(0.5, abs=0.07)
    kept = out.extras["sop_labels"] == 0
    assert torch.equal(unpack_pairs(out)[kept], raw[kept])  # unswapped pairs read in the original order
