"""Masking generators: pure functions on the ``[B, T]`` unit grid.

One generator serves every domain whose units fit its assumptions:

* :func:`bert_mask` -- i.i.d. token masking with 80/10/10 corruption (BERT, Devlin et al. 2019).
* :func:`span_mask` -- contiguous spans from sampled starts (wav2vec 2.0, Baevski et al. 2020).
* :func:`block_mask_2d` -- rectangular blocks on an ``H x W`` patch grid (BEiT, Bao et al. 2022).
* :func:`random_mask` -- an exact fraction of units per row (MAE, He et al. 2022).
* :func:`multi_block_mask` -- one context block and several target blocks on a patch grid (I-JEPA, Assran et al. 2023).

All functions take an optional ``torch.Generator`` and never touch units that are not
``maskable`` (padding, special tokens). Masks are ``bool`` with True = masked.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
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


# ---------------------------------------------------------------- I-JEPA's multi-block masks


def multi_block_size(
    height: int, width: int, scale: tuple[float, float], aspect: tuple[float, float], u: float
) -> tuple[int, int]:
    """I-JEPA's block size ``(rows, cols)`` on a ``height x width`` grid for one uniform draw ``u`` in ``[0, 1)``.

    As the official ``MaskCollator._sample_block_size`` (Assran et al. 2023), one draw sets both the scale
    and the aspect ratio: the block is meant to hold ``n = int(height * width * s)`` patches,
    ``s = scale[0] + u (scale[1] - scale[0])``, at the aspect ratio (rows / cols)
    ``r = aspect[0] + u (aspect[1] - aspect[0])``, so its sides are ``round(sqrt(n r))`` and
    ``round(sqrt(n / r))``. Each side is at least 1 and at most the grid's (the official code caps it one
    below the grid's, which with its corner draw leaves the last row and column out: facebookresearch/ijepa#40).
    """
    n = int(height * width * (scale[0] + u * (scale[1] - scale[0])))
    r = aspect[0] + u * (aspect[1] - aspect[0])
    return min(max(round(math.sqrt(n * r)), 1), height), min(max(round(math.sqrt(n / r)), 1), width)


@functools.lru_cache(maxsize=64)
def multi_block_sizes(
    height: int, width: int, scale: tuple[float, float], aspect: tuple[float, float]
) -> tuple[tuple[int, int], ...]:
    """Every size :func:`multi_block_size` gives for some ``u`` in ``[0, 1)``, found exactly.

    The size is a step function of ``u`` that changes only where ``n`` crosses an integer or where
    ``n r`` or ``n / r`` crosses a ``(j + 1/2)^2``: the sizes at those draws and between consecutive ones
    are all the sizes.
    """
    area = height * width
    ds, da = scale[1] - scale[0], aspect[1] - aspect[0]
    cuts = {0.0}
    if ds > 0:
        cuts.update((k / area - scale[0]) / ds for k in range(area + 1))
    if da > 0:
        for n in range(max(int(area * scale[0]), 1), int(area * scale[1]) + 1):
            for half in ((j + 0.5) ** 2 for j in range(max(height, width) + 1)):
                cuts.update(((half / n - aspect[0]) / da, (n / half - aspect[0]) / da))
    points = sorted(c for c in cuts if 0.0 <= c < 1.0)
    points += [(a + b) / 2 for a, b in zip(points, [*points[1:], 1.0])]
    return tuple(sorted({multi_block_size(height, width, scale, aspect, u) for u in points}))


def fewest_context_patches(height: int, width: int, target: tuple[int, int], context: tuple[int, int]) -> int:
    """The context patches a ``target`` block can always leave of a ``context`` block on a ``height x width`` grid.

    The minimum over the context block's places of the maximum over the target block's places of the
    context patches outside the target block. The overlap of two blocks is the product of their row and
    column overlaps, so it is computed per axis.
    """

    def least_overlap(side: int, t: int, c: int) -> Tensor:
        """``[side - c + 1]``: per start of the context side, the least overlap a target side can have with it."""
        target_starts = torch.arange(side - t + 1)[:, None]
        context_starts = torch.arange(side - c + 1)[None]
        overlap = torch.minimum(target_starts + t, context_starts + c) - torch.maximum(target_starts, context_starts)
        return overlap.clamp(min=0).min(0).values

    rows = least_overlap(height, target[0], context[0])
    cols = least_overlap(width, target[1], context[1])
    return context[0] * context[1] - int(rows.max()) * int(cols.max())


@functools.lru_cache(maxsize=64)
def multi_block_worst_case(
    height: int,
    width: int,
    target_scale: tuple[float, float],
    target_aspect: tuple[float, float],
    context_scale: tuple[float, float],
) -> tuple[int, tuple[int, int], tuple[int, int]]:
    """``(fewest, target size, context size)``: the least :func:`fewest_context_patches` over every pair of block
    sizes :func:`multi_block_mask` can draw with these settings, and the sizes that give it."""
    targets = multi_block_sizes(height, width, target_scale, target_aspect)
    contexts = multi_block_sizes(height, width, context_scale, (1.0, 1.0))
    return min((fewest_context_patches(height, width, t, c), t, c) for t in targets for c in contexts)


def _place_block(context: Tensor, size: tuple[int, int], min_keep: int, generator: torch.Generator | None) -> Tensor:
    """``[B, H, W]`` bool: a ``size`` block per image, placed uniformly among the places that leave at least
    ``min_keep`` of the image's ``context`` patches (``[B, H, W]`` bool) outside it."""
    b, height, width = context.shape
    h, w = size
    covered = F.avg_pool2d(context[:, None].float(), (h, w), stride=1, divisor_override=1)[:, 0]  # [B, H-h+1, W-w+1]
    valid = context.sum((1, 2)).view(b, 1, 1) - covered >= min_keep
    at = torch.rand(valid.shape, generator=generator).masked_fill(~valid, -1.0).flatten(1).argmax(1)  # uniform
    top, left = (at // valid.shape[2])[:, None], (at % valid.shape[2])[:, None]
    rows, cols = torch.arange(height)[None], torch.arange(width)[None]
    in_rows, in_cols = (rows >= top) & (rows < top + h), (cols >= left) & (cols < left + w)
    return in_rows[:, :, None] & in_cols[:, None, :]


def multi_block_mask(
    batch_size: int,
    height: int,
    width: int,
    *,
    num_targets: int = 4,
    target_scale: tuple[float, float] = (0.15, 0.2),
    target_aspect: tuple[float, float] = (0.75, 1.5),
    context_scale: tuple[float, float] = (0.85, 1.0),
    min_keep: int = 10,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> tuple[Tensor, Tensor]:
    """I-JEPA's multi-block masks on a ``height x width`` patch grid (Assran et al. 2023, sec. 3).

    One target block size and one context block size are drawn per call (:func:`multi_block_size`, the
    context's aspect ratio 1), so every image of the batch has blocks of the same sizes, as in the official
    collator. In each image the context block is placed uniformly, then the ``num_targets`` target blocks one
    after another, each uniformly among the places that leave at least ``min_keep`` context patches outside
    every target block so far (where that does not bind, the official independent uniform places; the
    place of the previous target block always qualifies). The target patches are removed from the context:
    target blocks may overlap one another, never the context. Every image then keeps the same number ``K``
    of context patches, the fewest any image of the batch has, chosen uniformly among its own (the official
    code keeps the first ``K`` in raster order).

    Args:
        batch_size: ``B``.
        height, width: the patch grid.
        num_targets: ``M`` target blocks per image (I-JEPA: 4).
        target_scale: range of a target block's share of the grid (I-JEPA: 0.15-0.2).
        target_aspect: range of a target block's rows / cols (I-JEPA: 0.75-1.5).
        context_scale: range of the context block's share of the grid (I-JEPA: 0.85-1.0).
        min_keep: fewest context patches of an image (I-JEPA's ``min_keep``: 10 on a 14x14 grid).
        generator: source of every draw, for reproducible masks.
        device: where the returned indices live.

    Returns:
        ``(context, targets)``: ``[B, K]`` ascending (row-major) indices of the context patches and
        ``[B, M, h * w]`` indices of each target block's patches, row-major within the block.

    Raises:
        ValueError: If ``num_targets < 1``, ``min_keep < 1``, or some pair of block sizes these settings can
            draw leaves fewer than ``min_keep`` context patches for some place of the context block
            (:func:`multi_block_worst_case`).
    """
    if num_targets < 1 or min_keep < 1:
        raise ValueError(f"num_targets and min_keep must be >= 1, got {num_targets} and {min_keep}")
    fewest, worst_target, worst_context = multi_block_worst_case(
        height, width, tuple(target_scale), tuple(target_aspect), tuple(context_scale)
    )
    if fewest < min_keep:
        raise ValueError(
            f"on a {height}x{width} grid a {worst_target[0]}x{worst_target[1]} target block (target_scale="
            f"{tuple(target_scale)}) can leave only {fewest} patches of a {worst_context[0]}x{worst_context[1]} "
            f"context block (context_scale={tuple(context_scale)}), below min_keep={min_keep}"
        )
    u_target = torch.rand(1, generator=generator).item()  # the official order: the target size, then the context's
    u_context = torch.rand(1, generator=generator).item()
    target_size = multi_block_size(height, width, target_scale, target_aspect, u_target)
    nothing = torch.zeros(batch_size, height, width, dtype=torch.bool)
    context = _place_block(nothing, multi_block_size(height, width, context_scale, (1.0, 1.0), u_context), 0, generator)
    targets = []
    for _ in range(num_targets):
        block = _place_block(context, target_size, min_keep, generator)
        context &= ~block
        targets.append(block.flatten(1).nonzero()[:, 1].view(batch_size, -1))  # row-major within the block
    context = context.flatten(1)
    keep = int(context.sum(1).min())
    scores = torch.rand(context.shape, generator=generator).masked_fill(~context, -1.0)
    kept = scores.topk(keep, dim=1).indices.sort(1).values
    return kept.to(device), torch.stack(targets, 1).to(device)
