"""Pure losses of the joint-embedding and masked-modelling families, on ``[B, D]`` or ``[*, C]``.

Contrastive (SimCLR, MoCo v2/v3), bootstrap (BYOL, SimSiam), redundancy reduction
(Barlow Twins, VICReg) and masked-unit regression (MAE, SimMIM, data2vec). Every loss
is computed in at least float32. Losses that use the global batch gather with
:func:`mmssl.objectives.components.gather_with_grad`, whose docstring explains why they
need no extra scaling under DDP; each equals the one-process loss on the concatenated
global batch after DDP's gradient averaging.
"""

from __future__ import annotations

import functools
from typing import Callable, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor

from mmssl.distributed import global_mean_normalizer
from mmssl.objectives.components import gather_no_grad, gather_with_grad, process_rank

REGRESSION_LOSSES = ("mse", "l1", "smooth_l1")


_Loss = TypeVar("_Loss", bound=Callable)


def _full_precision(fn: _Loss) -> _Loss:
    """Run a loss outside autocast: under bf16/fp16 autocast its matmuls would be re-cast to half
    precision despite the float32 inputs (0.2-0.5% error measured on Barlow Twins, NT-Xent, VICReg)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        first = next((a for a in args if isinstance(a, Tensor)), None)
        if first is None or not torch.is_autocast_enabled(first.device.type):
            return fn(*args, **kwargs)
        with torch.autocast(first.device.type, enabled=False):
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _f32(x: Tensor) -> Tensor:
    """``x`` in at least float32 (half and bfloat16 are upcast, float64 kept)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _check_pair(a: Tensor, b: Tensor, names: str) -> None:
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(f"{names} must both be [B, D] of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")


def _check_temperature(temperature: float) -> None:
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


@_full_precision
def nt_xent(z1: Tensor, z2: Tensor, temperature: float = 0.5, gather: bool = True) -> Tensor:
    """SimCLR's normalized temperature-scaled cross entropy (Chen et al. 2020, eq. 1).

    With ``s_ij`` the cosine similarity of views ``i`` and ``j`` among the ``2N`` views of
    the global batch and ``p(i)`` the other view of ``i``'s sample::

        l_i = -log( exp(s_i,p(i) / tau) / sum_{k != i} exp(s_ik / tau) )

    so each anchor has one positive and ``2N - 2`` negatives. The loss is the mean of
    ``l_i`` over this process's ``2B`` anchors, which DDP's averaging turns into the mean
    over all ``2N``.

    Args:
        z1: ``[B, D]`` embeddings of the first view.
        z2: ``[B, D]`` embeddings of the second view of the same samples.
        temperature: ``tau`` (SimCLR's official runs: 0.1 on ImageNet, 0.5 on CIFAR-10).
        gather: take negatives from every process (no-op in one process).

    Returns:
        Scalar loss.

    Raises:
        ValueError: If the shapes differ or are not ``[B, D]``, or ``temperature <= 0``.
    """
    _check_pair(z1, z2, "z1 and z2")
    _check_temperature(temperature)
    b = z1.shape[0]
    anchors = F.normalize(_f32(torch.cat([z1, z2])), dim=1)  # [2B, D]: view 1 then view 2
    candidates = gather_with_grad(anchors) if gather else anchors  # [W * 2B, D], process r at r * 2B
    logits = anchors @ candidates.T / temperature  # [2B, W * 2B]
    local = torch.arange(2 * b, device=z1.device)
    offset = 2 * b * (process_rank() if gather else 0)
    logits[local, offset + local] = float("-inf")  # an anchor is not its own negative
    positives = offset + (local + b) % (2 * b)
    return F.cross_entropy(logits, positives)


