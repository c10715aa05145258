"""The MI estimators and the bilinear discriminator shared by DGI and DIM, against their formulas written out."""

from __future__ import annotations

import torch

from mmssl.objectives.infomax import dv_loss, infonce_loss, jsd_loss, summary_projection
from tests.mmssl.objectives.loss_checks import assert_same_loss_and_grads


def _scores(seed: int, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).requires_grad_()


def test_jsd_is_the_softplus_form_of_the_jensen_shannon_bound() -> None:
    """Hjelm et al. (2019) eq. 4: I_JSD = E_P[-sp(-T)] - E_N[sp(T)]; the loss is -I_JSD (here without 2 log 2)."""
    pos, neg = _scores(0, 7), _scores(1, 11)
    expected = torch.stack([torch.log1p(torch.exp(-p)) for p in pos]).mean()
    expected = expected + torch.stack([torch.log1p(torch.exp(n)) for n in neg]).mean()
    assert_same_loss_and_grads(jsd_loss(pos, neg), expected, pos, neg)


def test_dv_is_the_donsker_varadhan_bound() -> None:
    """MINE / DIM eq. 2: I_DV = E_P[T] - log E_N[exp T]."""
    pos, neg = _scores(2, 5), _scores(3, 4, 3)
    expected = torch.log(torch.exp(neg).mean()) - pos.mean()
    assert_same_loss_and_grads(dv_loss(pos, neg), expected, pos, neg)


def test_infonce_classifies_each_positive_against_its_negatives_and_skips_masked_ones() -> None:
    pos, neg = _scores(4, 3, 2), _scores(5, 3, 1, 4)  # negatives shared by the 2 positives of each row
    excluded = torch.tensor([[False, True, False, False], [False] * 4, [True, False, False, True]])
    masked = neg.masked_fill(excluded[:, None], float("-inf"))
    mask = torch.tensor([[True, True], [True, False], [False, True]])
    terms = []
    for i in range(3):
        candidates = [neg[i, 0, k] for k in range(4) if not excluded[i, k]]
        for j in range(2):
            if mask[i, j]:
                denom = torch.exp(pos[i, j]) + sum(torch.exp(c) for c in candidates)
                terms.append(-torch.log(torch.exp(pos[i, j]) / denom))
    assert_same_loss_and_grads(infonce_loss(pos, masked, mask=mask), torch.stack(terms).mean(), pos, neg)
    full = infonce_loss(pos, neg)
    expected = (torch.logsumexp(torch.cat([pos[..., None], neg.expand(3, 2, 4)], -1), -1) - pos).mean()
    torch.testing.assert_close(full, expected.float())


def test_summary_projection_is_w_s_per_summary() -> None:
    g = torch.Generator().manual_seed(6)
    summaries, weight = torch.randn(3, 5, generator=g), torch.randn(5, 5, generator=g)
    projected = summary_projection(summaries, weight)
    for j in range(3):
        torch.testing.assert_close(projected[j], weight @ summaries[j])
    torch.testing.assert_close(summary_projection(summaries[0], weight), projected[:1])
