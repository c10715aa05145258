"""What the mutual-information objectives share: the bilinear discriminator and the MI lower-bound estimators.

Deep Graph Infomax (:mod:`mmssl.objectives.dgi`) and Deep InfoMax (:mod:`mmssl.objectives.dim`)
train a critic ``T(x, y)`` to tell pairs drawn from the joint distribution (a unit and the
summary of its own input) from pairs of the product of marginals (a unit and another input's
summary), and maximise a lower bound on the mutual information it estimates (Hjelm et al. 2019,
sec. 3.1; Velickovic et al. 2019, eq. 1). The critic's scores ("logits") go into one of:

* :func:`jsd_loss` -- the Jensen-Shannon estimator, ``E_P[softplus(-T)] + E_N[softplus(T)]``,
  i.e. binary cross entropy of positives against negatives (DGI's eq. 1, DIM's eq. 4 up to the
  constant ``2 log 2``);
* :func:`infonce_loss` -- InfoNCE (Oord et al. 2018; DIM's eq. 5): each positive against its negatives;
* :func:`dv_loss` -- the Donsker-Varadhan bound of MINE (Belghazi et al. 2018; DIM's eq. 2).

Each returns a loss to minimise, the negative of the estimate (JSD without its constant).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

ESTIMATORS = ("jsd", "infonce", "dv")


def summary_projection(summary: Tensor, weight: Tensor) -> Tensor:
    """``W s`` for every summary: the summary side of the bilinear discriminator ``D(h, s) = h^T W s``.

    Computed once per summary (``[S, D] x [D, D]``) and then dotted with many locals, rather than
    scoring ``[N, D]`` repeated summaries (an ``N x D x D`` product).

    Args:
        summary: ``[S, D]`` summaries (``[D]`` for one).
        weight: ``[D, D]`` the bilinear weight ``W``.

    Returns:
        ``[S, D]`` in float32, row ``j`` is ``W s_j``.
    """
    return summary.float().reshape(-1, summary.shape[-1]) @ weight.float().T


def jsd_loss(pos_logits: Tensor, neg_logits: Tensor) -> Tensor:
    """The Jensen-Shannon MI estimator as a loss: ``mean softplus(-T_pos) + mean softplus(T_neg)``.

    Written as binary cross entropy with logits (``BCE(x, 1) = softplus(-x)``, ``BCE(x, 0) = softplus(x)``),
    the two means summed as PyG's ``DeepGraphInfomax.loss`` does. DIM's Fenchel-dual form (Hjelm et al.
    2019, eq. 4) is ``2 log 2`` minus this.

    Args:
        pos_logits: ``[N]`` (any shape) critic scores of pairs from the joint distribution.
        neg_logits: ``[M]`` (any shape) critic scores of pairs from the product of marginals.

    Returns:
        Scalar loss.
    """
    return F.binary_cross_entropy_with_logits(
        pos_logits, torch.ones_like(pos_logits)
    ) + F.binary_cross_entropy_with_logits(neg_logits, torch.zeros_like(neg_logits))


def infonce_loss(pos_logits: Tensor, neg_logits: Tensor, mask: Tensor | None = None) -> Tensor:
    """InfoNCE as a loss: ``mean_i [log(exp(T_i) + sum_k exp(T_ik)) - T_i]``.

    Each positive is classified against its own negatives; entries of ``neg_logits`` set to
    ``-inf`` are no negatives (a pair that is positive too).

    Args:
        pos_logits: ``[...]`` one score per positive pair.
        neg_logits: ``[..., K]`` its ``K`` negatives' scores, broadcastable to ``pos_logits.shape + (K,)``
            (one set shared by several positives: DIM scores every location of an image against the
            same negatives).
        mask: ``[...]`` bool, the positives to average over (None: all; False at padding).

    Returns:
        Scalar loss.
    """
    pos = pos_logits.float()
    losses = torch.logaddexp(pos, torch.logsumexp(neg_logits.float(), dim=-1)) - pos
    return losses.mean() if mask is None else losses[mask].mean()


def dv_loss(pos_logits: Tensor, neg_logits: Tensor) -> Tensor:
    """The Donsker-Varadhan bound as a loss: ``log mean exp(T_neg) - mean T_pos`` (MINE; DIM's eq. 2).

    Args:
        pos_logits: ``[N]`` (any shape) scores of joint pairs.
        neg_logits: ``[M]`` (any shape) scores of marginal pairs.

    Returns:
        Scalar loss.
    """
    neg = neg_logits.float().reshape(-1)
    return torch.logsumexp(neg, dim=0) - math.log(neg.numel()) - pos_logits.float().mean()
