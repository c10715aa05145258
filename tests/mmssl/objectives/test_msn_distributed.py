"""MSN in two processes equals one process on the global batch: the Sinkhorn sums of the targets (no gradient) and the
me-max mean of the anchors' predictions (with gradients) are reduced over both processes; losses, gradients and the
teacher agree to 1e-5. A me-max mean whose all-reduce is not differentiable (the bug lightly shipped in its SIGReg
and Barlow Twins losses: gradients scaled by 1 / world_size) fails the same checks."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

import mmssl.objectives.msn as msn_module
from mmssl.distributed import global_sum
from mmssl.encoder import Encoder
from mmssl.objectives.base import SSLModel
from mmssl.objectives.msn import msn_loss, msn_targets
from mmssl.objectives.swav import sinkhorn
from mmssl.types import Batch
from tests.mmssl.objectives.loss_checks import (
    LOCAL_B,
    WORLD,
    assert_steps_match,
    one_vs_two_processes,
    run_in_two_processes,
)
from tests.mmssl.objectives.test_dino import two_process_steps
from tests.mmssl.objectives.test_msn import make_msn
from tests.mmssl.objectives.view_fixtures import smooth_images, views_batch, vit

STEPS, ANCHOR_VIEWS = 3, 3  # the masked global view and two focal views


def local_sinkhorn(*args: object, **kwargs: object) -> Tensor:
    """SwAV's Sinkhorn-Knopp with the sums over this process's rows only, whatever ``gather`` the caller asks."""
    return sinkhorn(*args, **{**kwargs, "gather": False})


def local_gradient_mean_rows(x: Tensor) -> Tensor:
    """The bug: the global mean row in the forward pass, but a gradient through this process's rows only (an
    all-reduce autograd does not see), so DDP's averaging leaves ``1 / world_size`` of the me-max gradient."""
    local = x.sum(0)
    total = local + (global_sum(local) - local.detach())
    return total / global_sum(torch.tensor(float(x.shape[0])))


def fails_with(name: str, replacement: Callable, check: Callable[[], None], match: str) -> None:
    """``check`` fails (an assertion naming ``match``) once ``msn.<name>`` is ``replacement``."""
    right = getattr(msn_module, name)
    setattr(msn_module, name, replacement)  # a forked worker: patched in this process only
    try:
        with pytest.raises(AssertionError, match=match):
            check()
    finally:
        setattr(msn_module, name, right)


def with_buggy_me_max(check: Callable[[], None]) -> None:
    """``check`` fails once the me-max mean reduces without gradients."""
    fails_with("global_mean_rows", local_gradient_mean_rows, check, match="grad")


# ---------------------------------------------------------------- the loss


def _loss_two_processes(rank: int) -> None:
    prototypes = torch.randn(4, 6, generator=torch.Generator().manual_seed(7))

    def loss_fn(anchors: Tensor, targets: Tensor, rows: slice | None) -> Tensor:
        gather = rows is not None
        q = msn_targets(targets, prototypes, 0.1, 0.25, 3, gather=gather)
        return msn_loss(anchors.unsqueeze(0), q, prototypes, 0.1, 1.0, gather=gather)[0]

    one_vs_two_processes("msn", loss_fn, rank)
    with_buggy_me_max(lambda: one_vs_two_processes("msn", loss_fn, rank))
    # the targets of each process's rows are those of one process on the global batch (Sinkhorn's global sums)
    z = torch.randn(WORLD * LOCAL_B, 6, generator=torch.Generator().manual_seed(8))
    rows = slice(rank * LOCAL_B, (rank + 1) * LOCAL_B)
    expected = msn_targets(z, prototypes, gather=False)[rows]
    torch.testing.assert_close(msn_targets(z[rows], prototypes), expected)
    assert not torch.allclose(msn_targets(z[rows], prototypes, gather=False), expected)  # the sums matter


@pytest.mark.timeout(120)
def test_loss_in_two_processes_matches_one_process_on_the_global_batch(tmp_path: Path) -> None:
    run_in_two_processes(_loss_two_processes, tmp_path)


