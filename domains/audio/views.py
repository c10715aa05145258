"""Augmented views of utterances for joint-embedding objectives on speech (Speech SimCLR, DeLoRes).

A view of a clip is made in two stages, each op applied to a sample with its own probability and
random strength (drawn per sample, from the given generator or torch's global RNG, which the trainer
seeds per step):

* on the waveform: speed perturbation (:func:`change_speed`), pitch shift (:func:`shift_pitch`),
  mixing in another clip of the batch as background (:func:`mix_background`), white noise at a random
  SNR (:func:`add_noise_at_snr`);
* on its fbank units (:func:`domains.audio.features.fbank_units`): a random resized crop in time
  (:func:`resized_time_crop`), then SpecAugment time and frequency bands set to 0 (:func:`mask_bands`).

Speech SimCLR (Jiang et al. 2020) uses speed, pitch, noise and the two masks; DeLoRes (Ghosh et al.
2022) takes BYOL-A's audio augmentations: mixup with background audio, random resized crop in time,
plus spectrogram masking. :class:`AudioViewTransform` is the audio domain's per-step transform with
``data.views > 0``; the objective reads ``Batch.views`` (:mod:`mmssl.objectives.views`).

Example::

    views = make_views(waves, AudioViewConfig(), num_views=2, sampling_rate=16000)  # 2 x Batch [B, T, 160]
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torchaudio.functional as AF
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

from domains.audio.features import fbank_units
from mmssl.types import Batch, Extra

RATE_STEP_HZ = 100  # resampling rates are rounded to multiples of this, so their gcd with 16 kHz keeps kernels small
_PROBABILITIES = ("speed_p", "pitch_p", "mix_p", "noise_p", "crop_p", "time_mask_p", "freq_mask_p")


def _interval(name: str, value: tuple[float, float], low: float, high: float = math.inf) -> None:
    if len(value) != 2 or not low <= value[0] <= value[1] <= high:
        raise ValueError(
            f"data.augment.{name} must be [min, max] with {low} <= min <= max <= {high}, got {list(value)}"
        )


@dataclass(frozen=True)
class AudioViewConfig:
    """The augmentation of one view (a recipe's ``data.augment``). Defaults: Speech SimCLR's set of ops.

    Attributes:
        speed_p, speed: probability of speed perturbation, and the factor's range (Kaldi's 0.9-1.1).
        pitch_p, pitch_semitones: probability of a pitch shift, uniform in ``[-s, s]`` semitones.
        mix_p, mix_ratio: probability of mixing in another clip of the batch, weight uniform in ``[0, r]``
            (BYOL-A / DeLoRes mixup: 0.4).
        noise_p, snr_db: probability of white noise, SNR uniform in ``[min, max]`` dB.
        crop_p, crop_scale: probability of a random resized crop in time, kept fraction's range.
        time_mask_p, time_masks, time_mask_width: probability of time masking, spans per view, max width (units).
        freq_mask_p, freq_masks, freq_mask_width: probability of frequency masking, bands, max width (mel bins).
    """

    speed_p: float = 1.0
    speed: tuple[float, float] = (0.9, 1.1)
    pitch_p: float = 0.5
    pitch_semitones: float = 2.0
    mix_p: float = 0.0
    mix_ratio: float = 0.4
    noise_p: float = 0.5
    snr_db: tuple[float, float] = (5.0, 20.0)
    crop_p: float = 0.0
    crop_scale: tuple[float, float] = (0.6, 1.0)
    time_mask_p: float = 1.0
    time_masks: int = 2
    time_mask_width: int = 10  # units of 20 ms (SpecAugment LibriSpeech basic: T = 100 frames of 10 ms)
    freq_mask_p: float = 1.0
    freq_masks: int = 2
    freq_mask_width: int = 8  # mel bins (SpecAugment LB: F = 27 of 80; 8 as the audio domain's spec_augment)

    def __post_init__(self) -> None:
        for name in _PROBABILITIES:
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"data.augment.{name} is a probability and must be in [0, 1], got {value}")
        _interval("speed", self.speed, 0.5, 2.0)
        _interval("snr_db", self.snr_db, -math.inf)
        _interval("crop_scale", self.crop_scale, 0.05, 1.0)
        if not 0.0 <= self.mix_ratio <= 1.0 or not 0.0 <= self.pitch_semitones <= 12.0:
            raise ValueError(
                f"data.augment.mix_ratio must be in [0, 1] and data.augment.pitch_semitones in [0, 12], "
                f"got {self.mix_ratio} and {self.pitch_semitones}"
            )
        for name in ("time_masks", "time_mask_width", "freq_masks", "freq_mask_width"):
            if getattr(self, name) < 0:
                raise ValueError(f"data.augment.{name} must be >= 0, got {getattr(self, name)}")


# ------------------------------------------------------------------- waveform ops (one [S] clip each)
def _rate(sampling_rate: int, factor: float) -> int:
    return max(RATE_STEP_HZ, round(sampling_rate * factor / RATE_STEP_HZ) * RATE_STEP_HZ)


def change_speed(wave: Tensor, factor: float, sampling_rate: int) -> Tensor:
    """Speed perturbation (Ko et al. 2015): ``[S] -> [~S / factor]``, pitch scaled by ``factor`` too.

    The clip is read as sampled at ``factor * sampling_rate`` (rounded to :data:`RATE_STEP_HZ`) and resampled.
    """
    return AF.resample(wave, _rate(sampling_rate, factor), sampling_rate)


def shift_pitch(wave: Tensor, semitones: float, sampling_rate: int, n_fft: int = 512) -> Tensor:
    """``[S] -> [S]``: pitch times ``2 ** (semitones / 12)`` at the same duration.

    A phase vocoder (:func:`torchaudio.functional.phase_vocoder`) stretches the clip by the factor, then it is
    resampled back to its length (what :func:`torchaudio.functional.pitch_shift` does, with the rate rounded
    to :data:`RATE_STEP_HZ` so the resampling kernel stays small).
    """
    source = _rate(sampling_rate, 2.0 ** (semitones / 12.0))
    factor = source / sampling_rate
    hop = n_fft // 4
    window = torch.hann_window(n_fft, device=wave.device, dtype=wave.dtype)
    spec = torch.stft(wave, n_fft, hop, window=window, return_complex=True)  # [n_fft / 2 + 1, frames]
    advance = torch.linspace(0, math.pi * hop, spec.shape[0], device=wave.device, dtype=wave.dtype)[:, None]
    stretched = AF.phase_vocoder(spec, 1.0 / factor, advance)
    longer = torch.istft(stretched, n_fft, hop, window=window, length=round(len(wave) * factor))
    out = AF.resample(longer, source, sampling_rate)[: len(wave)]
    return F.pad(out, (0, len(wave) - len(out)))


def mix_background(wave: Tensor, background: Tensor, ratio: float) -> Tensor:
    """``(1 - ratio) * wave + ratio * background`` with the background tiled or cut to the clip's length ``[S]``."""
    repeats = math.ceil(len(wave) / len(background))
    return (1.0 - ratio) * wave + ratio * background.repeat(repeats)[: len(wave)]


