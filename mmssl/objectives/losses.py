"""Loss pieces that several objectives use: full precision, argument checks, masked regression, unit classification.

Every loss is computed in at least float32. Losses that use the global batch gather with
:func:`mmssl.distributed.gather_with_grad`, whose docstring explains why they need no extra
scaling under DDP; each equals the one-process loss on the concatenated global batch after
DDP's gradient averaging. Losses that normalise by a count of units use the global count
(:func:`mmssl.distributed.global_mean_normalizer`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor

from mmssl.distributed import gather_with_grad, global_mean_normalizer

REGRESSION_LOSSES = ("mse", "l1", "smooth_l1")


_Loss = TypeVar("_Loss", bound=Callable)


def full_precision(fn: _Loss) -> _Loss:
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


def f32(x: Tensor) -> Tensor:
    """``x`` in at least float32 (half and bfloat16 are upcast, float64 kept)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def check_pair(a: Tensor, b: Tensor, names: str) -> None:
    """``a`` and ``b`` are both ``[B, D]`` of one shape (``names`` says which arguments they are)."""
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(f"{names} must both be [B, D] of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")


def check_temperature(temperature: float) -> None:
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


def cosine_to_target(p: Tensor, z: Tensor) -> Tensor:
    """Per-row cosine similarity of ``p`` to the stop-gradient target ``z``, ``[B]`` (BYOL, SimSiam)."""
    check_pair(p, z, "p and z")
    return (F.normalize(f32(p), dim=1) * F.normalize(f32(z.detach()), dim=1)).sum(1)


def gather_pair(z1: Tensor, z2: Tensor, gather: bool) -> tuple[Tensor, Tensor]:
    """Both views' ``[B, D]`` in float32, gathered over every process when ``gather`` (Barlow Twins, VICReg).

    Raises:
        ValueError: If the (global) batch holds fewer than 2 samples.
    """
    z1, z2 = f32(z1), f32(z2)
    if gather:
        z1, z2 = gather_with_grad(z1), gather_with_grad(z2)
    if z1.shape[0] < 2:
        raise ValueError(f"the (global) batch must hold at least 2 samples, got {z1.shape[0]}")
    return z1, z2


def off_diagonal(m: Tensor) -> Tensor:
    """The off-diagonal entries of a square matrix, flattened."""
    return m[~torch.eye(m.shape[0], dtype=torch.bool, device=m.device)]


def _normalize_units(target: Tensor, eps: float = 1e-6) -> Tensor:
    """MAE's ``norm_pix_loss``: each unit standardised over its own features (unbiased variance)."""
    mean = target.mean(dim=-1, keepdim=True)
    var = target.var(dim=-1, keepdim=True)
    return (target - mean) / (var + eps).sqrt()


@full_precision
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
    p, t = f32(pred[mask]), f32(target.detach()[mask])  # [N_masked, C]
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


def unit_classification_loss(logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """Cross-entropy summed over ``N`` predicted units, divided by the global unit count (MLM, CLM, HuBERT, BEST-RQ).

    Args:
        logits: ``[N, V]`` scores at the predicted positions only.
        targets: ``[N]`` unit ids.

    Returns:
        ``(loss, accuracy)``: the normalised loss and the local top-1 accuracy (detached).
    """
    n = torch.tensor(float(targets.numel()), device=logits.device)
    logits = logits.float()  # the loss in float32 under autocast (argmax is also faster there on CPU)
    loss = F.cross_entropy(logits, targets, reduction="sum") / global_mean_normalizer(n)
    acc = (
        (logits.detach().argmax(-1) == targets).float().mean()
        if targets.numel()
        else torch.zeros((), device=logits.device)
    )
    return loss, acc.detach()
