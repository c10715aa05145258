"""MoCo's queue of past keys, shared by MoCo v2, GPT-GNN's adaptive queue of negatives, NNCLR's support set
and SwAV's queue of earlier projections."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmssl.distributed import gather_no_grad
from mmssl.objectives.losses import f32, full_precision


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
    @full_precision
    def nearest(self, query: Tensor) -> Tensor:
        """Each query's most cosine-similar key in the queue: NNCLR's support-set lookup (Dwibedi et al. 2021).

        The lookup takes no gradient (``argmax``) and runs in float32 under autocast (a half-precision
        similarity could pick another neighbour); call it before :meth:`enqueue` so that a query is
        never its own neighbour. It compares a ``[B, size]`` similarity matrix at once.

        Args:
            query: ``[B, dim]`` embeddings (normalised here for the comparison only).

        Returns:
            ``[B, dim]``: a detached copy of the nearest key of each query, as stored.

        Raises:
            ValueError: If ``query`` is not ``[B, dim]``.
        """
        dim = self.queue.shape[1]
        if query.ndim != 2 or query.shape[1] != dim:
            raise ValueError(f"query must be [B, {dim}], got {tuple(query.shape)}")
        keys = self.negatives()
        dtype = torch.promote_types(f32(query).dtype, f32(keys).dtype)
        similarity = F.normalize(query.detach().to(dtype), dim=1) @ F.normalize(keys.to(dtype), dim=1).T  # [B, size]
        return keys[similarity.argmax(dim=1)]

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
