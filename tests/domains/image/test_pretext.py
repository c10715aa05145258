"""Pretext transforms: rotation and jigsaw puzzles are exact, per sample and seeded; permutation sets
follow the maximal-Hamming selection; the jigsaw task is learnable through the pretext objective."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from domains.image.data import ImageArrays
from domains.image.domain import ImageDataConfig, ImageRows, ViewTransform, image_collate, make_processor
from domains.image.encoders import ImageEncoderConfig, build_image_encoder
from domains.image.pretext import hamming_permutations, jigsaw, rotate
from mmssl.objectives.base import SSLModel
from mmssl.objectives.pretext import Pretext, PretextConfig
from tests.fitting import fit


def _images(b: int = 6, c: int = 2, side: int = 12) -> torch.Tensor:
    return torch.randn(b, c, side, side, generator=torch.Generator().manual_seed(0))


def _min_pairwise_hamming(perms: torch.Tensor) -> int:
    d = (perms[:, None, :] != perms[None, :, :]).sum(-1)
    return int(d[~torch.eye(len(perms), dtype=torch.bool)].min())


def test_every_2x2_permutation_in_lexicographic_order() -> None:
    perms = hamming_permutations(4, 24)
    assert perms.tolist() == [list(p) for p in itertools.permutations(range(4))]


def test_hamming_selection_is_deterministic_unique_and_spread_out() -> None:
    perms = hamming_permutations(9, 30, seed=3)
    assert perms.shape == (30, 9) and perms.dtype == torch.int64
    assert torch.equal(perms, hamming_permutations(9, 30, seed=3))
    assert len({tuple(p) for p in perms.tolist()}) == 30
    assert all(sorted(p) == list(range(9)) for p in perms.tolist())
    # greedy max-min selection beats random sets of the same size on the minimum distance
    g = torch.Generator().manual_seed(0)
    random_sets = [torch.stack([torch.randperm(9, generator=g) for _ in range(30)]) for _ in range(20)]
    assert _min_pairwise_hamming(perms) >= 6 > max(_min_pairwise_hamming(s) for s in random_sets) - 1
    with pytest.raises(ValueError, match="24 permutations; cannot choose 25"):
        hamming_permutations(4, 25)


def test_rotate_labels_undo_the_rotation() -> None:
    images = _images()
    rotated, k = rotate(images, torch.Generator().manual_seed(1))
    assert k.dtype == torch.int64 and len(set(k.tolist())) > 1
    for i in range(len(images)):
        torch.testing.assert_close(torch.rot90(rotated[i], -int(k[i]), dims=(1, 2)), images[i])
    with pytest.raises(ValueError, match="square"):
        rotate(torch.zeros(1, 1, 4, 6))


@pytest.mark.parametrize("grid", [2, 3])
def test_jigsaw_without_gap_is_a_tile_permutation_the_label_undoes(grid: int) -> None:
    images, perms = _images(b=8), hamming_permutations(grid * grid, 10 if grid == 3 else 24)
    puzzles, labels = jigsaw(images, perms, grid, gap=0, generator=torch.Generator().manual_seed(0))
    assert puzzles.shape == images.shape and labels.dtype == torch.int64 and len(set(labels.tolist())) > 1
    t = 12 // grid
    for i in range(len(images)):
        perm = perms[labels[i]].tolist()
        for j in range(grid * grid):  # output cell j holds source tile perm[j]
            src = perm[j]
            out_cell = puzzles[i, :, (j // grid) * t : (j // grid + 1) * t, (j % grid) * t : (j % grid + 1) * t]
            src_cell = images[i, :, (src // grid) * t : (src // grid + 1) * t, (src % grid) * t : (src % grid + 1) * t]
            torch.testing.assert_close(out_cell, src_cell)


def test_jigsaw_gap_crops_each_tile_at_its_own_offset() -> None:
    images, perms = _images(b=4, side=14), hamming_permutations(4, 24)
    puzzles, labels = jigsaw(images, perms, grid=2, gap=3, generator=torch.Generator().manual_seed(2))
    t, s, lo = 7, 4, 1
    offsets = set()
    for i in range(4):
        for j, src in enumerate(perms[labels[i]].tolist()):
            cell = puzzles[i, :, (j // 2) * t : (j // 2 + 1) * t, (j % 2) * t : (j % 2 + 1) * t]
            crop = cell[:, lo : lo + s, lo : lo + s]
            border = cell.clone()
            border[:, lo : lo + s, lo : lo + s] = 0
            assert not border.any()  # only the crop is non-zero
            tile = images[i, :, (src // 2) * t : (src // 2 + 1) * t, (src % 2) * t : (src % 2 + 1) * t]
            found = [
                (dy, dx) for dy in range(4) for dx in range(4) if torch.equal(tile[:, dy : dy + s, dx : dx + s], crop)
            ]
            assert len(found) == 1
            offsets.add(found[0])
    assert len(offsets) > 3  # offsets are drawn per sample and tile


def test_jigsaw_on_a_size_the_grid_does_not_divide_and_errors() -> None:
    images = _images(b=2, side=28)
    puzzles, _ = jigsaw(images, hamming_permutations(9, 5), grid=3, gap=1)
    assert puzzles.shape == (2, 2, 28, 28) and puzzles[..., 27:, :].abs().sum() == 0
    with pytest.raises(ValueError, match=r"permutations must be \[P, 4\]"):
        jigsaw(images, hamming_permutations(9, 5), grid=2)
    with pytest.raises(ValueError, match="gap=14"):
        jigsaw(images, hamming_permutations(4, 24), grid=2, gap=14)


def _batch(n: int = 16):
    g = torch.Generator().manual_seed(0)
    arrays = ImageArrays(
        images=torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=g),
        labels=None,
        label_names=None,
        source="test",
    )
    processor = make_processor(arrays, patch_size=4)
    return image_collate(processor, with_labels=False)([ImageRows(arrays)[i] for i in range(n)]), processor


def test_jigsaw_view_transform_labels_and_config_errors() -> None:
    batch, processor = _batch()
    torch.manual_seed(0)
    out = ViewTransform(ImageDataConfig(views="jigsaw"), processor)(batch)
    labels = out.extras["pretext_labels"]
    assert out.units.shape == batch.units.shape and labels.shape == (16,) and int(labels.max()) < 24
    with pytest.raises(ValueError, match="data.jigsaw_permutations"):
        ViewTransform(ImageDataConfig(views="jigsaw", jigsaw_grid=2, jigsaw_permutations=30), processor)
    with pytest.raises(ValueError, match="data.jigsaw_grid"):
        ImageDataConfig(views="jigsaw", jigsaw_grid=1)


def test_jigsaw_is_learnable_with_the_pretext_objective() -> None:
    """A tiny ResNet fits the 24-way puzzle labels of a fixed batch: loss falls well below log(24)."""
    torch.manual_seed(0)
    batch, processor = _batch(32)
    puzzles = ViewTransform(ImageDataConfig(views="jigsaw"), processor)(batch)
    encoder = build_image_encoder(ImageEncoderConfig(arch="resnet", resnet_width=8, patch_size=4), (28, 28), 1)
    objective = Pretext(PretextConfig(num_classes=24), encoder)
    losses = fit(SSLModel(encoder, objective), puzzles, 40, lr=3e-3, optimizer=torch.optim.Adam)
    assert losses[0] > 0.8 * math.log(24) and losses[-1] < 0.5 * losses[0]
