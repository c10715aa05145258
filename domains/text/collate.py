"""Packed token blocks -> :class:`mmssl.types.Batch`, and ALBERT's sentence-order transform."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence
from transformers import PreTrainedTokenizerBase

from mmssl.types import Batch, Extra


def build_pairs(raw: Tensor, first_len: Tensor, swap: Tensor, cls_id: int, sep_id: int) -> Batch:
    """``[CLS] A [SEP] B [SEP]`` from raw blocks, vectorised over the batch.

    Each row of ``raw`` (``[B, L]``) is cut into two consecutive segments at ``first_len`` (the
    original first segment is ``raw[:, :first_len]``); rows with ``swap`` get them in reverse
    order, which is ALBERT's negative class (Lan et al. 2020, sec. 4.2).

    Returns:
        a Batch of ``[B, L + 3]`` units with ``token_type_ids`` and ``sop_labels`` (1 = swapped) extras.
    """
    B, L = raw.shape
    dev = raw.device
    cut = first_len.view(B, 1)
    a = torch.where(swap.view(B, 1), L - cut, cut)  # length of the segment that comes first
    j = torch.arange(L + 3, device=dev).view(1, -1).expand(B, -1)
    in_first = (j >= 1) & (j <= a)
    in_second = (j >= a + 2) & (j <= L + 1)
    offset_first = torch.where(swap.view(B, 1), cut + j - 1, j - 1)  # index into raw
    offset_second = torch.where(swap.view(B, 1), j - a - 2, cut + j - a - 2)
    src = torch.where(in_first, offset_first, torch.where(in_second, offset_second, 0)).clamp(0, L - 1)
    units = raw.gather(1, src)
    special = ~(in_first | in_second)
    units = torch.where(j == 0, cls_id, torch.where(special, sep_id, units))
    token_type = (j > a + 1).long()
    return Batch(
        units=units,
        padding_mask=torch.zeros(B, L + 3, dtype=torch.bool, device=dev),
        special_mask=special,
        extras={Extra.TOKEN_TYPE_IDS: token_type, Extra.SOP_LABELS: swap.long()},
    )


def unpack_pairs(batch: Batch) -> Tensor:
    """Raw ``[B, L]`` blocks back from a pair batch (drops the three special tokens)."""
    keep = ~batch.special_mask
    return batch.units[keep].view(batch.batch_size, -1)


class BlockCollator:
    """Stack packed blocks and add the architecture's special tokens. Deterministic.

    * ``gpt2``, ``t5``: the block as is.
    * ``bert``: ``[CLS] block [SEP]``.
    * ``bert`` with sentence pairs: ``[CLS] A [SEP] B [SEP]`` cut in the middle, unswapped;
      :class:`SentenceOrderTransform` redraws the cut and the order at every step.

    Rows of different lengths (``data.packing=line``) are right-padded to the longest row of the
    batch; ``padding_mask`` marks the padding, which is never masked and never in a loss.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, arch: str, sentence_pairs: bool) -> None:
        self.arch = arch
        self.pairs = sentence_pairs
        self.cls = tokenizer.cls_token_id
        self.sep = tokenizer.sep_token_id
        pad = tokenizer.pad_token_id
        self.pad = pad if pad is not None else tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0

    def __call__(self, rows: list[dict[str, Any]]) -> Batch:
        seqs = [torch.tensor(r["input_ids"], dtype=torch.long) for r in rows]
        lengths = torch.tensor([len(x) for x in seqs])
        raw = pad_sequence(seqs, batch_first=True, padding_value=self.pad)  # [B, L]
        B, L = raw.shape
        if self.pairs:
            if bool((lengths != L).any()):
                raise ValueError("sentence pairs need blocks of equal length (data.packing=concat)")
            return build_pairs(raw, torch.full((B,), L // 2), torch.zeros(B, dtype=torch.bool), self.cls, self.sep)
        # no [CLS]/[SEP]: T5's span corruption appends </s> to what it builds; word2vec reads words only
        if self.arch in ("gpt2", "t5", "word2vec"):
            return Batch(units=raw, padding_mask=torch.arange(L) >= lengths[:, None])
        # [CLS] ids [SEP] pad ...: each row's [SEP] goes right after its last id
        units = torch.cat([torch.full((B, 1), self.cls), raw, torch.full((B, 1), self.pad)], dim=1)
        units[torch.arange(B), lengths + 1] = self.sep
        j, end = torch.arange(L + 2), lengths[:, None] + 1
        return Batch(
            units=units,
            padding_mask=j > end,
            special_mask=(j == 0) | (j == end),
            extras={Extra.TOKEN_TYPE_IDS: torch.zeros(B, L + 2, dtype=torch.long)},
        )


class SentenceOrderTransform:
    """Redraw the segment cut (uniform in the middle half) and swap half of the pairs. Runs on the device."""

    def __init__(self, cls_id: int, sep_id: int, swap_prob: float = 0.5) -> None:
        self.cls, self.sep, self.swap_prob = cls_id, sep_id, swap_prob

    def __call__(self, batch: Batch) -> Batch:
        raw = unpack_pairs(batch)
        B, L = raw.shape
        cut = torch.randint(L // 4, L - L // 4 + 1, (B,), device=raw.device)
        swap = torch.rand(B, device=raw.device) < self.swap_prob
        return build_pairs(raw, cut, swap, self.cls, self.sep)


def classification_collate(tokenizer: PreTrainedTokenizerBase, max_length: int):
    """Collate ``{"text", "label"}`` rows into a padded Batch with ``labels`` in extras.

    Texts are truncated to ``max_length`` tokens, and never beyond what the model takes
    (the tokenizer's ``model_max_length``, set from the encoder's position embeddings).
    """
    max_length = min(max_length, tokenizer.model_max_length)

    def collate(rows: list[dict[str, Any]]) -> Batch:
        enc = tokenizer(
            [r["text"] for r in rows], padding=True, truncation=True, max_length=max_length, return_tensors="pt"
        )
        extras = {Extra.LABELS: torch.tensor([int(r["label"]) for r in rows], dtype=torch.long)}
        if "token_type_ids" in enc:
            extras[Extra.TOKEN_TYPE_IDS] = enc["token_type_ids"]
        return Batch(units=enc["input_ids"], padding_mask=enc["attention_mask"] == 0, extras=extras)

    return collate
