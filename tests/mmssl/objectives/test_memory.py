"""MoCo's queue of keys: FIFO order across wrap-arounds, oversized batches, resume, negatives that survive an
enqueue, and two processes enqueueing the same keys."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor

from mmssl.objectives.memory import MemoryQueue
from mmssl.objectives.moco_v2 import info_nce
from tests.mmssl.objectives.loss_checks import run_in_two_processes


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
        (lambda: MemoryQueue(0, 4), "dim"),
        (lambda: MemoryQueue(4, 0), "size"),
        (lambda: MemoryQueue(4, 8).enqueue(torch.randn(2, 3)), "keys"),
    ],
)
def test_invalid_arguments_are_named(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()


def _queue(rank: int) -> None:
    queue = MemoryQueue(dim=3, size=5)
    queue.enqueue(torch.full((2, 3), float(rank + 1)))  # 2 keys per process, 4 in all
    assert queue.ptr.item() == 4
    torch.testing.assert_close(queue.queue[:4, 0], torch.tensor([1.0, 1.0, 2.0, 2.0]))


@pytest.mark.timeout(120)
def test_two_processes_enqueue_every_process_keys_in_rank_order(tmp_path: Path) -> None:
    run_in_two_processes(_queue, tmp_path)
