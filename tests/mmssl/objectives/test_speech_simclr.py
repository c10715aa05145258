"""Speech SimCLR and DeLoRes: the reconstruction term's formula, the composed loss, learning on fixed audio views,
exact resume of the recipes, config checks."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from domains.audio.encoders import AudioEncoderConfig, build_audio_encoder
from domains.audio.features import fbank_units
from domains.audio.views import AudioViewConfig, make_views
from mmssl.config import ConfigError, from_dict
from mmssl.encoder import Encoder
from mmssl.metrics import read_metrics
from mmssl.objectives.barlow_twins import BarlowTwins, BarlowTwinsConfig
from mmssl.objectives.simclr import nt_xent
from mmssl.objectives.speech_simclr import (
    SpeechSimCLR,
    SpeechSimCLRConfig,
    reconstruction_loss,
    time_aligned_targets,
)
from mmssl.pretrain import pretrain
from mmssl.types import Batch
from tests.domains.audio.audio_fixtures import TINY_AUDIO, TINY_CONFORMER

RATE = 16000
SMALL = {"projector_hidden_dim": 64, "projector_dim": 32}


def conformer(seed: int = 0) -> Encoder:
    torch.manual_seed(seed)
    cfg = AudioEncoderConfig(
        arch="conformer", input_dim=160, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
        conv_depthwise_kernel_size=3,
    )  # fmt: skip
    return build_audio_encoder(cfg)


def audio_batch(seed: int = 0, b: int = 6) -> Batch:
    """Clean fbank units of ``b`` tone sweeps with two Speech SimCLR views."""
    rng = np.random.default_rng(seed)
    waves = []
    for _ in range(b):
        t = np.arange(int(RATE * rng.uniform(0.4, 0.8))) / RATE
        f0 = rng.uniform(200, 1500)
        waves.append(torch.tensor(0.5 * np.sin(2 * math.pi * (f0 + 400 * t) * t), dtype=torch.float32))
    frames = [fbank_units(w, RATE) for w in waves]
    units = torch.nn.utils.rnn.pad_sequence(frames, batch_first=True)
    padding = torch.arange(units.shape[1])[None] >= torch.tensor([len(f) for f in frames])[:, None]
    views = make_views(waves, AudioViewConfig(), 2, RATE, generator=torch.Generator().manual_seed(seed))
    return Batch(units=units, padding_mask=padding, views=views)


# ---------------------------------------------------------------- the reconstruction term


def test_time_aligned_targets_interpolate_linearly_at_half_unit_centres() -> None:
    clean = torch.tensor([[[0.0], [2.0], [4.0], [9.0]]])  # [1, 4, 1]
    clean_pad = torch.tensor([[False, False, False, True]])  # 3 valid units
    view_pad = torch.tensor([[False] * 6 + [True]])  # the view has 6 valid units
    out = time_aligned_targets(clean, clean_pad, view_pad)[0, :, 0]
    # unit t of 6 sits at x = (t + 0.5) * 3 / 6 - 0.5 of the clean clip, clamped to [0, 2]
    x = np.clip((np.arange(6) + 0.5) * 3 / 6 - 0.5, 0, 2)
    expected = np.interp(x, [0, 1, 2], [0.0, 2.0, 4.0])
    assert np.allclose(out[:6].numpy(), expected) and out[6] == 0


def test_time_aligned_targets_are_the_clean_units_at_equal_length() -> None:
    clean = torch.randn(2, 5, 3)
    pad = torch.tensor([[False] * 5, [False] * 3 + [True] * 2])
    assert torch.allclose(time_aligned_targets(clean, pad, pad)[~pad], clean[~pad])


@pytest.mark.parametrize("kind", ["l1", "l2"])
def test_reconstruction_loss_is_the_mean_error_over_valid_units_and_features(kind: str) -> None:
    pred = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [50.0, 50.0]]])
    target = torch.tensor([[[0.0, 0.0], [3.0, 1.0], [0.0, 0.0]]])
    pad = torch.tensor([[False, False, True]])
    errors = [1.0, 2.0, 0.0, 3.0]  # the padded unit's error does not count
    expected = sum(errors) / 4 if kind == "l1" else sum(e * e for e in errors) / 4
    assert reconstruction_loss(pred, target, pad, kind).item() == pytest.approx(expected)


def test_loss_is_nt_xent_plus_the_weighted_mean_reconstruction_of_both_views() -> None:
    enc = conformer()
    config = SpeechSimCLRConfig(temperature=0.2, reconstruction_weight=0.3, **SMALL)
    objective = SpeechSimCLR(config, enc).eval()
    batch = audio_batch()
    out = objective(enc, batch)
    with torch.no_grad():
        encoded = [enc.encode(v) for v in batch.views]
        z = [objective.projector(e.pooled()) for e in encoded]
        recon = []
        for e in encoded:
            pred = objective.reconstruction(e.hidden)
            target = time_aligned_targets(batch.units, batch.padding_mask, e.padding_mask)
            keep = ~e.padding_mask
            recon.append((pred - target).abs()[keep].mean())
        expected = nt_xent(z[0], z[1], 0.2) + 0.3 * torch.stack(recon).mean()
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert set(out.terms) == {"nt_xent", "reconstruction"}
    assert torch.isfinite(out.logs["contrastive_accuracy"])


def test_weight_zero_is_simclr_on_audio_views() -> None:
    enc = conformer()
    objective = SpeechSimCLR(SpeechSimCLRConfig(reconstruction_weight=0.0, **SMALL), enc)
    out = objective(enc, audio_batch())
    assert out.loss.item() == pytest.approx(out.terms["nt_xent"].item())


# ---------------------------------------------------------------- learning on a fixed batch


@pytest.mark.parametrize(
    "build",
    [
        lambda enc: SpeechSimCLR(SpeechSimCLRConfig(**SMALL), enc),  # speech_simclr.yaml's objective
        lambda enc: BarlowTwins(BarlowTwinsConfig(**SMALL), enc),  # delores.yaml's objective
    ],
    ids=["speech_simclr", "delores_barlow_twins"],
)
def test_loss_decreases_on_a_fixed_batch_of_audio_views(build) -> None:
    enc = conformer()
    objective = build(enc)
    batch = audio_batch()
    params = [*enc.parameters(), *objective.parameters()]
    optimizer = torch.optim.Adam(params, lr=2e-3)
    losses = []
    for _ in range(15):
        loss = objective(enc, batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0], losses


# ---------------------------------------------------------------- recipes: exact resume, config checks


@pytest.mark.parametrize("recipe", ["speech_simclr", "delores"])
def test_recipe_resumes_exactly(recipe: str, tmp_path: Path, audio_folder: Path) -> None:
    overrides = [
        *TINY_AUDIO,
        *TINY_CONFORMER,
        f"data.path={audio_folder}",
        "objective.projector_hidden_dim=64",
        "objective.projector_dim=32",
        "train.checkpoint_every=2",
    ]
    full = pretrain(recipe, [*overrides, "train.max_steps=4"], tmp_path / "full")
    part = pretrain(recipe, [*overrides, "train.max_steps=2"], tmp_path / "part")
    pretrain(recipe, [*overrides, "train.max_steps=4"], part, resume=True)
    loss = lambda run: [r["loss"] for r in read_metrics(run) if "loss" in r]  # noqa: E731
    assert len(loss(full)) == 4 and loss(part) == pytest.approx(loss(full), rel=1e-5)


@pytest.mark.parametrize(
    ("key", "value"), [("temperature", 0.0), ("reconstruction_weight", -1.0), ("reconstruction_loss", "l3")]
)
def test_bad_objective_values_are_named(key: str, value: object) -> None:
    with pytest.raises(ConfigError, match=f"objective.{key}"):
        from_dict(SpeechSimCLRConfig, {key: value}, "objective")
