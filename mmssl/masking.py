"""Masking generators: pure functions on the ``[B, T]`` unit grid.

One generator serves every domain whose units fit its assumptions:

* :func:`bert_mask` -- i.i.d. token masking with 80/10/10 corruption (BERT, Devlin et al. 2019).
* :func:`span_mask` -- contiguous spans from sampled starts (wav2vec 2.0, Baevski et al. 2020).
* :func:`block_mask_2d` -- rectangular blocks on an ``H x W`` patch grid (BEiT, Bao et al. 2022).
* :func:`random_mask` -- an exact fraction of units per row (MAE, He et al. 2022).

All functions take an optional ``torch.Generator`` and never touch units that are not
``maskable`` (padding, special tokens). Masks are ``bool`` with True = masked.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def _bernoulli(shape: torch.Size, p: float, device: torch.device, generator: torch.Generator | None) -> Tensor:
    return torch.rand(shape, device=device, generator=generator) < p


def bert_mask(
    ids: Tensor,
    maskable: Tensor,
    *,
    mask_token_id: int,
    vocab_size: int,
    mask_prob: float = 0.15,
    mask_token_frac: float = 0.8,
    random_token_frac: float = 0.1,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """BERT's masked-LM corruption.

    Each maskable token is selected with probability ``mask_prob``; of the selected ones
    ``mask_token_frac`` become ``[MASK]``, ``random_token_frac`` a uniformly random id and the
    rest stay unchanged (defaults 15% and 80/10/10, Devlin et al. 2019, sec. 3.1).

    Args:
        ids: ``[B, T]`` token ids.
        maskable: ``[B, T]`` bool, False at padding and special tokens.
        mask_token_id: id of ``[MASK]``.
        vocab_size: random replacements are drawn from ``[0, vocab_size)``.

    Returns:
        ``(mask, corrupted)``: ``[B, T]`` bool selection (the prediction targets) and the
        ``[B, T]`` corrupted ids to feed the encoder.

    Example:
        >>> ids = torch.randint(5, 100, (2, 16))
        >>> mask, x = bert_mask(ids, torch.ones_like(ids, dtype=torch.bool), mask_token_id=4, vocab_size=100)
    """
    if not 0.0 < mask_prob <= 1.0:
        raise ValueError(f"mask_prob must be in (0, 1], got {mask_prob}")
    if mask_token_frac + random_token_frac > 1.0:
        raise ValueError("mask_token_frac + random_token_frac must be <= 1")
    dev = ids.device
    mask = _bernoulli(ids.shape, mask_prob, dev, generator) & maskable
    u = torch.rand(ids.shape, device=dev, generator=generator)
    to_mask_token = mask & (u < mask_token_frac)
    to_random = mask & (u >= mask_token_frac) & (u < mask_token_frac + random_token_frac)
    random_ids = torch.randint(0, vocab_size, ids.shape, device=dev, generator=generator, dtype=ids.dtype)
    corrupted = torch.where(to_mask_token, torch.full_like(ids, mask_token_id), ids)
    corrupted = torch.where(to_random, random_ids, corrupted)
    return mask, corrupted


def span_mask(
    maskable: Tensor,
    *,
    start_prob: float = 0.065,
    span_length: int = 10,
    min_spans: int = 0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """wav2vec 2.0 span masking.

    In each row, ``round_stochastic(start_prob * n)`` start positions are drawn without
    replacement among the ``n`` maskable units (at least ``min_spans``), and the ``span_length``
    units from each start are masked; spans may overlap, so with the paper's p=0.065, L=10
    about 49% of units end up masked (Baevski et al. 2020, sec. 3.1). transformers'
    ``mask_time_prob`` is this ``start_prob * span_length``. Rows are assumed to be
    left-aligned (maskable units first, padding last), as produced by every mmssl collator.

    Args:
        maskable: ``[B, T]`` bool, True at units that may be masked.

    Returns:
        ``[B, T]`` bool mask, never True where ``maskable`` is False.
    """
    B, T = maskable.shape
    dev = maskable.device
    lengths = maskable.sum(1)  # [B]
    valid_starts = (lengths - span_length + 1).clamp(min=0)  # starts whose span fits in the row
    expected = start_prob * lengths.to(torch.float32)
    num = torch.floor(expected + torch.rand(B, device=dev, generator=generator)).long()
    num = torch.minimum(num.clamp(min=min_spans), valid_starts)
    k = int(num.max()) if B else 0
    if k == 0:
        return torch.zeros(B, T, dtype=torch.bool, device=dev)
    # Sample starts without replacement: top-k of random scores over valid start positions.
    scores = torch.rand(B, T, device=dev, generator=generator)
    pos = torch.arange(T, device=dev)
    scores = scores.masked_fill(pos[None, :] >= valid_starts[:, None], -1.0)
    starts = scores.topk(k, dim=1).indices  # [B, k]
    keep = torch.arange(k, device=dev)[None, :] < num[:, None]  # [B, k]
    idx = (starts[:, :, None] + torch.arange(span_length, device=dev)).reshape(B, -1)  # [B, k*L]
    keep = keep[:, :, None].expand(B, k, span_length).reshape(B, -1)
    # max-reduce so that a dropped (keep=False) span never clears a kept one it overlaps
    mask = torch.zeros(B, T, dtype=torch.int8, device=dev).scatter_reduce_(
        1, idx.clamp(max=T - 1), keep.to(torch.int8), reduce="amax"
    )
    return mask.bool() & maskable


def random_mask(maskable: Tensor, *, ratio: float, generator: torch.Generator | None = None) -> Tensor:
    """MAE masking: exactly ``round(ratio * n)`` of the ``n`` maskable units of each row, uniformly.

    Args:
        maskable: ``[B, T]`` bool.
        ratio: fraction to mask (MAE uses 0.75 for images).

    Returns:
        ``[B, T]`` bool mask.
    """
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"ratio must be in [0, 1), got {ratio}")
    noise = torch.rand(maskable.shape, device=maskable.device, generator=generator)
    noise = noise.masked_fill(~maskable, 2.0)  # unmaskable units sort last
    rank = noise.argsort(1).argsort(1)  # rank of each unit in its row
    count = torch.round(ratio * maskable.sum(1).to(torch.float32)).long()
    return rank < count[:, None]


def block_mask_2d(
    batch_size: int,
    height: int,
    width: int,
    *,
    ratio: float = 0.4,
    min_block: int = 16,
    aspect: tuple[float, float] = (0.3, 1 / 0.3),
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> Tensor:
    """BEiT blockwise masking on an ``height x width`` patch grid.

    Rectangular blocks of random area (at least ``min_block`` patches) and log-uniform
    aspect ratio are added until ``ratio`` of the grid is masked (Bao et al. 2022, Alg. 1;
    BEiT uses ratio 0.4, min 16 patches, aspect in [0.3, 1/0.3]).

    Returns:
        ``[batch_size, height * width]`` bool mask (row-major patch order).
    """
    target = int(round(ratio * height * width))
    log_lo, log_hi = math.log(aspect[0]), math.log(aspect[1])
    out = torch.zeros(batch_size, height, width, dtype=torch.bool)

    def uniform(lo: float, hi: float) -> float:
        return lo + (hi - lo) * float(torch.rand((), generator=generator))

    for b in range(batch_size):
        grid = out[b]
        tries = 0
        while int(grid.sum()) < target and tries < 100:
            tries += 1
            remaining = target - int(grid.sum())
            area = uniform(min(min_block, remaining), max(min_block, remaining))
            r = math.exp(uniform(log_lo, log_hi))
            h, w = int(round(math.sqrt(area * r))), int(round(math.sqrt(area / r)))
            if not (1 <= h <= height and 1 <= w <= width):
                continue
            top = int(torch.randint(0, height - h + 1, (), generator=generator))
            left = int(torch.randint(0, width - w + 1, (), generator=generator))
            new = int((~grid[top : top + h, left : left + w]).sum())
            if 0 < new <= remaining:
                grid[top : top + h, left : left + w] = True
    return out.reshape(batch_size, height * width).to(device)
