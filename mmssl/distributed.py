"""Small, gradient-safe collectives used by objectives (no-ops in a single process).

The sums and the mean normaliser serve masked losses (a per-unit mean over the global batch);
the gathers serve contrastive and redundancy-reduction losses and MoCo's queue, and
:func:`gather_with_grad` explains why a loss that gathers needs no extra scaling under DDP.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
from torch import Tensor


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def process_rank() -> int:
    """Rank of this process, ``0`` when not distributed."""
    return dist.get_rank() if world_size() > 1 else 0


@torch.no_grad()
def global_sum(x: Tensor) -> Tensor:
    """Sum of ``x`` over all processes (a detached copy; ``x`` itself is untouched)."""
    x = x.detach().clone()
    if world_size() > 1:
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x


def global_mean_normalizer(count: Tensor) -> Tensor:
    """Divisor that turns a per-process *sum* loss into the global per-unit mean under DDP.

    DDP averages gradients over ``W`` processes, so a process loss of
    ``local_sum * W / global_count`` yields exactly the gradient of ``global_sum / global_count``:
    masked losses are normalised by the global number of masked units, not the local one.
    """
    return global_sum(count.to(torch.float32)).clamp(min=1.0) / world_size()


def _check_same_shape_everywhere(x: Tensor) -> None:
    """Fail on every process alike (instead of hanging) when processes pass different shapes."""
    shape = torch.tensor(x.shape, device=x.device)
    shapes = [torch.empty_like(shape) for _ in range(world_size())]
    dist.all_gather(shapes, shape)
    if any(not torch.equal(s, shapes[0]) for s in shapes):
        got = [tuple(s.tolist()) for s in shapes]
        raise ValueError(f"every process must gather the same shape (drop the last uneven batch), got {got}")


def gather_with_grad(x: Tensor) -> Tensor:
    """Concatenate ``x`` from every process along dim 0, letting gradients flow back.

    Built on :func:`torch.distributed.nn.functional.all_gather`, whose backward
    reduce-scatters (sums) the incoming gradients: process ``r`` receives
    ``sum_s dL_s/dx_r``, the gradient of its own slice summed over *every* process's loss.
    DDP then averages parameter gradients over the ``W`` processes, so the step follows
    the gradient of ``mean_s L_s``. Hence the rule for losses that gather:

    * a loss computed from *local anchors* against gathered candidates (NT-Xent, MoCo v3,
      a local mean) must be the mean over local anchors: the DDP mean over processes is
      then the mean over the global batch, exactly the one-process loss;
    * a loss computed *identically on every process* from the gathered batch (Barlow
      Twins, VICReg's variance/covariance) is already global: the DDP mean leaves it as is.

    Either way no extra ``* W`` or ``/ W`` is needed. Without DDP averaging (a hand-rolled
    all-reduce SUM of gradients) the step would be ``W`` times too large.

    Args:
        x: ``[B, ...]`` local tensor; every process must pass the same shape.

    Returns:
        ``[W * B, ...]``, process ``r``'s rows at ``r * B : (r + 1) * B``; ``x`` itself
        in a single process.

    Raises:
        ValueError: If the processes pass tensors of different shapes.
    """
    if world_size() == 1:
        return x
    _check_same_shape_everywhere(x)
    return torch.cat(dist_fn.all_gather(x), dim=0)


@torch.no_grad()
def gather_no_grad(x: Tensor) -> Tensor:
    """Concatenate a detached ``x`` from every process along dim 0 (for queues and keys).

    Args:
        x: ``[B, ...]`` local tensor; every process must pass the same shape.

    Returns:
        ``[W * B, ...]`` detached, process ``r``'s rows at ``r * B : (r + 1) * B``.

    Raises:
        ValueError: If the processes pass tensors of different shapes.
    """
    x = x.detach()
    if world_size() == 1:
        return x
    _check_same_shape_everywhere(x)
    out = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(out, x.contiguous())
    return torch.cat(out, dim=0)
