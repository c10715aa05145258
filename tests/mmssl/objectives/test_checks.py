"""Shared objective checks: a span longer than the batch's rows is an error naming the key, before a silent zero loss."""

from __future__ import annotations

import pytest
import torch

from mmssl.masking import span_mask
from mmssl.objectives.checks import check_span_fits


def test_span_longer_than_the_rows_is_an_error_naming_the_key() -> None:
    maskable = torch.ones(3, 8, dtype=torch.bool)
    assert not span_mask(maskable, start_prob=0.5, span_length=10, min_spans=1).any()  # what the check prevents
    with pytest.raises(ValueError, match=r"objective.mask_length=10 is longer than the rows of this batch \(8 units\)"):
        check_span_fits(maskable, 10, "mask_length")
    check_span_fits(maskable, 8, "mask_length")  # a span of the full row fits
    assert span_mask(maskable, start_prob=0.5, span_length=8, min_spans=1).any()