@_full_precision
def info_nce(query: Tensor, key: Tensor, queue: Tensor | None = None, temperature: float = 0.2) -> Tensor:
    """InfoNCE of MoCo (He et al. 2020, eq. 1; v2 settings: Chen et al. 2020b).

    ``query``, ``key`` and ``queue`` are L2-normalised here. With a queue, the logits of
    query ``q_i`` are ``[q_i . k_i, q_i . queue_1, ..., q_i . queue_K] / tau`` (the other
    keys of the batch are not negatives); without one, ``[q_i . k_1, ..., q_i . k_B] / tau``
    with the positive at ``i``. The loss is the mean cross entropy with the positive as
    the class. Keys come from a momentum encoder and are detached here.

    Args:
        query: ``[B, D]`` queries (the gradient flows through these).
        key: ``[B, D]`` keys; ``key[i]`` is the positive of ``query[i]``.
        queue: ``[K, D]`` negative keys, e.g. :meth:`MemoryQueue.negatives`; ``None`` for
            in-batch negatives.
        temperature: ``tau`` (MoCo v2: 0.2).

    Returns:
        Scalar loss.

    Raises:
        ValueError: On mismatched shapes or ``temperature <= 0``.
    """
    _check_pair(query, key, "query and key")
    _check_temperature(temperature)
    q = F.normalize(_f32(query), dim=1)
    k = F.normalize(_f32(key.detach()), dim=1)
    if queue is None:
        logits = q @ k.T  # [B, B], positives on the diagonal
        labels = torch.arange(q.shape[0], device=q.device)
    else:
        if queue.ndim != 2 or queue.shape[1] != q.shape[1]:
            raise ValueError(f"queue must be [K, {q.shape[1]}], got {tuple(queue.shape)}")
        negatives = F.normalize(_f32(queue.detach()), dim=1)
        logits = torch.cat([(q * k).sum(1, keepdim=True), q @ negatives.T], dim=1)  # [B, 1 + K]
        labels = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
    return F.cross_entropy(logits / temperature, labels)


@_full_precision
def moco_v3_loss(q: Tensor, k: Tensor, temperature: float = 0.2, gather: bool = True) -> Tensor:
    """One direction of MoCo v3's contrastive loss (Chen, Xie & He 2021, Alg. 1).

    Keys of the whole global batch (detached, gathered from every process) are the
    candidates; the positive of local query ``i`` is key ``rank * B + i``::

        loss = 2 * tau * CE(q @ k_global.T / tau, rank * B + arange(B))

    The ``2 * tau`` factor follows the official code (it makes the gradient scale
    independent of ``tau``). MoCo v3 symmetrises: ``moco_v3_loss(q1, k2) + moco_v3_loss(q2, k1)``.

    Args:
        q: ``[B, D]`` queries from the base encoder and predictor.
        k: ``[B, D]`` keys from the momentum encoder (detached here).
        temperature: ``tau`` (MoCo v3: 0.2 for ViT, 1.0 for ResNet).
        gather: take keys from every process (no-op in one process).

    Returns:
        Scalar loss.

    Raises:
        ValueError: On mismatched shapes or ``temperature <= 0``.
    """
    _check_pair(q, k, "q and k")
    _check_temperature(temperature)
    q = F.normalize(_f32(q), dim=1)
    k = F.normalize(_f32(k.detach()), dim=1)
    keys = gather_no_grad(k) if gather else k  # [W * B, D]
    labels = torch.arange(q.shape[0], device=q.device) + q.shape[0] * (process_rank() if gather else 0)
    return F.cross_entropy(q @ keys.T / temperature, labels) * (2 * temperature)


def _cosine_to_target(p: Tensor, z: Tensor) -> Tensor:
    """Per-row cosine similarity of ``p`` to the stop-gradient target ``z``, ``[B]``."""
    _check_pair(p, z, "p and z")
    return (F.normalize(_f32(p), dim=1) * F.normalize(_f32(z.detach()), dim=1)).sum(1)


@_full_precision
def byol_loss(p: Tensor, z: Tensor) -> Tensor:
    """BYOL's regression loss (Grill et al. 2020, eq. 2): ``mean_i ||p_i/|p_i| - z_i/|z_i| ||^2``.

    Equal to ``2 - 2 cos(p_i, z_i)``, in ``[0, 4]``. ``z`` is the target network's
    projection and receives no gradient (stop-gradient applied here). BYOL symmetrises:
    ``byol_loss(p1, z2') + byol_loss(p2, z1')``.

    Args:
        p: ``[B, D]`` online predictions.
        z: ``[B, D]`` target projections.

    Returns:
        Scalar loss, the mean over the batch.

    Raises:
        ValueError: If the shapes differ or are not ``[B, D]``.
    """
    return (2.0 - 2.0 * _cosine_to_target(p, z)).mean()


@_full_precision
def simsiam_loss(p: Tensor, z: Tensor) -> Tensor:
    """SimSiam's negative cosine similarity (Chen & He 2021, eq. 1 with eq. 3): ``-mean_i cos(p_i, stopgrad(z_i))``.

    In ``[-1, 1]``. The stop-gradient on ``z`` is what prevents collapse (sec. 4.1) and is
    applied here. SimSiam symmetrises: ``(simsiam_loss(p1, z2) + simsiam_loss(p2, z1)) / 2``.

    Args:
        p: ``[B, D]`` predictor outputs.
        z: ``[B, D]`` projections of the other view (same network).

    Returns:
        Scalar loss, the mean over the batch.

    Raises:
        ValueError: If the shapes differ or are not ``[B, D]``.
    """
    return -_cosine_to_target(p, z).mean()


