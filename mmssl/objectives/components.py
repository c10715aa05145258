"""Reusable parts of the joint-embedding objectives: collectives, MLP heads, EMA teacher, queue.

Nothing here knows a modality: heads map ``[B, D]`` embeddings, the teacher wraps any
module, the queue stores ``[K, D]`` keys. Every collective is a no-op in one process.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
import torch.nn.functional as F
from torch import Tensor, nn

from mmssl.distributed import world_size


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


def process_rank() -> int:
    """Rank of this process, ``0`` when not distributed."""
    return dist.get_rank() if world_size() > 1 else 0


class MLPHead(nn.Sequential):
    """Projection / prediction MLP: ``num_layers - 1`` blocks of Linear-BN-ReLU, then Linear.

    A linear layer followed by batch norm has no bias (the norm removes it). The optional
    last batch norm has no affine parameters, as in MoCo v3 and SimSiam. Under DDP,
    convert to ``nn.SyncBatchNorm`` (the papers normalise over the global batch).

    Args:
        in_dim: input features (the encoder's pooled width).
        hidden_dim: width of the hidden layers (unused when ``num_layers == 1``).
        out_dim: output features.
        num_layers: number of linear layers, at least 1.
        batch_norm: batch norm after each hidden linear layer.
        last_batch_norm: non-affine batch norm after the last linear layer.

    Raises:
        ValueError: If a dimension is not positive or ``num_layers < 1``.
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dim: int,
        out_dim: int,
        num_layers: int,
        batch_norm: bool = True,
        last_batch_norm: bool = False,
    ) -> None:
        for name, value in (("in_dim", in_dim), ("hidden_dim", hidden_dim), ("out_dim", out_dim)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        layers: list[nn.Module] = []
        width = in_dim
        for _ in range(num_layers - 1):
            layers.append(nn.Linear(width, hidden_dim, bias=not batch_norm))
            layers.extend([nn.BatchNorm1d(hidden_dim)] if batch_norm else [])
            layers.append(nn.ReLU(inplace=True))
            width = hidden_dim
        layers.append(nn.Linear(width, out_dim, bias=not last_batch_norm))
        layers.extend([nn.BatchNorm1d(out_dim, affine=False)] if last_batch_norm else [])
        super().__init__(*layers)


@dataclass(frozen=True)
class HeadShape:
    """The published shape of one method's head (dims as in the papers' ResNet-50 setups)."""

    hidden_dim: int
    out_dim: int
    num_layers: int
    batch_norm: bool = True
    last_batch_norm: bool = False

    def build(self, in_dim: int) -> MLPHead:
        """An :class:`MLPHead` of this shape reading ``in_dim`` features."""
        return MLPHead(in_dim, self.hidden_dim, self.out_dim, self.num_layers, self.batch_norm, self.last_batch_norm)


# A predictor reads its projector's output: HEAD_SHAPES["byol_predictor"].build(256).
# Barlow Twins' and VICReg's official last linear has no bias; it is kept here, where both
# losses centre the embeddings so that bias receives no gradient.
HEAD_SHAPES: dict[str, HeadShape] = {
    "simclr_projector": HeadShape(2048, 128, 2),  # Chen et al. 2020, sec. 2.1 (g(.), one hidden layer)
    "moco_v2_projector": HeadShape(2048, 128, 2, batch_norm=False),  # Chen et al. 2020b, MLP head, no BN
    "moco_v3_projector": HeadShape(4096, 256, 3, last_batch_norm=True),  # Chen, Xie & He 2021, sec. 4
    "moco_v3_predictor": HeadShape(4096, 256, 2),
    "byol_projector": HeadShape(4096, 256, 2),  # Grill et al. 2020, sec. 3.3
    "byol_predictor": HeadShape(4096, 256, 2),
    "simsiam_projector": HeadShape(2048, 2048, 3, last_batch_norm=True),  # Chen & He 2021, sec. 4.1
    "simsiam_predictor": HeadShape(512, 2048, 2),  # bottleneck: hidden = out / 4
    "barlow_twins_projector": HeadShape(8192, 8192, 3),  # Zbontar et al. 2021, sec. 3
    "vicreg_projector": HeadShape(8192, 8192, 3),  # Bardes et al. 2022, sec. 4.1
}


class EMATeacher(nn.Module):
    """A frozen copy of a student, moved towards it by an exponential moving average.

    The copy takes no gradient (``requires_grad=False``) and its forward runs under
    ``torch.no_grad``. ``train_mode`` chooses what ``.train()`` means for it: ``False``
    (data2vec) keeps it in eval mode always, no dropout, batch norm on running stats;
    ``True`` (BYOL, MoCo) lets it follow its parent's mode, batch norm on batch
    statistics. Its weights are ordinary state, saved with its parent's ``state_dict``.

    Args:
        student: the module to copy; :meth:`update` expects the same architecture.
        train_mode: whether the teacher follows its parent into training mode.
    """

    def __init__(self, student: nn.Module, train_mode: bool = False) -> None:
        super().__init__()
        self.train_mode = train_mode
        self.module = copy.deepcopy(student).requires_grad_(False)
        self.train(student.training)

    def train(self, mode: bool = True) -> EMATeacher:
        """Set training mode, which the teacher honours only when built with ``train_mode=True``."""
        return super().train(mode and self.train_mode)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Run the teacher without building a graph."""
        with torch.no_grad():
            return self.module(*args, **kwargs)

    @torch.no_grad()
    def update(self, student: nn.Module, momentum: float) -> None:
        """``teacher <- momentum * teacher + (1 - momentum) * student``; buffers are copied.

        Call it after the optimizer step with the *unwrapped* student (not the DDP
        wrapper); as the student is identical on every process, so is the teacher.

        Args:
            student: a module with the teacher's parameter and buffer names and shapes.
            momentum: in ``[0, 1]``; ``1`` freezes the teacher, ``0`` copies the student.

        Raises:
            ValueError: If ``momentum`` is outside ``[0, 1]`` or ``student`` does not match.
        """
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {momentum}")
        teacher_params = _matching(self.module.named_parameters(), student.named_parameters(), "parameters")
        teacher_buffers = _matching(self.module.named_buffers(), student.named_buffers(), "buffers")
        if teacher_params:
            torch._foreach_lerp_(*zip(*teacher_params), 1.0 - momentum)
        if teacher_buffers:
            torch._foreach_copy_(*zip(*teacher_buffers))


def _matching(teacher: Any, student: Any, kind: str) -> list[tuple[Tensor, Tensor]]:
    """Pair the teacher's tensors with the student's by name, failing on any difference."""
    t, s = dict(teacher), dict(student)
    if t.keys() != s.keys():
        raise ValueError(f"student {kind} differ from the teacher's: {sorted(t.keys() ^ s.keys())[:5]}")
    wrong = [k for k in t if t[k].shape != s[k].shape]
    if wrong:
        raise ValueError(f"student {kind} have other shapes than the teacher's: {wrong[:5]}")
    return [(t[k], s[k].detach()) for k in t]


def cosine_momentum(step: int, max_steps: int, base: float = 0.996, final: float = 1.0) -> float:
    """BYOL's schedule (Grill et al. 2020, sec. 3.2): ``final - (final - base) * (cos(pi k / K) + 1) / 2``.

    Args:
        step: completed optimizer steps ``k``; clamped to ``max_steps``.
        max_steps: total steps ``K``.
        base: momentum at step 0 (BYOL: 0.996).
        final: momentum at step ``K`` (BYOL: 1).

    Returns:
        The momentum for this step.

    Raises:
        ValueError: If ``step < 0``, ``max_steps < 1`` or a momentum is outside ``[0, 1]``.
    """
    _check_schedule(step, "max_steps", max_steps, 1, base, final)
    progress = min(step, max_steps) / max_steps
    return final - (final - base) * (math.cos(math.pi * progress) + 1.0) / 2.0


def linear_momentum(step: int, anneal_steps: int, start: float, end: float) -> float:
    """data2vec's schedule (Baevski et al. 2022, sec. 3.3): ``start -> end`` linearly, then ``end``.

    Args:
        step: completed optimizer steps.
        anneal_steps: steps to go from ``start`` (tau_0) to ``end`` (tau_e); 0 means ``end`` always.
        start: momentum at step 0 (data2vec: 0.999).
        end: momentum from ``anneal_steps`` on (data2vec: 0.9999).

    Returns:
        The momentum for this step.

    Raises:
        ValueError: If ``step < 0``, ``anneal_steps < 0`` or a momentum is outside ``[0, 1]``.
    """
    _check_schedule(step, "anneal_steps", anneal_steps, 0, start, end)
    if step >= anneal_steps:
        return end
    return start + (end - start) * step / anneal_steps


def _check_schedule(step: int, length_name: str, length: int, min_length: int, *momenta: float) -> None:
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if length < min_length:
        raise ValueError(f"{length_name} must be >= {min_length}, got {length}")
    if any(not 0.0 <= m <= 1.0 for m in momenta):
        raise ValueError(f"momentum values must be in [0, 1], got {momenta}")


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