# ---------------------------------------------------------------- the objective


def global_drops(rank: int) -> Callable[[Batch, float], Tensor]:
    """A stand-in for :func:`mmssl.objectives.msn.drop_patches` that drops the same patches of each image in both
    runs: the global batch's draws of the call's step and view, cut to this process's rows under DDP."""
    g = torch.Generator().manual_seed(3)
    draws = {
        (step, view): torch.rand(2 * LOCAL_B, units, generator=g).argsort(1)[:, :keep].sort(1).values
        for step in range(STEPS)
        for view, (units, keep) in enumerate([(16, 13), (4, 3), (4, 3)])  # 15% of 16 and of 4 patches dropped
    }
    calls = {"n": 0}

    def drawn(view: Batch, ratio: float) -> Tensor:
        # one draw per anchor view; the one-process reference runs its steps first, then the two-process run
        n = calls["n"]
        calls["n"] += 1
        full = draws[((n // ANCHOR_VIEWS) % STEPS, n % ANCHOR_VIEWS)]
        return full if view.batch_size == full.shape[0] else full[rank * LOCAL_B : (rank + 1) * LOCAL_B]

    return drawn


def one_process_steps(model: SSLModel, batches: list[Batch]) -> list[tuple[Tensor, dict, dict]]:
    """The reference: :func:`two_process_steps` on the global batch with MSN's reductions those of one process
    (Sinkhorn's sums and the me-max mean over this process's rows only), whatever the process group."""
    reductions = msn_module.sinkhorn, msn_module.global_mean_rows
    msn_module.sinkhorn = local_sinkhorn
    msn_module.global_mean_rows = lambda x: x.mean(0)
    try:
        return two_process_steps(model, batches, None)
    finally:
        msn_module.sinkhorn, msn_module.global_mean_rows = reductions


def check_steps(make: Callable[[], SSLModel], batches: list[Batch], rank: int) -> None:
    """Per step: the mean loss over the processes equals the one-process loss on the global batch, and so does every
    gradient and every piece of state (the teacher), to 1e-5."""
    msn_module.drop_patches = global_drops(rank)  # a forked worker: patched in this process only
    ref = one_process_steps(make(), batches)
    ours = two_process_steps(make(), batches, slice(rank * LOCAL_B, (rank + 1) * LOCAL_B))
    assert_steps_match(ref, ours)


def spread_vit() -> Encoder:
    """The tiny ViT with its weight matrices drawn at std 0.3: at the default initialisation it maps the smooth images
    to near-identical embeddings, whose targets are near-uniform with or without the other process's rows, so a
    Sinkhorn over local sums would pass unseen."""
    encoder = vit()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in encoder.parameters():
            if p.ndim > 1:
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
    return encoder


def _objective_two_processes(rank: int) -> None:
    def make() -> SSLModel:  # without the projector's batch norm (under DDP: SyncBatchNorm, the trainer's)
        return make_msn(spread_vit(), projector_batch_norm=False, base_momentum=0.9)[0]

    batches = [views_batch(smooth_images(seed=s), num_views=1 + ANCHOR_VIEWS, seed=s) for s in range(STEPS)]
    assert batches[0].batch_size == WORLD * LOCAL_B
    check_steps(make, batches, rank)
    with_buggy_me_max(lambda: check_steps(make, batches, rank))
    # Sinkhorn's sums over this process's targets only: other targets, another loss
    fails_with("sinkhorn", local_sinkhorn, lambda: check_steps(make, batches, rank), "loss")


@pytest.mark.timeout(180)
def test_objective_in_two_processes_matches_one_process_on_the_global_batch(tmp_path: Path) -> None:
    run_in_two_processes(_objective_two_processes, tmp_path)


def test_the_buggy_mean_has_the_right_value_in_one_process() -> None:
    """The stand-in differs from the right reduction only in its gradient under DDP, not in its value."""
    x = F.softmax(torch.randn(6, 4), dim=1)
    torch.testing.assert_close(local_gradient_mean_rows(x), msn_module.global_mean_rows(x))
