"""Tiny CPC / vq-wav2vec audio models and waveform batches for the CPC-family tests."""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch

from domains.audio.encoders import AudioEncoderConfig, build_audio_encoder
from domains.audio.features import normalise_waveform
from mmssl.encoder import Encoder
from mmssl.objectives.base import SSLModel
from mmssl.types import Batch

RATE = 16000
# CPC's strides (160 samples a frame) at 16 channels, a 32-wide GRU: 0.5 s crops give 48 frames
TINY_CPC = dict(arch="cpc", cpc_conv_width=16, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)
TINY_VQ = dict(
    TINY_CPC, cpc_quantizer="gumbel", num_codevector_groups=2, num_codevectors_per_group=8, codevector_dim=16
)


def cpc_encoder(seed: int = 0, **settings: object) -> Encoder:
    torch.manual_seed(seed)
    return build_audio_encoder(AudioEncoderConfig(**{**TINY_CPC, **settings}))


def waves(seed: int = 0, batch: int = 4, seconds: float = 0.5, short: int = 0) -> Batch:
    """Normalised tone sweeps (a different pitch per row), right-padded: the last row ``short`` samples shorter."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(int(seconds * RATE)) / RATE
    rows = []
    for b in range(batch):
        freq = 200.0 + 150.0 * b + 50.0 * float(torch.rand((), generator=g))
        x = torch.sin(2 * torch.pi * (freq + 300.0 * t) * t) + 0.05 * torch.randn(len(t), generator=g)
        rows.append(normalise_waveform(x))
    units = torch.stack(rows)
    padding = torch.zeros_like(units, dtype=torch.bool)
    if short:
        units[-1, -short:] = 0.0
        padding[-1, -short:] = True
    return Batch(units=units, padding_mask=padding)


def train(model: SSLModel, optimizer: torch.optim.Optimizer, steps: range, max_steps: int = 6) -> list[float]:
    """One step per ``step`` on its own batch, the RNG seeded by the step (as the trainer re-seeds); the losses."""
    losses = []
    for step in steps:
        torch.manual_seed(step)
        loss = model(waves(seed=step, short=800)).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        model.after_optimizer_step(step, max_steps)
        losses.append(loss.item())
    return losses


def assert_resumes_exactly(build: Callable[[int], SSLModel], saved: set[str] = frozenset()) -> None:
    """Three steps, a checkpoint (model + optimizer state), three more; a model built from another seed that loads the
    checkpoint takes the same three steps and ends in the same state."""
    model = build(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    train(model, optimizer, range(1, 4))
    state, opt_state = copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict())
    assert saved <= set(state), saved - set(state)
    uninterrupted = train(model, optimizer, range(4, 7))
    resumed = build(5)
    resumed.load_state_dict(state)
    resumed_optimizer = torch.optim.AdamW(resumed.parameters(), lr=1e-3)
    resumed_optimizer.load_state_dict(opt_state)
    assert train(resumed, resumed_optimizer, range(4, 7)) == uninterrupted
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), resumed.state_dict().values()))
