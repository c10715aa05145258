"""wav2vec 2.0 contrastive-loss helpers: the vectorised equal-target detection."""

import torch

from mmssl.objectives.wav2vec2 import _identical


def _naive_identical(q: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    b, m, _ = q.shape
    out = torch.zeros(b, m, m, dtype=torch.bool)
    for r in range(b):
        for i in range(m):
            for j in range(m):
                out[r, i, j] = bool(valid[r, i] and valid[r, j] and torch.equal(q[r, i], q[r, j]))
    return out


def test_identical_matches_a_pairwise_loop_with_repeated_codes_and_padding() -> None:
    g = torch.Generator().manual_seed(0)
    codebook = torch.randn(3, 8, generator=g)  # few codes: many bitwise-equal targets, as in a collapsed quantizer
    q = codebook[torch.randint(0, 3, (4, 6), generator=g)]  # [B=4, M=6, D=8]
    q[1, 2] += 1e-7  # nearly but not exactly equal: must not count
    valid = torch.arange(6)[None, :] < torch.tensor([6, 4, 1, 0])[:, None]
    expected = _naive_identical(q, valid)
    assert expected.sum() > valid.sum()  # the case has equal pairs besides the diagonal
    for max_elements in (1 << 26, 8 * 6, 1):  # one chunk, several chunks, one query row at a time
        assert torch.equal(_identical(q, valid, max_elements=max_elements), expected)


def test_identical_of_an_empty_batch() -> None:
    assert _identical(torch.zeros(2, 0, 4), torch.zeros(2, 0, dtype=torch.bool)).shape == (2, 0, 0)
