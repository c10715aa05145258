"""Collectives, MLP heads, EMA teacher, momentum schedules and the MoCo queue."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from lightly.models.utils import update_momentum
from torch import Tensor, nn

from mmssl.objectives.components import (
    HEAD_SHAPES,
    EMATeacher,
    MemoryQueue,
    MLPHead,
    cosine_momentum,
    gather_no_grad,
    gather_with_grad,
    linear_momentum,
)
from mmssl.objectives.functional import info_nce

# ---------------------------------------------------------------- collectives


def test_gathers_are_identities_in_one_process() -> None:
    x = torch.randn(3, 2, requires_grad=True)
    assert gather_with_grad(x) is x
    out = gather_no_grad(x)
    assert not out.requires_grad and torch.equal(out, x)


WORLD = 2


def _collectives(rank: int) -> None:
    # every process sees all rows in rank order, and the gradient of its own slice summed over
    # every process's loss: L_r = sum(w_r * gathered) with w_r = r + 1 gives dL/dx = 1 + 2 on both
    x = torch.full((2, 3), float(rank), requires_grad=True)
    gathered = gather_with_grad(x)
    torch.testing.assert_close(gathered, torch.tensor([0.0, 0.0, 1.0, 1.0]).unsqueeze(1).expand(4, 3))
    ((rank + 1) * gathered).sum().backward()
    torch.testing.assert_close(x.grad, torch.full((2, 3), 3.0))

    assert not gather_no_grad(x).requires_grad and torch.equal(gather_no_grad(x), gathered.detach())
    with pytest.raises(ValueError, match="same shape"):
        gather_with_grad(torch.zeros(2 + rank, 3))  # uneven last batch: an error everywhere, not a hang


def _queue(rank: int) -> None:
    queue = MemoryQueue(dim=3, size=5)
    queue.enqueue(torch.full((2, 3), float(rank + 1)))  # 2 keys per process, 4 in all
    assert queue.ptr.item() == 4
    torch.testing.assert_close(queue.queue[:4, 0], torch.tensor([1.0, 1.0, 2.0, 2.0]))


def _worker(rank: int, init_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        _collectives(rank)
        _queue(rank)
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(120)
def test_two_process_gathers_and_queue(tmp_path: Path) -> None:
    # fork reuses this process's imports (spawn would re-import torch in each child)
    mp.start_processes(_worker, args=(str(tmp_path / "rendezvous"),), nprocs=WORLD, join=True, start_method="fork")


# ---------------------------------------------------------------- heads


def test_mlp_head_layers_follow_the_flags() -> None:
    head = MLPHead(5, 7, 3, num_layers=3, batch_norm=True, last_batch_norm=True)
    kinds = [type(m).__name__ for m in head]
    assert kinds == ["Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d"]
    assert all(m.bias is None for m in head if isinstance(m, nn.Linear))  # every linear feeds a batch norm
    assert not head[-1].affine and head[0].in_features == 5 and head[-2].out_features == 3
    assert head(torch.randn(4, 5)).shape == (4, 3)

    plain = MLPHead(5, 7, 3, num_layers=2, batch_norm=False)
    assert [type(m).__name__ for m in plain] == ["Linear", "ReLU", "Linear"]
    assert all(m.bias is not None for m in plain if isinstance(m, nn.Linear))
    assert [type(m).__name__ for m in MLPHead(5, 7, 3, num_layers=1)] == ["Linear"]


@pytest.mark.parametrize("name", sorted(HEAD_SHAPES))
def test_every_published_head_shape_builds(name: str) -> None:
    shape = HEAD_SHAPES[name]
    with torch.device("meta"):  # full-size heads (up to 8192 wide) without allocating them
        head = shape.build(2048)
        out = head(torch.empty(4, 2048))
    assert out.shape == (4, shape.out_dim)
    assert sum(isinstance(m, nn.Linear) for m in head) == shape.num_layers


def test_head_shapes_cite_the_papers() -> None:
    assert HEAD_SHAPES["byol_projector"] == HEAD_SHAPES["byol_predictor"]  # 4096 -> 256, both
    assert (HEAD_SHAPES["simsiam_predictor"].hidden_dim, HEAD_SHAPES["simsiam_predictor"].out_dim) == (512, 2048)
    assert HEAD_SHAPES["moco_v3_projector"].last_batch_norm and not HEAD_SHAPES["moco_v3_predictor"].last_batch_norm
    assert not HEAD_SHAPES["moco_v2_projector"].batch_norm
    assert HEAD_SHAPES["barlow_twins_projector"].out_dim == HEAD_SHAPES["vicreg_projector"].out_dim == 8192


# ---------------------------------------------------------------- EMA teacher


def _student() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))


def test_teacher_is_a_frozen_independent_copy() -> None:
    student = _student()
    teacher = EMATeacher(student)
    assert all(not p.requires_grad for p in teacher.parameters())
    assert all(p.data_ptr() != q.data_ptr() for p, q in zip(teacher.parameters(), student.parameters()))
    out = teacher(torch.randn(2, 3))
    assert out.grad_fn is None
    torch.testing.assert_close(teacher.state_dict()["module.0.weight"], student[0].weight.detach())


def test_teacher_update_is_the_exact_moving_average_and_copies_buffers() -> None:
    student = _student()
    teacher = EMATeacher(student)
    with torch.no_grad():
        for p in student.parameters():
            p.fill_(1.0)
        for p in teacher.parameters():
            p.fill_(0.5)
    student(torch.randn(8, 3))  # training step: BN running stats move
    teacher.update(student, momentum=0.75)
    for p in teacher.parameters():
        torch.testing.assert_close(p, torch.full_like(p, 0.75 * 0.5 + 0.25 * 1.0), rtol=0, atol=0)
    for t, s in zip(teacher.buffers(), student.buffers()):
        assert torch.equal(t, s)  # running mean / var / num_batches_tracked


def test_teacher_update_matches_lightly_update_momentum() -> None:
    student, other = _student(), _student()
    with torch.no_grad():
        for p in other.parameters():
            p.add_(torch.randn_like(p))
    teacher, ref = EMATeacher(other), EMATeacher(other).module
    teacher.update(student, momentum=0.99)
    update_momentum(student, ref, m=0.99)
    for p, q in zip(teacher.module.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q)


def test_teacher_update_endpoints() -> None:
    student, teacher = _student(), EMATeacher(_student())
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    before = [p.clone() for p in teacher.parameters()]
    teacher.update(student, momentum=1.0)
    assert all(torch.equal(p, b) for p, b in zip(teacher.parameters(), before))
    teacher.update(student, momentum=0.0)
    assert all(torch.equal(p, s) for p, s in zip(teacher.parameters(), student.parameters()))


def test_teacher_mode_follows_its_parent_only_when_asked() -> None:
    parent = nn.ModuleDict(
        {"eval_teacher": EMATeacher(_student()), "train_teacher": EMATeacher(_student(), train_mode=True)}
    )
    parent.train()
    assert not parent["eval_teacher"].training and not parent["eval_teacher"].module[1].training
    assert parent["train_teacher"].training and parent["train_teacher"].module[1].training
    parent.eval()
    assert not parent["train_teacher"].module[1].training


def test_teacher_rejects_a_different_student_and_bad_momentum() -> None:
    teacher = EMATeacher(_student())
    with pytest.raises(ValueError, match="parameters differ"):
        teacher.update(nn.Sequential(nn.Linear(3, 4)), 0.9)
    with pytest.raises(ValueError, match="shapes"):
        teacher.update(nn.Sequential(nn.Linear(3, 5), nn.BatchNorm1d(5)), 0.9)
    with pytest.raises(ValueError, match="momentum"):
        teacher.update(_student(), 1.5)


# ---------------------------------------------------------------- momentum schedules


def test_cosine_momentum_is_byol_schedule() -> None:
    assert cosine_momentum(0, 100) == pytest.approx(0.996)
    assert cosine_momentum(100, 100) == pytest.approx(1.0)
    assert cosine_momentum(50, 100) == pytest.approx(0.998)
    assert cosine_momentum(250, 100) == pytest.approx(1.0)  # clamped after the end
    k, K = 30, 100  # Grill et al. 2020: tau = 1 - (1 - tau_base) (cos(pi k / K) + 1) / 2
    assert cosine_momentum(k, K) == pytest.approx(1 - (1 - 0.996) * (math.cos(math.pi * k / K) + 1) / 2)
    values = [cosine_momentum(s, 100, base=0.99, final=0.999) for s in range(101)]
    assert values == sorted(values) and values[0] == pytest.approx(0.99) and values[-1] == pytest.approx(0.999)


def test_linear_momentum_is_data2vec_schedule() -> None:
    assert linear_momentum(0, 1000, 0.999, 0.9999) == pytest.approx(0.999)
    assert linear_momentum(500, 1000, 0.999, 0.9999) == pytest.approx(0.99945)
    assert linear_momentum(1000, 1000, 0.999, 0.9999) == 0.9999
    assert linear_momentum(5000, 1000, 0.999, 0.9999) == 0.9999  # constant after annealing
    assert linear_momentum(0, 0, 0.999, 0.9999) == 0.9999


# ---------------------------------------------------------------- queue


def _keys(start: int, n: int) -> Tensor:
    """Keys whose every feature is their sequence number, so the queue's order is readable."""
    return torch.arange(start, start + n, dtype=torch.float32).unsqueeze(1).expand(n, 2)


