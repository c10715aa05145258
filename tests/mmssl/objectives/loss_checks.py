"""Shared checks of the loss functions: reference parity with gradients, learning on a toy embedding,
float32 under bf16 autocast, and two processes (gloo) equal to one process on the global batch."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

B, D = 8, 6


def pair(seed: int = 0, b: int = B, d: int = D) -> tuple[Tensor, Tensor]:
    """Two correlated ``[b, d]`` float64 views that require a gradient."""
    g = torch.Generator().manual_seed(seed)
    z1 = torch.randn(b, d, generator=g, dtype=torch.float64)
    z2 = z1 + 0.5 * torch.randn(b, d, generator=g, dtype=torch.float64)  # a correlated second view
    return z1.requires_grad_(), z2.requires_grad_()


def grads(loss: Tensor, *xs: Tensor) -> tuple[Tensor, ...]:
    return torch.autograd.grad(loss, xs)


def assert_same_loss_and_grads(ours: Tensor, ref: Tensor, *xs: Tensor) -> None:
    torch.testing.assert_close(ours.double(), ref.double(), rtol=1e-5, atol=1e-6)
    for a, b in zip(grads(ours, *xs), grads(ref, *xs)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


# A toy loss reads the embeddings z1, z2 of two noisy copies x1, x2 of 64 random vectors (16
# features), and may use a linear predictor: loss_of(z1, z2, predictor, x1, x2).
ToyLoss = Callable[[Tensor, Tensor, nn.Module, Tensor, Tensor], Tensor]


def toy_queue(dim: int) -> Tensor:
    """A fixed ``[32, dim]`` queue of unit vectors (MoCo's negatives for the toy embedding)."""
    return F.normalize(torch.randn(32, dim, generator=torch.Generator().manual_seed(1)), dim=1)


def assert_decreases_on_a_toy_embedding(loss_of: ToyLoss) -> None:
    torch.manual_seed(0)
    data = torch.randn(64, 16)
    net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 16))
    predictor = nn.Linear(16, 16)
    opt = torch.optim.Adam([*net.parameters(), *predictor.parameters()], lr=1e-2)
    losses = []
    for _ in range(40):
        x1, x2 = data + 0.3 * torch.randn_like(data), data + 0.3 * torch.randn_like(data)
        loss = loss_of(net(x1), net(x2), predictor, x1, x2)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert math.isfinite(last) and last < first - 0.1 * abs(first), losses


def assert_float32_under_bf16_autocast(fn: Callable[[Tensor, Tensor], Tensor | tuple]) -> None:
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(16, 32, generator=g), torch.randn(16, 32, generator=g)
    ref = fn(z1, z2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fn(z1, z2)
    ref, out = (ref[0], out[0]) if isinstance(ref, tuple) else (ref, out)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------- two processes (gloo) == one process

WORLD, LOCAL_B = 2, 4

# A pair loss: rows=None is the one-process reference on the whole batch; rows=slice is this
# process's share, gathering from the other process.
PairLoss = Callable[[Tensor, Tensor, "slice | None"], Tensor]


def one_vs_two_processes(name: str, loss_fn: PairLoss, rank: int) -> None:
    """The DDP step on 2 local halves equals the one-process step on the whole batch."""
    torch.manual_seed(0)  # identical data and weights on both processes
    x1, x2, net = torch.randn(WORLD * LOCAL_B, 5), torch.randn(WORLD * LOCAL_B, 5), nn.Linear(5, 6)

    ref_net, g1, g2 = copy.deepcopy(net), x1.clone().requires_grad_(), x2.clone().requires_grad_()
    ref_loss = loss_fn(*ref_net(torch.cat([g1, g2])).chunk(2), None)
    ref_loss.backward()

    ddp = DistributedDataParallel(net)
    rows = slice(rank * LOCAL_B, (rank + 1) * LOCAL_B)
    l1, l2 = x1[rows].clone().requires_grad_(), x2[rows].clone().requires_grad_()
    loss = loss_fn(*ddp(torch.cat([l1, l2])).chunk(2), rows)  # one forward per backward, as DDP wants
    loss.backward()

    mean_loss = loss.detach().clone()
    dist.all_reduce(mean_loss)
    torch.testing.assert_close(mean_loss / WORLD, ref_loss.detach(), rtol=1e-5, atol=1e-5, msg=f"{name} loss")
    for p, ref_p in zip(ddp.module.parameters(), ref_net.parameters()):
        torch.testing.assert_close(p.grad, ref_p.grad, rtol=1e-5, atol=1e-5, msg=f"{name} parameter grad")
    # per-sample input gradients: each process holds W x its slice's share (see gather_with_grad)
    for local, ref in ((l1, g1), (l2, g2)):
        torch.testing.assert_close(local.grad / WORLD, ref.grad[rows], rtol=1e-5, atol=1e-5, msg=f"{name} input grad")


def _worker(rank: int, init_file: str, check: Callable[[int], None]) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        torch.set_num_threads(1)
        check(rank)
    finally:
        dist.destroy_process_group()


def run_in_two_processes(check: Callable[[int], None], tmp_path: Path) -> None:
    """Run ``check(rank)`` in two processes joined by a gloo process group.

    fork, not spawn: the children reuse this process's imports (torch, lightly, transformers),
    which takes a test from ~15 s to well under one; gloo rendezvous through a file, no port.
    """
    mp.start_processes(
        _worker, args=(str(tmp_path / "rendezvous"), check), nprocs=WORLD, join=True, start_method="fork"
    )


def assert_steps_match(ref: list[tuple[Tensor, dict, dict]], ours: list[tuple[Tensor, dict, dict]]) -> None:
    """Per step ``(loss, gradients, state)``: the mean of this process's and the other's loss equals the one-process
    loss on the global batch, and every gradient and piece of state equals the one-process value, to 1e-5."""
    for step, ((ref_loss, ref_grads, ref_state), (loss, grads, state)) in enumerate(zip(ref, ours), start=1):
        mean = loss.clone()
        torch.distributed.all_reduce(mean)
        torch.testing.assert_close(mean / WORLD, ref_loss, rtol=1e-5, atol=1e-5, msg=f"step {step} loss")
        assert grads.keys() == ref_grads.keys()
        for key, grad in grads.items():
            torch.testing.assert_close(grad, ref_grads[key], rtol=1e-5, atol=1e-5, msg=f"step {step} grad {key}")
        for key, value in state.items():
            torch.testing.assert_close(value, ref_state[key], rtol=1e-5, atol=1e-5, msg=f"step {step} {key}")
