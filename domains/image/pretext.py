"""Pretext transforms for classification pretext tasks, batched and per sample.

Each function takes a batch of images ``[B, C, H, W]`` and returns the transformed images with
one int64 label per image, for the modality-agnostic ``pretext`` objective:

* :func:`rotate` — RotNet (Gidaris et al. 2018): rotate by ``k * 90`` degrees, label ``k``.
* :func:`jigsaw` — jigsaw puzzles (Noroozi & Favaro 2016): cut a ``g x g`` grid of tiles, shuffle
  them by one permutation of a fixed set, label = the permutation's index. As in the paper, each
  tile is a random crop a few pixels smaller than its cell (the ``gap``), so low-level shortcuts
  across tile edges (continuing lines, chromatic aberration) do not give the answer away. Unlike
  the paper's context-free network, the encoder sees the reassembled shuffled image at once, which
  is what an image encoder that is later fine-tuned on whole images is trained to read.

Permutation sets follow the paper's maximal-Hamming-distance selection
(:func:`hamming_permutations`); for a 2x2 grid all 24 permutations are used.
"""

from __future__ import annotations

import itertools

import torch
from torch import Tensor


def rotate(pixels: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Rotate each square image by ``k * 90`` degrees, ``k`` uniform in ``0..3``; returns ``(images, k)``."""
    if pixels.shape[-1] != pixels.shape[-2]:
        raise ValueError(f"rotation needs square images, got {tuple(pixels.shape[-2:])}")
    b = pixels.shape[0]
    k = torch.randint(0, 4, (b,), device=pixels.device, generator=generator)
    rotated = torch.stack([torch.rot90(pixels, r, dims=(2, 3)) for r in range(4)])  # [4, B, C, H, W]
    return rotated[k, torch.arange(b, device=pixels.device)], k


def rotate_all(pixels: Tensor) -> tuple[Tensor, Tensor]:
    """Every square image in all four rotations, rotation-major (RotNet's and S4L's batches).

    Gidaris et al. (2018) feed the four rotated copies of each image in the same batch; S4L-Rotation
    (Zhai et al. 2019) does too. Returns ``(images [4B, C, H, W], k int64 [4B])``: row ``r * B + i`` is
    image ``i`` rotated by ``r * 90`` degrees (counter-clockwise, ``torch.rot90``), labelled ``r``.
    """
    if pixels.shape[-1] != pixels.shape[-2]:
        raise ValueError(f"rotation needs square images, got {tuple(pixels.shape[-2:])}")
    b = pixels.shape[0]
    rotated = torch.cat([torch.rot90(pixels, r, dims=(2, 3)) for r in range(4)])
    return rotated, torch.arange(4, device=pixels.device).repeat_interleave(b)


def hamming_permutations(num_tiles: int, count: int, seed: int = 0) -> Tensor:
    """``count`` permutations of ``num_tiles`` tiles chosen greedily for maximal minimum Hamming distance.

    Noroozi & Favaro (2016), Algorithm 1: start from one random permutation, then repeatedly add
    the permutation whose minimum Hamming distance to the chosen set is largest. Deterministic
    for a seed. When ``count`` is every permutation (e.g. 24 for a 2x2 grid) they are returned in
    lexicographic order. Returns ``int64 [count, num_tiles]``; the identity is not forced in.
    """
    total = 1
    for i in range(2, num_tiles + 1):
        total *= i
    if not 1 <= count <= total:
        raise ValueError(f"a {num_tiles}-tile jigsaw has {total} permutations; cannot choose {count}")
    if num_tiles > 10:
        raise ValueError(f"num_tiles={num_tiles}: at most 10 tiles (a 3x3 grid has 9)")
    every = torch.tensor(list(itertools.permutations(range(num_tiles))), dtype=torch.int64)
    if count == total:
        return every
    generator = torch.Generator().manual_seed(seed)
    chosen = [int(torch.randint(0, total, (1,), generator=generator))]
    min_distance = (every != every[chosen[0]]).sum(1)
    for _ in range(count - 1):
        best = torch.nonzero(min_distance == min_distance.max()).flatten()
        pick = int(best[torch.randint(0, len(best), (1,), generator=generator)])
        chosen.append(pick)
        min_distance = torch.minimum(min_distance, (every != every[pick]).sum(1))
    return every[chosen]


def jigsaw(
    pixels: Tensor, permutations: Tensor, grid: int, gap: int = 2, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """Shuffle a ``grid x grid`` puzzle of each image by a random permutation from ``permutations``.

    The image's top-left ``grid * (H // grid)`` square is cut into cells of side ``t = H // grid``;
    from each cell a ``(t - gap)`` square is cropped at a random offset (per sample and tile), the
    crops are placed by the sample's permutation (output cell ``j`` holds source tile
    ``perm[j]``), each centred in its cell, and the border left by the gaps is 0. Pixels outside
    the ``grid * t`` square (when ``grid`` does not divide the size) are 0 too.

    Args:
        pixels: ``[B, C, H, W]`` images, ideally normalised so that 0 is the mean.
        permutations: ``int64 [P, grid * grid]`` (e.g. from :func:`hamming_permutations`).
        grid: tiles per side.
        gap: pixels trimmed from each tile, ``0 <= gap < H // grid``.

    Returns:
        ``(puzzles [B, C, H, W], labels int64 [B])``: the index into ``permutations`` of each
        sample's permutation.
    """
    b, c, h, w = pixels.shape
    tiles = grid * grid
    if permutations.ndim != 2 or permutations.shape[1] != tiles:
        raise ValueError(f"permutations must be [P, {tiles}] for a {grid}x{grid} grid, got {tuple(permutations.shape)}")
    t = min(h, w) // grid
    if not 0 <= gap < t:
        raise ValueError(f"gap={gap} must be in [0, {t}) for {t}-pixel tiles")
    device = pixels.device
    labels = torch.randint(0, permutations.shape[0], (b,), device=device, generator=generator)
    perm = permutations.to(device)[labels]  # [B, tiles]: output cell j <- source tile perm[:, j]
    cells = pixels[:, :, : grid * t, : grid * t].reshape(b, c, grid, t, grid, t).permute(0, 2, 4, 1, 3, 5)
    cells = cells.reshape(b, tiles, c, t, t)
    cells = torch.gather(cells, 1, perm.view(b, tiles, 1, 1, 1).expand(-1, -1, c, t, t))
    s = t - gap  # crop each (moved) tile at a random offset
    offsets = torch.randint(0, gap + 1, (2, b, tiles), device=device, generator=generator)
    rows = (offsets[0, ..., None] + torch.arange(s, device=device)).view(b, tiles, 1, s, 1).expand(-1, -1, c, -1, t)
    crops = torch.gather(cells, 3, rows)  # [B, tiles, C, s, t]
    cols = (offsets[1, ..., None] + torch.arange(s, device=device)).view(b, tiles, 1, 1, s).expand(-1, -1, c, s, -1)
    crops = torch.gather(crops, 4, cols)  # [B, tiles, C, s, s]
    lo = gap // 2
    placed = pixels.new_zeros(b, tiles, c, t, t)
    placed[..., lo : lo + s, lo : lo + s] = crops
    placed = placed.view(b, grid, grid, c, t, t).permute(0, 3, 1, 4, 2, 5).reshape(b, c, grid * t, grid * t)
    out = pixels.new_zeros(b, c, h, w)
    out[:, :, : grid * t, : grid * t] = placed
    return out, labels
