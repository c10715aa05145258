"""Optimizer and schedule shared by every recipe: AdamW with decay groups, warmup + cosine."""

from __future__ import annotations

import torch
from torch import nn
from transformers import get_cosine_schedule_with_warmup

from mmssl.recipe import TrainConfig


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Split trainable parameters into decayed and non-decayed AdamW groups.

    Biases and normalisation weights (every parameter with fewer than 2 dimensions: LayerNorm,
    BatchNorm and RMSNorm gains, biases, scalar temperatures) get no weight decay, as in
    BERT and nanoGPT; matrices and embeddings do.
    """
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(
    model: nn.Module, cfg: TrainConfig
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """AdamW (decoupled decay, Loshchilov & Hutter 2019) and a linear-warmup cosine schedule."""
    # the fused kernel (CPU and CUDA) updates all parameters in one pass instead of a loop per tensor
    optimizer = torch.optim.AdamW(
        param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, fused=True
    )
    scheduler = get_cosine_schedule_with_warmup(optimizer, min(cfg.warmup_steps, cfg.max_steps), cfg.max_steps)
    return optimizer, scheduler
