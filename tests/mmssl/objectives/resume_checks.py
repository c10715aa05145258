"""Exact resume of an objective with state (teachers, centres, prototypes, queues): train, save the model's and the
optimizer's state, train on; a fresh model of other weights that loads that state must take the same steps."""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch

from mmssl.objectives.base import SSLModel
from tests.mmssl.objectives.view_fixtures import smooth_images, views_batch

MAX_STEPS = 6  # the schedule length the steps below are positioned in


def train_steps(model: SSLModel, optimizer: torch.optim.Optimizer, steps: range, num_views: int) -> list[float]:
    """One optimizer step per ``step`` on its own 8-image batch of ``num_views`` views; the losses."""
    losses = []
    for step in steps:
        torch.manual_seed(step)  # the step's random masks or patch drops (the trainer re-seeds every micro-batch)
        loss = model(views_batch(smooth_images(seed=step), num_views=num_views, seed=step)).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        model.after_optimizer_step(step, MAX_STEPS)
        losses.append(loss.item())
    return losses


def assert_resumes_exactly(
    build: Callable[[int], SSLModel], saved: set[str], saved_prefix: str, num_views: int = 3
) -> None:
    """Three steps, a checkpoint, three more; a model built with another seed resumed from the checkpoint gives the
    same losses and ends with the same state.

    Args:
        build: a fresh model whose encoder is initialised from the given seed.
        saved: state-dict keys the checkpoint must hold (the objective's own state).
        saved_prefix: some state-dict key must start with it (the teacher's copy of a head).
        num_views: views per batch.
    """
    model = build(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    train_steps(model, optimizer, range(1, 4), num_views)
    state, opt_state = copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict())
    assert saved <= set(state), saved - set(state)
    assert any(k.startswith(saved_prefix) for k in state), saved_prefix
    uninterrupted = train_steps(model, optimizer, range(4, 7), num_views)

    resumed = build(5)
    resumed.load_state_dict(state)
    resumed_optimizer = torch.optim.AdamW(resumed.parameters(), lr=1e-3)
    resumed_optimizer.load_state_dict(opt_state)
    assert train_steps(resumed, resumed_optimizer, range(4, 7), num_views) == uninterrupted
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), resumed.state_dict().values()))
