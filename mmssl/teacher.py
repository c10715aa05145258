"""The EMA teacher of every self-distillation objective, and its momentum schedules.

MoCo v2/v3 and BYOL (a copy of encoder + projector), BGRL and data2vec (a copy of the encoder)
all keep a frozen copy of (part of) the student that moves towards it by an exponential moving
average, ``teacher <- m * teacher + (1 - m) * student``, with a momentum ``m`` that follows a
schedule over the run. :class:`EMATeacher` is the copy and its update; :class:`MomentumTeacher`
adds the schedule and remembers the momentum of its latest update.

Step convention (one for every objective): the trainer calls
``Objective.after_optimizer_step(encoder, step, max_steps)`` right after its ``step``-th
optimizer step, ``step`` being the 1-based count of completed steps. The teacher update made
then uses schedule position ``step - 1``: the first update uses exactly the base momentum, and
update ``k`` (0-based, as the papers count) uses the papers' ``m_k``.

Checkpoints: the copy's parameters and buffers and the momentum of the latest update are
persistent state of the module, so they are in each checkpoint's ``model.safetensors`` and a
resumed run continues bit for bit.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn


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


# ---------------------------------------------------------------- schedules


def cosine_momentum(step: int, max_steps: int, base: float = 0.996, final: float = 1.0) -> float:
    """BYOL's schedule (Grill et al. 2020, sec. 3.2): ``final - (final - base) * (cos(pi k / K) + 1) / 2``.

    Args:
        step: the schedule position ``k`` (completed optimizer steps before the update); clamped
            to ``max_steps``.
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
        step: the schedule position (completed optimizer steps before the update).
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


@dataclass(frozen=True)
class CosineSchedule:
    """:func:`cosine_momentum` from ``base`` to ``final`` over the run (constant when they are equal, as MoCo v2)."""

    base: float
    final: float

    def __call__(self, position: int, max_steps: int) -> float:
        return cosine_momentum(position, max_steps, self.base, self.final)


@dataclass(frozen=True)
class LinearSchedule:
    """:func:`linear_momentum` from ``base`` to ``final`` over ``anneal_steps``, whatever the run's length."""

    base: float
    final: float
    anneal_steps: int

    def __call__(self, position: int, max_steps: int) -> float:
        return linear_momentum(position, self.anneal_steps, self.base, self.final)


@dataclass(frozen=True)
class RunLinearSchedule:
    """:func:`linear_momentum` from ``base`` to ``final`` over ``stretch`` times the run: I-JEPA's EMA schedule
    (``stretch`` 1), MSN's (1.25: the official code's schedule spans 1.25 x the iterations, so the last step's
    momentum is 0.9992 of 0.996 -> 1)."""

    base: float
    final: float
    stretch: float = 1.0

    def __call__(self, position: int, max_steps: int) -> float:
        return linear_momentum(position, max(1, int(self.stretch * max_steps)), self.base, self.final)


MomentumSchedule = CosineSchedule | LinearSchedule | RunLinearSchedule


class MomentumTeacher(nn.Module):
    """An :class:`EMATeacher` that follows a momentum schedule, with the step convention of this module.

    Args:
        student: the module to copy (an encoder, or an encoder + projector branch).
        schedule: the momentum at each schedule position; its ``base`` is the first update's.
        train_mode: as for :class:`EMATeacher` (``True``: BYOL, MoCo, BGRL; ``False``: data2vec).

    Attributes:
        ema: the frozen copy; :attr:`module` is the copied student itself.
        momentum: the momentum of the latest update (``schedule.base`` before any), a persistent buffer.
    """

    momentum: Tensor

    def __init__(self, student: nn.Module, schedule: MomentumSchedule, train_mode: bool) -> None:
        super().__init__()
        self.ema = EMATeacher(student, train_mode=train_mode)
        self.schedule = schedule
        self.register_buffer("momentum", torch.tensor(schedule.base))

    @property
    def module(self) -> nn.Module:
        """The teacher's copy of the student (call it under ``torch.no_grad``, or call the teacher)."""
        return self.ema.module

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """The copy's forward, without a graph."""
        return self.ema(*args, **kwargs)

    def update(self, student: nn.Module, step: int, max_steps: int) -> float:
        """Move the teacher towards the (unwrapped) ``student`` after the trainer's ``step``-th optimizer step.

        Args:
            student: the module the teacher copies, with the student's current weights.
            step: 1-based count of completed optimizer steps; the schedule is read at ``step - 1``
                (at 0 for ``step = 0``).
            max_steps: the run's total optimizer steps.

        Returns:
            The momentum used, also kept in :attr:`momentum`.
        """
        momentum = self.schedule(max(step - 1, 0), max_steps)
        self.ema.update(student, momentum)
        self.momentum.fill_(momentum)
        return momentum
