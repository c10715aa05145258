"""Small, gradient-safe collectives used by objectives (no-ops in a single process)."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


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
