"""Audio views: each augmentation on fixed inputs, the views of a clip, the per-step transform, load-time checks."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from domains.audio.data import AudioCollator
from domains.audio.features import fbank_units
from domains.audio.views import (
    AudioViewConfig,
    AudioViewTransform,
    add_noise_at_snr,
    band_mask,
    change_speed,
    make_views,
    mask_bands,
    mix_background,
    resized_time_crop,
    shift_pitch,
)
from mmssl.config import ConfigError
from mmssl.recipe import load_recipe
from mmssl.types import Extra

RATE = 16000
OFF = AudioViewConfig(speed_p=0.0, pitch_p=0.0, noise_p=0.0, mix_p=0.0, crop_p=0.0, time_mask_p=0.0, freq_mask_p=0.0)


def tone(freq: float = 440.0, seconds: float = 1.0) -> torch.Tensor:
    return 0.5 * torch.sin(2 * math.pi * freq * torch.arange(int(seconds * RATE)) / RATE)


def peak_hz(wave: torch.Tensor) -> float:
    return torch.fft.rfft(wave).abs().argmax().item() * RATE / len(wave)


# ---------------------------------------------------------------- the ops on fixed inputs


def test_time_band_zeroes_exactly_the_stated_units_and_leaves_padding() -> None:
    units = torch.ones(2, 10, 160)
    padding = torch.zeros(2, 10, dtype=torch.bool)
    padding[1, 8:] = True
    units[1, 8:] = 7.0  # padding values stay as they are
    time = band_mask(10, torch.tensor([[3], [6]]), torch.tensor([[4], [5]]))
    out = mask_bands(units, padding, time, torch.zeros(2, 80, dtype=torch.bool))
    zero = torch.zeros(2, 10, dtype=torch.bool)
    zero[0, 3:7] = True
    zero[1, 6:8] = True  # 6..10 asked, 8 and 9 are padding
    assert torch.equal(out[..., 0] == 0, zero)
    assert torch.all(out[1, 8:] == 7.0) and torch.all(out[~zero] != 0)


def test_frequency_band_zeroes_the_same_mel_bins_of_every_stacked_frame() -> None:
    units = torch.ones(1, 4, 160)  # 2 stacked frames of 80 bins
    freq = band_mask(80, torch.tensor([[5, 70]]), torch.tensor([[3, 0]]))  # bins 5, 6, 7; a zero-width band
    out = mask_bands(units, torch.zeros(1, 4, dtype=torch.bool), torch.zeros(1, 4, dtype=torch.bool), freq)
    zeroed = (out[0] == 0).all(0).nonzero().flatten().tolist()
    assert zeroed == [5, 6, 7, 85, 86, 87] and (out != 0).sum() == 4 * (160 - 6)


@pytest.mark.parametrize("snr_db", [-5.0, 0.0, 10.0, 30.0])
def test_noise_is_added_at_the_requested_snr(snr_db: float) -> None:
    wave = tone()
    noise = torch.randn(len(wave), generator=torch.Generator().manual_seed(0))
    added = add_noise_at_snr(wave, noise, snr_db) - wave
    measured = 10 * torch.log10(wave.pow(2).mean() / added.pow(2).mean())
    assert measured.item() == pytest.approx(snr_db, abs=1e-3)


@pytest.mark.parametrize("factor", [0.9, 1.1, 1.25])
def test_speed_divides_the_length_by_the_factor_and_scales_the_pitch(factor: float) -> None:
    wave = tone(seconds=2.0)
    fast = change_speed(wave, factor, RATE)
    assert len(fast) == pytest.approx(len(wave) / factor, abs=len(wave) * 0.004)  # rate rounded to 100 Hz
    assert peak_hz(fast) == pytest.approx(440.0 * factor, rel=0.01)


@pytest.mark.parametrize("semitones", [-2.0, 3.0])
def test_pitch_shift_keeps_the_length_and_moves_the_tone(semitones: float) -> None:
    wave = tone()
    shifted = shift_pitch(wave, semitones, RATE)
    assert len(shifted) == len(wave)
    assert peak_hz(shifted) == pytest.approx(440.0 * 2 ** (semitones / 12), rel=0.01)


def test_background_mix_is_the_weighted_sum_with_the_background_tiled() -> None:
    wave, background = torch.ones(5), torch.tensor([0.0, 2.0])
    out = mix_background(wave, background, 0.25)
    assert torch.allclose(out, torch.tensor([0.75, 1.25, 0.75, 1.25, 0.75]))


def test_resized_time_crop_stretches_the_cropped_frames_over_the_clip() -> None:
    frames = torch.arange(40.0)[:, None].repeat(1, 80)  # 40 frames of 80 bins whose value is their index
    units = frames.reshape(20, 160)  # stacked in pairs
    assert torch.allclose(resized_time_crop(units, 0, 40, 80), units)
    out = resized_time_crop(units, 10, 20, 80).reshape(40, 80)
    assert torch.all(out == out[:, :1])  # every bin of a frame alike
    ramp = out[:, 0]
    assert ramp.min() == 10.0 and ramp.max() == 29.0 and torch.all(ramp.diff() >= 0)
    assert torch.allclose(ramp.diff()[1:-1], torch.full((37,), 0.5))  # 20 frames over 40: half a frame a step


# ---------------------------------------------------------------- views


def clips() -> list[torch.Tensor]:
    return [tone(300.0, 1.0), tone(600.0, 0.7), tone(900.0, 0.5)]


def test_views_of_one_utterance_differ_and_repeat_under_a_seed() -> None:
    cfg = AudioViewConfig(mix_p=0.5, crop_p=0.5)
    first = make_views(clips(), cfg, 2, RATE, generator=torch.Generator().manual_seed(3))
    again = make_views(clips(), cfg, 2, RATE, generator=torch.Generator().manual_seed(3))
    for a, b in zip(first, again):
        assert torch.equal(a.units, b.units) and torch.equal(a.padding_mask, b.padding_mask)
    differs = lambda a, b: a.units.shape != b.units.shape or not torch.equal(a.units, b.units)  # noqa: E731
    assert differs(first[0], first[1])
    other = make_views(clips(), cfg, 2, RATE, generator=torch.Generator().manual_seed(4))
    assert differs(first[0], other[0])


def test_views_with_every_op_off_are_the_clean_fbank_units() -> None:
    views = make_views(clips(), OFF, 2, RATE, generator=torch.Generator().manual_seed(0))
    for view in views:
        for b, wave in enumerate(clips()):
            clean = fbank_units(wave, RATE)
            assert torch.allclose(view.units[b, : len(clean)], clean)
            assert int((~view.padding_mask[b]).sum()) == len(clean)


def test_masks_fire_with_probability_one_and_only_then() -> None:
    masked = AudioViewConfig(**{**OFF.__dict__, "time_mask_p": 1.0, "time_mask_width": 5, "time_masks": 3})
    view = make_views(clips(), masked, 1, RATE, generator=torch.Generator().manual_seed(0))[0]
    zero_units = ((view.units == 0).all(-1) & ~view.padding_mask).sum(1)
    assert torch.all(zero_units > 0) and torch.all(zero_units <= 15)
    clean = make_views(clips(), OFF, 1, RATE, generator=torch.Generator().manual_seed(0))[0]
    assert not ((clean.units == 0).all(-1) & ~clean.padding_mask).any()


def test_transform_keeps_the_clean_units_and_adds_two_views() -> None:
    rows = [{"wave": w, "label": -1, "index": i} for i, w in enumerate(clips())]
    batch = AudioCollator("fbank", RATE, keep_waves=True)(rows)
    assert torch.equal(batch.extras[Extra.WAVE_LENGTHS], torch.tensor([16000, 11200, 8000]))
    torch.manual_seed(0)
    out = AudioViewTransform(AudioViewConfig(), 2, RATE, 80, 2)(batch)
    assert torch.equal(out.units, batch.units) and not out.extras and len(out.views) == 2
    assert all(v.units.shape[0] == 3 and v.units.shape[-1] == 160 for v in out.views)


# ---------------------------------------------------------------- load-time checks


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("data.augment.speed_p=1.5", "data.augment.speed_p"),
        ("data.augment.time_mask_p=-0.1", "data.augment.time_mask_p"),
        ("data.augment.snr_db=[20.0,5.0]", "data.augment.snr_db"),
        ("data.augment.crop_scale=[0.8,0.5]", "data.augment.crop_scale"),
        ("data.augment.time_mask_width=500", "data.augment.time_mask_width"),
        ("data.augment.freq_mask_width=81", "data.augment.freq_mask_width"),
        ("data.views=1", "data.views"),
        ("data.spec_augment=true", "data.views"),
    ],
)
def test_bad_view_settings_are_named_at_load_time(override: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_recipe("delores", [override])


def test_speech_simclr_needs_two_views_at_load_time(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"data\.views=2"):
        load_recipe("speech_simclr", ["data.views=0"])
