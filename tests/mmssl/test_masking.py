"""Statistics and invariants of the masking generators."""

import math

import pytest
import torch

from mmssl.masking import bert_mask, block_mask_2d, random_mask, span_mask


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class TestBertMask:
    def setup_method(self) -> None:
        self.ids = torch.randint(10, 1000, (256, 128), generator=_gen(1))
        self.maskable = torch.ones_like(self.ids, dtype=torch.bool)
        self.maskable[:, 0] = self.maskable[:, -1] = False  # [CLS] ... [SEP]
        self.maskable[:64, 100:] = False  # padding tail

    def test_rate_and_80_10_10(self) -> None:
        mask, x = bert_mask(self.ids, self.maskable, mask_token_id=4, vocab_size=1000, generator=_gen())
        n = mask.sum().item()
        assert n / self.maskable.sum().item() == pytest.approx(0.15, abs=0.005)
        to_mask = (x == 4) & mask
        kept = (x == self.ids) & mask
        random = mask & ~to_mask & ~kept
        assert to_mask.sum().item() / n == pytest.approx(0.8, abs=0.01)
        # a random replacement equals the original with prob 1/1000: "kept" absorbs those
        assert kept.sum().item() / n == pytest.approx(0.1 + 0.1 / 1000, abs=0.01)
        assert random.sum().item() / n == pytest.approx(0.1, abs=0.01)

    def test_never_special_or_padding(self) -> None:
        mask, x = bert_mask(self.ids, self.maskable, mask_token_id=4, vocab_size=1000, generator=_gen())
        assert not mask[~self.maskable].any()
        assert torch.equal(x[~self.maskable], self.ids[~self.maskable])
        assert torch.equal(x[~mask], self.ids[~mask])  # nothing outside the mask changes

    def test_deterministic_with_generator(self) -> None:
        a = bert_mask(self.ids, self.maskable, mask_token_id=4, vocab_size=1000, generator=_gen(3))
        b = bert_mask(self.ids, self.maskable, mask_token_id=4, vocab_size=1000, generator=_gen(3))
        assert all(torch.equal(u, v) for u, v in zip(a, b))

    def test_rejects_bad_probabilities(self) -> None:
        with pytest.raises(ValueError, match="mask_prob"):
            bert_mask(self.ids, self.maskable, mask_token_id=4, vocab_size=1000, mask_prob=0.0)
        with pytest.raises(ValueError, match="mask_token_frac"):
            bert_mask(
                self.ids, self.maskable, mask_token_id=4, vocab_size=1000, mask_token_frac=0.95, random_token_frac=0.1
            )


class TestSpanMask:
    def test_coverage_matches_wav2vec2(self) -> None:
        # starts without replacement at rate p, span L: coverage ~ 1 - (1 - p)^L away from edges (~49% for 0.065/10)
        maskable = torch.ones(512, 500, dtype=torch.bool)
        mask = span_mask(maskable, start_prob=0.065, span_length=10, generator=_gen())
        expected = 1 - (1 - 0.065) ** 10
        assert mask.float().mean().item() == pytest.approx(expected, abs=0.03)

    def test_spans_are_runs_of_at_least_L(self) -> None:
        maskable = torch.ones(64, 200, dtype=torch.bool)
        mask = span_mask(maskable, start_prob=0.02, span_length=7, generator=_gen(2))
        for row in mask:
            padded = torch.cat([torch.tensor([False]), row, torch.tensor([False])]).int()
            edges = padded.diff()
            starts, ends = (edges == 1).nonzero().flatten(), (edges == -1).nonzero().flatten()
            assert len(starts) > 0
            assert ((ends - starts) >= 7).all()

    def test_respects_padding_and_min_spans(self) -> None:
        maskable = torch.zeros(32, 100, dtype=torch.bool)
        lengths = torch.randint(20, 100, (32,), generator=_gen(4))
        for i, n in enumerate(lengths):
            maskable[i, :n] = True
        mask = span_mask(maskable, start_prob=0.0, span_length=5, min_spans=2, generator=_gen())
        assert not mask[~maskable].any()
        assert (mask.sum(1) >= 5).all()  # at least one full span per row (two, possibly overlapping)

    def test_row_too_short_for_a_span(self) -> None:
        maskable = torch.zeros(2, 20, dtype=torch.bool)
        maskable[:, :3] = True
        assert not span_mask(maskable, start_prob=0.5, span_length=10, min_spans=1).any()


class TestRandomMask:
    def test_exact_count_per_row(self) -> None:
        maskable = torch.ones(16, 196, dtype=torch.bool)
        maskable[8:, 150:] = False
        mask = random_mask(maskable, ratio=0.75, generator=_gen())
        assert (mask[:8].sum(1) == round(0.75 * 196)).all()
        assert (mask[8:].sum(1) == round(0.75 * 150)).all()
        assert not mask[~maskable].any()

    def test_uniform_over_positions(self) -> None:
        mask = random_mask(torch.ones(4000, 16, dtype=torch.bool), ratio=0.5, generator=_gen())
        assert mask.float().mean(0).sub(0.5).abs().max().item() < 0.05


class TestBlockMask2d:
    def test_ratio_and_shape(self) -> None:
        mask = block_mask_2d(64, 14, 14, ratio=0.4, generator=_gen())
        assert mask.shape == (64, 196)
        frac = mask.float().mean(1)
        assert (frac <= 0.4 + 1e-6).all()  # BEiT never overshoots its budget
        assert frac.mean().item() == pytest.approx(0.4, abs=0.05)

    def test_masks_are_blocks_not_scatter(self) -> None:
        # a blockwise mask has far more masked neighbours than i.i.d. masking of the same rate
        mask = block_mask_2d(64, 14, 14, ratio=0.4, generator=_gen(5)).view(64, 14, 14).float()
        right = (mask[:, :, 1:] * mask[:, :, :-1]).sum() / mask[:, :, :-1].sum()
        assert right.item() > 0.7  # i.i.d. would give ~0.4
        assert math.isclose(block_mask_2d(1, 4, 4, ratio=0.0).float().sum().item(), 0.0)