def _oldest_first(queue: MemoryQueue) -> list[float]:
    return torch.roll(queue.queue[:, 0], -int(queue.ptr)).tolist()


def test_queue_wraps_around_in_fifo_order_when_size_is_not_a_multiple_of_the_batch() -> None:
    queue = MemoryQueue(dim=2, size=5)
    for i in range(3):
        queue.enqueue(_keys(2 * i, 2))  # keys 0..5 into 5 slots: key 0 falls out
    assert queue.ptr.item() == 1
    assert queue.queue[:, 0].tolist() == [5.0, 1.0, 2.0, 3.0, 4.0]
    assert _oldest_first(queue) == [1.0, 2.0, 3.0, 4.0, 5.0]
    queue.enqueue(_keys(6, 3))
    assert _oldest_first(queue) == [4.0, 5.0, 6.0, 7.0, 8.0]


def test_queue_keeps_the_newest_keys_of_an_oversized_batch() -> None:
    queue = MemoryQueue(dim=2, size=4)
    queue.enqueue(_keys(0, 1))
    queue.enqueue(_keys(1, 6))
    assert _oldest_first(queue) == [3.0, 4.0, 5.0, 6.0]


def test_queue_starts_with_random_unit_keys() -> None:
    queue = MemoryQueue(dim=8, size=16)
    torch.testing.assert_close(queue.queue.norm(dim=1), torch.ones(16))
    assert queue.ptr.item() == 0


