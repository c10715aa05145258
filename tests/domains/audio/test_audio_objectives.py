"""APC, TERA, HuBERT and BEST-RQ on a tiny conformer: contracts, alterations, and the loss decreasing."""

from __future__ import annotations

import pytest
import torch

from domains.audio.encoders import AudioEncoderConfig, build_audio_encoder
from mmssl.objectives.apc import APC, APCConfig
from mmssl.objectives.base import SSLModel
from mmssl.objectives.best_rq import BestRQ, BestRQConfig, RandomProjectionQuantizer
from mmssl.objectives.hubert import HuBERT, HuBERTConfig
from mmssl.objectives.tera import TERA, TERAConfig, tera_alter
from mmssl.types import Batch
from tests.fitting import fit


def _conformer(causal: bool = False):
    torch.manual_seed(0)
    return build_audio_encoder(
        AudioEncoderConfig(
            arch="conformer",
            hidden_size=32,
            num_layers=2,
            num_heads=2,
            intermediate_size=64,
            input_dim=16,
            conv_depthwise_kernel_size=3,
            causal=causal,
        )
    )


def _batch(seed: int = 0) -> Batch:
    """Smooth 16-feature frame sequences (predictable from the past), the second row padded."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(60).float()
    freq = torch.rand(4, 1, 16, generator=g) * 0.3 + 0.05
    units = torch.sin(t[None, :, None] * freq + torch.rand(4, 1, 16, generator=g) * 6)
    pad = torch.zeros(4, 60, dtype=torch.bool)
    pad[1, 45:] = True
    units = units.masked_fill(pad[..., None], 0.0)
    targets = (units[..., :4] > 0).long() @ torch.tensor([1, 2, 4, 8])  # 16 "clusters" of the frames
    return Batch(units=units, padding_mask=pad, extras={"targets": targets.masked_fill(pad, -100)})


def _train(objective, encoder, steps: int = 30, lr: float = 3e-3) -> list[float]:
    return fit(SSLModel(encoder, objective), lambda step: _batch(), steps, lr=lr, seed=lambda step: step - 1)


def test_apc_needs_a_causal_encoder_and_learns() -> None:
    with pytest.raises(ValueError, match="encoder.causal=true"):
        APC(APCConfig(), _conformer(causal=False))
    encoder = _conformer(causal=True)
    losses = _train(APC(APCConfig(shift=3), encoder), encoder)
    assert losses[-1] < 0.7 * losses[0]


def test_apc_ignores_padding_targets() -> None:
    encoder = _conformer(causal=True)
    objective = APC(APCConfig(shift=3), encoder)
    batch = _batch()
    noisy = batch.units.clone()
    noisy[1, 45:] = 100.0  # garbage in the padding changes nothing
    a = objective(encoder, batch).loss
    b = objective(encoder, batch.replace(units=noisy)).loss
    assert torch.allclose(a, b)


def test_tera_alterations() -> None:
    torch.manual_seed(0)
    units = torch.randn(8, 100, 16) + 5
    maskable = torch.ones(8, 100, dtype=torch.bool)
    maskable[0, 80:] = False
    altered, target = tera_alter(units, maskable, TERAConfig(max_channels=4, channel_groups=2))
    assert not target[0, 80:].any()
    time = target.all(-1)  # units altered in every channel
    assert 0.05 < time[1:].float().mean() < 0.3  # ~15% of units (spans may overlap)
    zeroed = (altered == 0).all(-1) & time
    assert zeroed.sum() > 0.6 * time.sum()  # ~80% of the altered units are zeroed
    band = target & ~time[..., None]  # channel-band elements
    assert torch.equal(band[..., :8].any(1), band[..., 8:].any(1))  # the same band in both channel groups
    assert (altered[~target] == units[~target]).all()


def test_tera_learns() -> None:
    encoder = _conformer()
    losses = _train(TERA(TERAConfig(time_span=4, max_channels=4, channel_groups=2), encoder), encoder)
    assert losses[-1] < 0.8 * losses[0]


def test_hubert_needs_targets_and_learns() -> None:
    encoder = _conformer()
    objective = HuBERT(HuBERTConfig(num_classes=16, embed_dim=16, mask_prob=0.1, mask_length=5), encoder)
    with pytest.raises(ValueError, match="extras\\['targets'\\]"):
        objective(encoder, _batch().replace(extras={}))
    with pytest.raises(ValueError, match="num_classes"):
        HuBERT(HuBERTConfig(num_classes=8), encoder)(encoder, _batch())
    losses = _train(objective, encoder)
    assert losses[-1] < 0.7 * losses[0]


def test_random_projection_quantizer_is_frozen_and_deterministic() -> None:
    a, b = RandomProjectionQuantizer(16, 64, 8, seed=1), RandomProjectionQuantizer(16, 64, 8, seed=1)
    assert not list(a.parameters()) and set(a.state_dict()) == {"projection", "codebook"}
    x = torch.randn(100, 16)
    assert torch.equal(a(x), b(x)) and a(x).unique().numel() > 10
    assert torch.equal(a(x), a(3 * x))  # scale invariant: cosine to normalised codes


def test_best_rq_learns() -> None:
    encoder = _conformer()
    objective = BestRQ(BestRQConfig(codebook_size=32, codebook_dim=8, mask_prob=0.05, mask_length=5), encoder)
    assert not any(
        p.requires_grad for p in objective.quantizer.buffers() if p.is_floating_point() and p.grad is not None
    )
    losses = _train(objective, encoder)
    assert losses[-1] < 0.8 * losses[0]


def test_frame_objectives_reject_waveform_units() -> None:
    wav = build_audio_encoder(
        AudioEncoderConfig(
            hidden_size=32,
            num_layers=1,
            num_heads=2,
            intermediate_size=64,
            conv_dim=(16,) * 7,
            num_conv_pos_embeddings=16,
            num_conv_pos_embedding_groups=2,
            codevector_dim=16,
            num_codevectors_per_group=8,
            proj_codevector_dim=16,
        )
    )
    with pytest.raises(ValueError, match="unit_dim"):
        TERA(TERAConfig(), wav)
    with pytest.raises(ValueError, match="unit_dim"):
        BestRQ(BestRQConfig(), wav)
