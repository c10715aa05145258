"""MoCo's queue of past keys, shared by MoCo v2 and GPT-GNN's adaptive queue of negatives."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmssl.distributed import gather_no_grad


class MemoryQueue(nn.Module):
    """MoCo's first-in-first-out queue of keys (He et al. 2020, sec. 3.2), kept as buffers.

    ``queue`` (``[size, dim]``) starts as random unit vectors like MoCo's; ``ptr`` is the
    slot the next key goes to, i.e. the oldest key. Both are persistent buffers, so a
    resumed run continues with the same negatives. Keys from every process are
    enqueued, so the queue is identical on all of them.

    Args:
        dim: key features.
        size: number of keys kept (MoCo: 65536); need not be a multiple of the batch.

    Raises:
        ValueError: If ``dim`` or ``size`` is not positive.
    """

    queue: Tensor
    ptr: Tensor

    def __init__(self, dim: int, size: int) -> None:
        super().__init__()
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        self.register_buffer("queue", F.normalize(torch.randn(size, dim), dim=1))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))

    def negatives(self) -> Tensor:
        """A detached copy of the queue, ``[size, dim]``, safe to use before :meth:`enqueue`.

        The copy matters: the loss's backward needs the keys it saw, and
        :meth:`enqueue` overwrites the buffer in place before that backward runs.
        """
        return self.queue.detach().clone()

    @torch.no_grad()
    def enqueue(self, keys: Tensor) -> None:
        """Gather ``keys`` from every process and write them over the oldest entries.

        Writes wrap around the end of the queue; if more keys than ``size`` arrive at
        once, only the newest ``size`` are kept.

        Args:
            keys: ``[B, dim]`` local keys (detached here).

        Raises:
            ValueError: If ``keys`` is not ``[B, dim]``.
        """
        size, dim = self.queue.shape
        if keys.ndim != 2 or keys.shape[1] != dim:
            raise ValueError(f"keys must be [B, {dim}], got {tuple(keys.shape)}")
        keys = gather_no_grad(keys)[-size:]
        slots = (self.ptr + torch.arange(keys.shape[0], device=self.ptr.device)) % size
        self.queue[slots] = keys.to(self.queue.dtype)
        self.ptr.copy_((self.ptr + keys.shape[0]) % size)