def _gather_pair(z1: Tensor, z2: Tensor, gather: bool) -> tuple[Tensor, Tensor]:
    z1, z2 = _f32(z1), _f32(z2)
    if gather:
        z1, z2 = gather_with_grad(z1), gather_with_grad(z2)
    if z1.shape[0] < 2:
        raise ValueError(f"the (global) batch must hold at least 2 samples, got {z1.shape[0]}")
    return z1, z2


def _off_diagonal(m: Tensor) -> Tensor:
    """The off-diagonal entries of a square matrix, flattened."""
    return m[~torch.eye(m.shape[0], dtype=torch.bool, device=m.device)]


@_full_precision
def barlow_twins_loss(z1: Tensor, z2: Tensor, lambda_offdiag: float = 5e-3, gather: bool = True) -> Tensor:
    """Barlow Twins (Zbontar et al. 2021, eq. 1 and 2).

    Each feature is batch-normalised over the *global* batch of ``N`` samples (zero mean,
    biased unit variance, eps 1e-5, no affine: the official code's SyncBatchNorm), then::

        C = z1_norm.T @ z2_norm / N                       # [D, D] cross-correlation
        loss = sum_i (1 - C_ii)^2 + lambda * sum_{i != j} C_ij^2

    Every process computes the same global loss, which DDP's averaging leaves unchanged.

    Args:
        z1: ``[B, D]`` projections of the first view.
        z2: ``[B, D]`` projections of the second view.
        lambda_offdiag: redundancy-reduction weight (paper: 5e-3).
        gather: normalise and correlate over the batch of every process.

    Returns:
        Scalar loss.

    Raises:
        ValueError: On mismatched shapes, a global batch below 2 or ``lambda_offdiag < 0``.
    """
    _check_pair(z1, z2, "z1 and z2")
    if lambda_offdiag < 0:
        raise ValueError(f"lambda_offdiag must be >= 0, got {lambda_offdiag}")
    z1, z2 = _gather_pair(z1, z2, gather)
    c = F.batch_norm(z1, None, None, training=True).T @ F.batch_norm(z2, None, None, training=True) / z1.shape[0]
    return (1.0 - c.diagonal()).pow(2).sum() + lambda_offdiag * _off_diagonal(c).pow(2).sum()


def _variance_term(z: Tensor, eps: float) -> Tensor:
    """Hinge on each feature's standard deviation: ``mean_j relu(1 - sqrt(Var(z_j) + eps))``."""
    return F.relu(1.0 - torch.sqrt(z.var(dim=0) + eps)).mean()


def _covariance_term(z: Tensor) -> Tensor:
    """Squared off-diagonal covariances divided by ``D``: ``sum_{i != j} Cov(z)_ij^2 / D``."""
    z = z - z.mean(dim=0)
    cov = z.T @ z / (z.shape[0] - 1)
    return _off_diagonal(cov).pow(2).sum() / z.shape[1]


@_full_precision
def vicreg_loss(
    z1: Tensor,
    z2: Tensor,
    sim_weight: float = 25.0,
    var_weight: float = 25.0,
    cov_weight: float = 1.0,
    eps: float = 1e-4,
    gather: bool = True,
) -> tuple[Tensor, dict[str, Tensor]]:
    """VICReg (Bardes, Ponce & LeCun 2022, eq. 1-6), as in the official code.

    * invariance ``s = mean((z1 - z2)^2)`` over the local batch and features (a local mean:
      DDP's averaging makes it the global one);
    * variance ``v = (h(z1) + h(z2)) / 2`` with ``h(z) = mean_j relu(1 - sqrt(Var(z_j) + eps))``;
    * covariance ``c = f(z1) + f(z2)`` with ``f(z) = sum_{i != j} Cov(z)_ij^2 / D``;

    variance and covariance use the unbiased estimates over the global batch, gathered
    from every process as the official code does. ``loss = lambda s + mu v + nu c``.

    Args:
        z1: ``[B, D]`` expander outputs of the first view.
        z2: ``[B, D]`` expander outputs of the second view.
        sim_weight: ``lambda`` (paper: 25).
        var_weight: ``mu`` (paper: 25).
        cov_weight: ``nu`` (paper: 1).
        eps: inside the square root of the variance (paper: 1e-4).
        gather: variance and covariance over the batch of every process.

    Returns:
        ``(loss, terms)``: the weighted total and the unweighted ``invariance``,
        ``variance`` and ``covariance`` terms.

    Raises:
        ValueError: On mismatched shapes, a global batch below 2, a negative weight or ``eps <= 0``.
    """
    _check_pair(z1, z2, "z1 and z2")
    for name, value in (("sim_weight", sim_weight), ("var_weight", var_weight), ("cov_weight", cov_weight)):
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
    if eps <= 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    invariance = F.mse_loss(_f32(z1), _f32(z2))
    g1, g2 = _gather_pair(z1, z2, gather)
    terms = {
        "invariance": invariance,
        "variance": (_variance_term(g1, eps) + _variance_term(g2, eps)) / 2,
        "covariance": _covariance_term(g1) + _covariance_term(g2),
    }
    loss = sim_weight * terms["invariance"] + var_weight * terms["variance"] + cov_weight * terms["covariance"]
    return loss, terms