def test_queue_state_dict_round_trip_resumes_exactly() -> None:
    queue = MemoryQueue(dim=2, size=5)
    for i in range(3):
        queue.enqueue(_keys(2 * i, 2))
    resumed = MemoryQueue(dim=2, size=5)
    resumed.load_state_dict(queue.state_dict())
    assert set(queue.state_dict()) == {"queue", "ptr"}
    for q in (queue, resumed):
        q.enqueue(_keys(6, 2))
    assert torch.equal(queue.queue, resumed.queue) and torch.equal(queue.ptr, resumed.ptr)
    with pytest.raises(RuntimeError, match="size mismatch"):
        MemoryQueue(dim=2, size=6).load_state_dict(queue.state_dict())


def test_queue_negatives_survive_an_enqueue_before_backward() -> None:
    queue = MemoryQueue(dim=4, size=8)
    q = torch.randn(3, 4, requires_grad=True)
    k = torch.randn(3, 4)
    loss = info_nce(q, k, queue.negatives())
    queue.enqueue(k)  # MoCo's order: loss, enqueue, then backward
    loss.backward()
    assert q.grad is not None


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: MLPHead(0, 4, 4, 2), "in_dim"),
        (lambda: MLPHead(4, 4, 4, 0), "num_layers"),
        (lambda: MemoryQueue(0, 4), "dim"),
        (lambda: MemoryQueue(4, 0), "size"),
        (lambda: MemoryQueue(4, 8).enqueue(torch.randn(2, 3)), "keys"),
        (lambda: cosine_momentum(-1, 10), "step"),
        (lambda: cosine_momentum(1, 0), "max_steps"),
        (lambda: cosine_momentum(1, 10, base=1.2), "momentum"),
        (lambda: linear_momentum(1, -1, 0.9, 0.99), "anneal_steps"),
    ],
)
def test_invalid_arguments_are_named(call: Callable[[], object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()
