"""The EMA teacher and its schedules (mmssl.teacher), and every teacher-bearing objective: the first update uses the
base momentum, and a run interrupted and resumed from its saved state equals the uninterrupted run bit for bit."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from lightly.models.utils import update_momentum
from safetensors.torch import load_file, save_file
from torch import nn

from mmssl.objectives.base import SSLModel
from mmssl.teacher import CosineSchedule, EMATeacher, LinearSchedule, MomentumTeacher, cosine_momentum, linear_momentum
from mmssl.types import Batch
from tests.mmssl.objectives.teacher_runs import discover_teacher_bearing, teachers_of, tiny_run

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


def test_schedule_objects_at_known_positions() -> None:
    cosine = CosineSchedule(0.99, 1.0)
    assert cosine(0, 100) == 0.99 and cosine(50, 100) == pytest.approx(0.995) and cosine(100, 100) == 1.0
    assert all(CosineSchedule(0.99, 0.99)(k, 10) == 0.99 for k in range(12))  # MoCo v2: constant, exactly
    linear = LinearSchedule(0.9, 0.99, anneal_steps=10)
    assert linear(0, 3) == 0.9 and linear(5, 3) == pytest.approx(0.945) and linear(10, 3) == 0.99  # whatever the run


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: cosine_momentum(-1, 10), "step"),
        (lambda: cosine_momentum(1, 0), "max_steps"),
        (lambda: cosine_momentum(1, 10, base=1.2), "momentum"),
        (lambda: linear_momentum(1, -1, 0.9, 0.99), "anneal_steps"),
    ],
)
def test_invalid_arguments_are_named(call: Callable[[], object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()


# ---------------------------------------------------------------- momentum teacher: the step convention


def _moved_student() -> nn.Module:
    student = _student()
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    return student


def test_first_update_uses_exactly_the_base_momentum_and_update_k_the_schedule_at_k_minus_1() -> None:
    teacher = MomentumTeacher(_student(), CosineSchedule(0.9, 1.0), train_mode=True)
    assert float(teacher.momentum) == pytest.approx(0.9)  # before any update: the base
    student = _moved_student()
    before = {k: v.clone() for k, v in teacher.module.named_parameters()}
    assert teacher.update(student, step=1, max_steps=10) == 0.9
    assert torch.equal(teacher.momentum, torch.tensor(0.9))
    for name, p in student.named_parameters():
        torch.testing.assert_close(teacher.module.get_parameter(name), 0.9 * before[name] + 0.1 * p.detach())
    assert teacher.update(student, step=6, max_steps=10) == cosine_momentum(5, 10, 0.9, 1.0)
    assert teacher.update(student, step=11, max_steps=10) == 1.0  # the last update of a 10-step run ends at final
    assert teacher.update(student, step=0, max_steps=10) == 0.9  # before any optimizer step: position 0


def test_linear_schedule_reads_the_same_convention() -> None:
    teacher = MomentumTeacher(_student(), LinearSchedule(0.9, 0.99, anneal_steps=10), train_mode=False)
    student = _moved_student()
    assert [teacher.update(student, s, 100) for s in (1, 6)] == [0.9, pytest.approx(0.945)]
    assert float(teacher.momentum) == pytest.approx(0.945)


def test_momentum_teacher_takes_no_gradient() -> None:
    student = _student()
    teacher = MomentumTeacher(student, CosineSchedule(0.9, 1.0), train_mode=True)
    x = torch.randn(8, 3)
    target = teacher(x)
    assert target.grad_fn is None and not target.requires_grad
    (student(x) - target).pow(2).sum().backward()
    assert all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None for p in student.parameters())


@pytest.mark.parametrize("train_mode", [False, True])
def test_train_mode_decides_whether_the_teacher_follows_its_parent(train_mode: bool) -> None:
    parent = nn.ModuleDict({"teacher": MomentumTeacher(_student(), CosineSchedule(0.9, 1.0), train_mode)})
    parent.train()
    teacher = parent["teacher"]
    assert teacher.ema.training == teacher.module[1].training == train_mode  # batch norm on batch statistics or not
    parent.eval()
    assert not teacher.ema.training and not teacher.module[1].training


def test_momentum_and_copy_are_persistent_state() -> None:
    teacher = MomentumTeacher(_student(), CosineSchedule(0.9, 1.0), train_mode=True)
    teacher.update(_moved_student(), step=4, max_steps=10)
    state = teacher.state_dict()
    assert {"momentum", "ema.module.0.weight", "ema.module.1.running_mean"} <= set(state)
    resumed = MomentumTeacher(nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)), CosineSchedule(0.9, 1.0), True)
    resumed.load_state_dict(state)
    assert all(torch.equal(state[k], v) for k, v in resumed.state_dict().items())
    assert float(resumed.momentum) == pytest.approx(cosine_momentum(3, 10, 0.9, 1.0))


# ---------------------------------------------------------------- every teacher-bearing objective


TEACHER_BEARING, NOT_BUILT = discover_teacher_bearing()


def test_every_objective_is_checked_for_a_teacher() -> None:
    assert not NOT_BUILT, f"these objectives do not build on the stub encoder; give it what they need: {NOT_BUILT}"
    assert {"moco_v2", "moco_v3", "byol", "data2vec", "bgrl"} <= set(TEACHER_BEARING)


K, N = 2, 4  # interrupted after K of N optimizer steps


@pytest.mark.parametrize("name", TEACHER_BEARING)
def test_first_update_uses_the_base_momentum(name: str) -> None:
    run = tiny_run(name)
    model = run.build(0)
    model(run.batch(1))  # batch-norm statistics in the student
    with torch.no_grad():  # a student that differs from its teacher
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))
    teachers = teachers_of(model.objective)
    updates: list[tuple[nn.Module, float]] = []
    for teacher in teachers:  # record the student and momentum of each teacher's update
        teacher.ema.update = (lambda f: lambda student, m: updates.append((student, m)) or f(student, m))(
            teacher.ema.update
        )
    before = [{k: v.clone() for k, v in t.module.named_parameters()} for t in teachers]
    model.after_optimizer_step(1, N)  # a short run, whose schedule moves at once after the base
    assert len(updates) == len(teachers)
    for teacher, (student, momentum), old in zip(teachers, updates, before):
        base = teacher.schedule.base
        assert momentum == base and torch.equal(teacher.momentum, torch.tensor(base))
        for key, value in student.named_parameters():
            torch.testing.assert_close(teacher.module.get_parameter(key), base * old[key] + (1 - base) * value.detach())


def _train(
    model: SSLModel, optimizer: torch.optim.Optimizer, batch: Callable[[int], Batch], steps: range
) -> list[float]:
    losses = []
    for step in steps:
        torch.manual_seed(step)  # the step's masks and dropout, the same in either run
        loss = model(batch(step)).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        model.after_optimizer_step(step, N)
        losses.append(loss.item())
    return losses


def _optimizer(model: SSLModel) -> torch.optim.Optimizer:
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)


@pytest.mark.parametrize("name", TEACHER_BEARING)
def test_interrupted_and_resumed_run_equals_the_uninterrupted_one(name: str, tmp_path: Path) -> None:
    run = tiny_run(name)
    model = run.build(0)
    optimizer = _optimizer(model)
    _train(model, optimizer, run.batch, range(1, K + 1))
    save_file(model.state_dict(), tmp_path / "model.safetensors")  # as a checkpoint holds them
    torch.save(optimizer.state_dict(), tmp_path / "optimizer.bin")
    uninterrupted = _train(model, optimizer, run.batch, range(K + 1, N + 1))

    resumed = run.build(1)  # from scratch: other weights, another teacher
    state = load_file(tmp_path / "model.safetensors")
    assert any(k.endswith("teacher.momentum") for k in state), "the teacher's momentum is not in the state dict"
    assert not all(torch.equal(v, state[k]) for k, v in resumed.state_dict().items())
    resumed.load_state_dict(state)
    resumed_optimizer = _optimizer(resumed)
    resumed_optimizer.load_state_dict(torch.load(tmp_path / "optimizer.bin", weights_only=True))
    assert _train(resumed, resumed_optimizer, run.batch, range(K + 1, N + 1)) == uninterrupted

    final, ours = model.state_dict(), resumed.state_dict()
    assert final.keys() == ours.keys()
    different = [k for k in final if not torch.equal(final[k], ours[k])]
    assert not different, f"differ after resuming: {different[:5]}"
    for teacher in teachers_of(resumed.objective):
        assert float(teacher.momentum) == pytest.approx(teacher.schedule(N - 1, N))
