"""DGI's discriminator: one ``W s`` per summary, looked up per local, equals scoring repeated summaries."""

import pytest
import torch
import torch.nn.functional as F

from mmssl.objectives.dgi import dgi_logits, dgi_loss


def _reference(pos, neg, s_per_local, weight):
    """Eq. 1 of Velickovic et al. (2019) written out: BCE of h^T W s for every (local, its summary) pair."""
    pos_logits = torch.einsum("nd,de,ne->n", pos, weight, s_per_local)
    neg_logits = torch.einsum("nd,de,ne->n", neg, weight, s_per_local)
    return F.binary_cross_entropy_with_logits(
        pos_logits, torch.ones_like(pos_logits)
    ) + F.binary_cross_entropy_with_logits(neg_logits, torch.zeros_like(neg_logits))


def test_indexed_summaries_equal_the_written_out_loss_and_gradients() -> None:
    g = torch.Generator().manual_seed(0)
    pos, neg = torch.randn(7, 5, generator=g), torch.randn(7, 5, generator=g)
    summaries = torch.randn(3, 5, generator=g)  # three graphs (rows of the unit grid)
    index = torch.tensor([0, 0, 1, 1, 1, 2, 2])  # the row of each local
    weight = torch.randn(5, 5, generator=g, requires_grad=True)
    loss = dgi_loss(pos, neg, summaries, weight, index)
    (grad,) = torch.autograd.grad(loss, weight)
    ref = _reference(pos, neg, summaries[index], weight)
    (ref_grad,) = torch.autograd.grad(ref, weight)
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(grad, ref_grad)


def test_one_shared_summary_broadcasts_and_a_per_local_one_needs_no_index() -> None:
    g = torch.Generator().manual_seed(1)
    pos, neg, weight = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g), torch.randn(3, 3, generator=g)
    s = torch.randn(3, generator=g)
    shared = dgi_logits(pos, neg, s, weight)
    repeated = dgi_logits(pos, neg, s.expand(4, 3), weight)
    for a, b in zip(shared, repeated):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="pass index"):
        dgi_logits(pos, neg, torch.randn(2, 3), weight)
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        dgi_logits(pos, neg[:3], s, weight)