def _normalize_units(target: Tensor, eps: float = 1e-6) -> Tensor:
    """MAE's ``norm_pix_loss``: each unit standardised over its own features (unbiased variance)."""
    mean = target.mean(dim=-1, keepdim=True)
    var = target.var(dim=-1, keepdim=True)
    return (target - mean) / (var + eps).sqrt()


@_full_precision
def masked_regression_loss(
    pred: Tensor,
    target: Tensor,
    mask: Tensor,
    norm_target: bool = False,
    loss: str = "mse",
    beta: float = 1.0,
) -> Tensor:
    """Reconstruction of masked units: MAE (He et al. 2022, sec. 3), SimMIM (Xie et al. 2022), data2vec.

    With ``M`` the masked units of the global batch and ``e`` the elementwise error::

        loss = sum_{u in M} mean_c e(pred_uc, target_uc) / |M|

    ``e`` is ``(p - t)^2`` (MAE), ``|p - t|`` (SimMIM) or smooth L1 with ``beta``
    (data2vec). ``norm_target`` standardises each target unit over its ``C`` features
    first (MAE's ``norm_pix_loss``: mean and unbiased variance, eps 1e-6). Units outside
    the mask cost nothing. ``|M|`` counts every process's masked units
    (:func:`mmssl.distributed.global_mean_normalizer`), so that a process with more masked
    units weighs more, exactly as in one process.

    Args:
        pred: ``[*, C]`` predictions per unit, e.g. ``[B, T, C]``.
        target: ``[*, C]`` targets (pixels of a patch, frame features, teacher latents);
            detached here.
        mask: ``[*]`` bool, True for the units to reconstruct.
        norm_target: standardise each target unit over its features.
        loss: ``"mse"``, ``"l1"`` or ``"smooth_l1"``.
        beta: smooth L1 transition point (ignored by the other losses).

    Returns:
        Scalar loss (0 with a zero gradient when nothing is masked anywhere).

    Raises:
        ValueError: On mismatched shapes, a non-bool mask, an unknown ``loss``, ``beta <= 0``
            or ``norm_target`` with single-feature units.
    """
    if pred.shape != target.shape or pred.ndim < 2:
        shapes = f"{tuple(pred.shape)} and {tuple(target.shape)}"
        raise ValueError(f"pred and target must both be [*, C] of one shape, got {shapes}")
    if mask.dtype != torch.bool or mask.shape != pred.shape[:-1]:
        raise ValueError(f"mask must be bool of shape {tuple(pred.shape[:-1])}, got {mask.dtype} {tuple(mask.shape)}")
    if loss not in REGRESSION_LOSSES:
        raise ValueError(f"loss must be one of {REGRESSION_LOSSES}, got {loss!r}")
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    if norm_target and pred.shape[-1] < 2:
        raise ValueError("norm_target needs units of at least 2 features")
    p, t = _f32(pred[mask]), _f32(target.detach()[mask])  # [N_masked, C]
    if norm_target:
        t = _normalize_units(t)
    if loss == "mse":
        err = F.mse_loss(p, t, reduction="none")
    elif loss == "l1":
        err = F.l1_loss(p, t, reduction="none")
    else:
        err = F.smooth_l1_loss(p, t, reduction="none", beta=beta)
    n = torch.tensor(float(p.shape[0]), device=pred.device)
    return err.mean(dim=-1).sum() / global_mean_normalizer(n)
