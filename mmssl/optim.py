"""Optimizer and schedule shared by every recipe: AdamW with decay groups, warmup + cosine, and the weight-decay
schedule an objective may declare (DINO's cosine from 0.04 to 0.4)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

import torch
from torch import nn
from transformers import get_cosine_schedule_with_warmup

from mmssl.recipe import TrainConfig

if TYPE_CHECKING:
    from mmssl.objectives.base import Adversary


def param_groups(model: nn.Module, weight_decay: float, exclude: nn.Module | None = None) -> list[dict]:
    """Split trainable parameters into decayed and non-decayed AdamW groups.

    Biases and normalisation weights (every parameter with fewer than 2 dimensions: LayerNorm,
    BatchNorm and RMSNorm gains, biases, scalar temperatures) get no weight decay, as in
    BERT and nanoGPT; matrices and embeddings do, except those an objective marks with a
    ``no_weight_decay = True`` attribute (MSN's prototypes, as its official code). The parameters
    of ``exclude`` (an objective's adversary, which has an optimizer of its own) are left out.
    """
    skip = {id(p) for p in exclude.parameters()} if exclude is not None else set()
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad and id(p) not in skip:
            decayed = p.ndim >= 2 and not getattr(p, "no_weight_decay", False)
            (decay if decayed else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay, "decayed": True},  # set_weight_decay schedules this group
        {"params": no_decay, "weight_decay": 0.0, "decayed": False},
    ]


def build_optimizer(
    model: nn.Module, cfg: TrainConfig, exclude: nn.Module | None = None
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """AdamW (decoupled decay, Loshchilov & Hutter 2019) and a linear-warmup cosine schedule, over the parameters
    of ``model`` outside ``exclude`` (the adversary, see :func:`build_adversary_optimizer`)."""
    # the fused kernel (CPU and CUDA) updates all parameters in one pass instead of a loop per tensor
    optimizer = torch.optim.AdamW(
        param_groups(model, cfg.weight_decay, exclude), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, fused=True
    )
    scheduler = get_cosine_schedule_with_warmup(optimizer, min(cfg.warmup_steps, cfg.max_steps), cfg.max_steps)
    return optimizer, scheduler


def find_adversary(model: nn.Module) -> Adversary | None:
    """The adversary that a module of ``model`` declares (an objective's discriminator), or None.

    Raises:
        ValueError: If more than one module declares one, or the adversary is not a submodule of ``model``.
    """
    found = [
        adv
        for m in model.modules()
        if callable(getattr(type(m), "adversary", None)) and (adv := m.adversary()) is not None  # a method, not a child
    ]
    if len(found) > 1:
        raise ValueError(f"more than one module declares an adversary: {[type(a.module).__name__ for a in found]}")
    if found and not any(m is found[0].module for m in model.modules()):
        raise ValueError(f"the adversary {type(found[0].module).__name__} must be a submodule of the model")
    return found[0] if found else None


def build_adversary_optimizer(
    adversary: Adversary, cfg: TrainConfig
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """The adversary's own AdamW (its lr, betas, eps and decay; no decay on biases and norms) on the run's
    warmup + cosine schedule, so its learning rate keeps the same ratio to ``train.lr`` throughout."""
    groups = param_groups(adversary.module, adversary.weight_decay)
    optimizer = torch.optim.AdamW(groups, lr=adversary.lr, betas=tuple(adversary.betas), eps=adversary.eps, fused=True)
    scheduler = get_cosine_schedule_with_warmup(optimizer, min(cfg.warmup_steps, cfg.max_steps), cfg.max_steps)
    return optimizer, scheduler


@runtime_checkable
class WeightDecaySchedule(Protocol):
    """A module of the model that schedules AdamW's weight decay (DINO, iBOT: a cosine from 0.04 to 0.4).

    The trainer asks it before every optimizer step and sets the decayed group's decay
    (:func:`set_weight_decay`); the value depends on the step only, so a resumed run gets the same.
    """

    def scheduled_weight_decay(self, base: float, position: int, max_steps: int) -> float:
        """The decay of optimizer step ``position`` (0-based) of ``max_steps``, given ``train.weight_decay`` (``base``)."""
        ...


def weight_decay_schedule(model: nn.Module) -> WeightDecaySchedule | None:
    """The module of ``model`` that declares a weight-decay schedule (an objective), or None.

    Raises:
        ValueError: If more than one module declares one.
    """
    found = [m for m in model.modules() if isinstance(m, WeightDecaySchedule)]
    if len(found) > 1:
        raise ValueError(f"more than one module schedules the weight decay: {[type(m).__name__ for m in found]}")
    return found[0] if found else None


def set_weight_decay(optimizer: torch.optim.Optimizer, value: float) -> None:
    """Set the decay of the decayed parameter group(s) of :func:`param_groups` (biases and norms keep none)."""
    for group in optimizer.param_groups:
        if group.get("decayed"):
            group["weight_decay"] = value