def add_noise_at_snr(wave: Tensor, noise: Tensor, snr_db: float) -> Tensor:
    """``wave + a * noise`` with ``a`` such that ``10 log10(P(wave) / P(a * noise)) = snr_db`` (``[S]`` each)."""
    snr = torch.tensor([snr_db], device=wave.device, dtype=wave.dtype)
    return AF.add_noise(wave[None], noise[None], snr)[0]


# ------------------------------------------------------------------- unit ops ([T, C] or [B, T, C])
def resized_time_crop(units: Tensor, start: int, length: int, features_per_frame: int) -> Tensor:
    """``[T, C] -> [T, C]``: frames ``start : start + length`` stretched back to the clip's ``T * stride`` frames.

    Stacked units (``C = stride * features_per_frame``) are unstacked first, so the crop and the linear
    interpolation run over the 10 ms frames.
    """
    t, c = units.shape
    frames = units.reshape(t * c // features_per_frame, features_per_frame)
    crop = frames[start : start + length].T[None]  # [1, F, length]
    stretched = F.interpolate(crop, size=frames.shape[0], mode="linear", align_corners=False)[0].T
    return stretched.reshape(t, c)


def band_mask(size: int, starts: Tensor, widths: Tensor) -> Tensor:
    """``[B, size]`` bool, True in the bands ``[start, start + width)`` of each row (``starts, widths: [B, K]``)."""
    pos = torch.arange(size, device=starts.device)
    return ((pos >= starts[..., None]) & (pos < (starts + widths)[..., None])).any(1)


def mask_bands(units: Tensor, padding_mask: Tensor, time: Tensor, freq: Tensor) -> Tensor:
    """``[B, T, C]`` copy with the time bands ``time [B, T]`` and frequency bands ``freq [B, n_bins]`` set to 0.

    A frequency band covers the same mel bins in every stacked frame (``C = stride * n_bins``); padding stays.
    """
    freq = freq.repeat(1, units.shape[-1] // freq.shape[1])
    drop = (time[:, :, None] | freq[:, None, :]) & ~padding_mask[:, :, None]
    return units.masked_fill(drop, 0.0)


# ------------------------------------------------------------------- sampling and views
def _uniform(n: int, low: float, high: float, generator: torch.Generator | None) -> Tensor:
    return low + (high - low) * torch.rand(n, generator=generator, dtype=torch.float64)


def _chosen(n: int, p: float, generator: torch.Generator | None) -> Tensor:
    return torch.rand(n, generator=generator) < p


def sample_bands(
    extent: Tensor, count: int, width: int, p: float, size: int, generator: torch.Generator | None
) -> Tensor:
    """``[B, size]`` bool: in each row chosen with probability ``p``, ``count`` bands of ``U{0..width}`` positions
    starting uniformly where they fit in the row's ``extent [B]``; other rows nothing."""
    b = extent.shape[0]
    widths = torch.randint(0, width + 1, (b, count), generator=generator)
    room = (extent[:, None].cpu() - widths).clamp(min=0) + 1
    starts = (torch.rand(b, count, generator=generator) * room).long()
    widths = widths * _chosen(b, p, generator)[:, None]
    return band_mask(size, starts, widths).to(extent.device)


def augment_waves(
    waves: list[Tensor], cfg: AudioViewConfig, sampling_rate: int, generator: torch.Generator | None = None
) -> list[Tensor]:
    """One waveform view of each ``[S_i]`` clip: speed, pitch, background mix, noise (each by its probability).

    Every parameter is drawn for every sample, so the draws do not depend on which ops fire. The background
    of clip ``i`` is the clean clip ``(i + k) % B`` for one random ``k`` in ``1..B-1`` (itself when ``B = 1``).
    """
    b = len(waves)
    speed = torch.where(_chosen(b, cfg.speed_p, generator), _uniform(b, *cfg.speed, generator), 1.0)
    pitch = torch.where(
        _chosen(b, cfg.pitch_p, generator), _uniform(b, -cfg.pitch_semitones, cfg.pitch_semitones, generator), 0.0
    )
    mix = torch.where(_chosen(b, cfg.mix_p, generator), _uniform(b, 0.0, cfg.mix_ratio, generator), 0.0)
    snr = torch.where(_chosen(b, cfg.noise_p, generator), _uniform(b, *cfg.snr_db, generator), math.inf)
    shift = int(torch.randint(1, max(b, 2), (1,), generator=generator)) % b
    out = []
    for i, wave in enumerate(waves):
        if _rate(sampling_rate, float(speed[i])) != sampling_rate:
            wave = change_speed(wave, float(speed[i]), sampling_rate)
        if _rate(sampling_rate, 2.0 ** (float(pitch[i]) / 12.0)) != sampling_rate:
            wave = shift_pitch(wave, float(pitch[i]), sampling_rate)
        if mix[i] > 0:
            wave = mix_background(wave, waves[(i + shift) % b], float(mix[i]))
        if math.isfinite(snr[i]):
            noise = torch.randn(len(wave), generator=generator).to(wave)
            wave = add_noise_at_snr(wave, noise, float(snr[i]))
        out.append(wave)
    return out


def _crop_units(
    units: Tensor, lengths: Tensor, cfg: AudioViewConfig, n_bins: int, generator: torch.Generator | None
) -> Tensor:
    """Random resized crops in time of the rows chosen with ``cfg.crop_p`` (``[B, T, C]``, valid ``lengths [B]``)."""
    b, _, c = units.shape
    chosen = _chosen(b, cfg.crop_p, generator)
    scale = _uniform(b, *cfg.crop_scale, generator)
    offset = torch.rand(b, generator=generator, dtype=torch.float64)
    out = units.clone()
    for i in torch.nonzero(chosen).flatten().tolist():
        frames = int(lengths[i]) * c // n_bins
        keep = max(1, round(float(scale[i]) * frames))
        start = int(float(offset[i]) * (frames - keep + 1))
        out[i, : int(lengths[i])] = resized_time_crop(units[i, : int(lengths[i])], start, keep, n_bins)
    return out


def augment_units(
    units: Tensor, padding_mask: Tensor, cfg: AudioViewConfig, n_bins: int, generator: torch.Generator | None = None
) -> Tensor:
    """``[B, T, C]`` fbank units (``C = stride * n_bins``) -> random resized crop in time, then time and frequency
    bands set to 0 (SpecAugment, Park et al. 2019), each by its probability."""
    b, t, _ = units.shape
    lengths = (~padding_mask).sum(1)
    units = _crop_units(units, lengths, cfg, n_bins, generator)
    time = sample_bands(lengths, cfg.time_masks, cfg.time_mask_width, cfg.time_mask_p, t, generator)
    bins = torch.full((b,), n_bins, device=units.device)
    freq = sample_bands(bins, cfg.freq_masks, cfg.freq_mask_width, cfg.freq_mask_p, n_bins, generator)
    return mask_bands(units, padding_mask, time, freq)


def make_views(
    waves: list[Tensor],
    cfg: AudioViewConfig,
    num_views: int,
    sampling_rate: int,
    num_mel_bins: int = 80,
    frame_stride: int = 2,
    generator: torch.Generator | None = None,
) -> tuple[Batch, ...]:
    """``num_views`` independently augmented views of the clips ``waves`` (``[S_i]`` each, in [-1, 1]).

    Returns:
        Views with ``units [B, T_v, num_mel_bins * frame_stride]`` and ``padding_mask [B, T_v]`` (speed
        perturbation changes ``T_v`` between views).
    """
    views = []
    for _ in range(num_views):
        augmented = augment_waves(waves, cfg, sampling_rate, generator)
        frames = [fbank_units(w, sampling_rate, num_mel_bins, frame_stride) for w in augmented]
        units = pad_sequence(frames, batch_first=True)
        lengths = torch.tensor([len(f) for f in frames], device=units.device)
        padding_mask = torch.arange(units.shape[1], device=units.device)[None] >= lengths[:, None]
        views.append(
            Batch(units=augment_units(units, padding_mask, cfg, num_mel_bins, generator), padding_mask=padding_mask)
        )
    return tuple(views)


class AudioViewTransform:
    """The per-step transform with ``data.views``: the batch's clean fbank units, with ``views`` made from the raw
    clips the collator keeps (``extras[Extra.WAVES] [B, S]``, ``extras[Extra.WAVE_LENGTHS] [B]``).

    Runs on the batch's device with torch's global RNG (seeded per step by the trainer, so a resumed run
    makes the same views). The returned batch's units stay the clean ones (Speech SimCLR's reconstruction
    target); its extras are dropped.
    """

    def __init__(
        self, cfg: AudioViewConfig, num_views: int, sampling_rate: int, num_mel_bins: int, frame_stride: int
    ) -> None:
        self.cfg = cfg
        self.num_views = num_views
        self.sampling_rate = sampling_rate
        self.num_mel_bins = num_mel_bins
        self.frame_stride = frame_stride

    def __call__(self, batch: Batch) -> Batch:
        waves = batch.extras[Extra.WAVES]
        lengths = batch.extras[Extra.WAVE_LENGTHS].tolist()
        clips = [w[:n] for w, n in zip(waves, lengths)]
        views = make_views(clips, self.cfg, self.num_views, self.sampling_rate, self.num_mel_bins, self.frame_stride)
        return Batch(units=batch.units, padding_mask=batch.padding_mask, views=views)
