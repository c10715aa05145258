"""The two unit streams of an utterance, and SpecAugment.

* waveform: the samples themselves, normalised to zero mean and unit variance per
  utterance (``Wav2Vec2FeatureExtractor(do_normalize=True)``), for a wav2vec 2.0 conv
  feature encoder; ``units`` is ``[B, S]``.
* fbank: Kaldi log-mel filterbanks (25 ms windows every 10 ms, povey window, pre-emphasis
  0.97) computed by :func:`torchaudio.compliance.kaldi.fbank`, normalised per utterance and
  mel bin, then ``stride`` consecutive frames stacked into one unit (``[T / stride,
  n_mels * stride]``): exactly what transformers' ``SeamlessM4TFeatureExtractor`` (the
  w2v-BERT 2.0 processor shipped with frame-encoder exports) computes.

:func:`spec_augment` masks time spans and frequency bands of a batch (Park et al. 2019).
"""

from __future__ import annotations

import torch
from torch import Tensor


def normalise_waveform(wave: Tensor, eps: float = 1e-7) -> Tensor:
    """Zero mean, unit variance over the utterance (``Wav2Vec2FeatureExtractor``'s ``do_normalize``)."""
    return (wave - wave.mean()) / torch.sqrt(wave.var(unbiased=False) + eps)


def log_fbank(wave: Tensor, sampling_rate: int, num_mel_bins: int = 80) -> Tensor:
    """``[frames, num_mel_bins]`` Kaldi log-mel energies of a ``[S]`` waveform in ``[-1, 1]``."""
    import torchaudio.compliance.kaldi as kaldi

    return kaldi.fbank(
        wave[None] * 32768.0,
        num_mel_bins=num_mel_bins,
        sample_frequency=sampling_rate,
        frame_length=25.0,
        frame_shift=10.0,
        dither=0.0,
        preemphasis_coefficient=0.97,
        remove_dc_offset=True,
        window_type="povey",
        low_freq=20.0,
        high_freq=0.0,
        use_energy=False,
        snip_edges=True,
    )


def fbank_units(wave: Tensor, sampling_rate: int, num_mel_bins: int = 80, stride: int = 2) -> Tensor:
    """``[T, num_mel_bins * stride]``: normalised log-mel frames, ``stride`` frames per unit.

    Matches ``SeamlessM4TFeatureExtractor(num_mel_bins, stride)`` on one utterance
    (per-bin mean and unbiased variance, eps 1e-7; trailing frames that do not fill a unit
    are dropped).

    Raises:
        ValueError: if the clip is shorter than one unit (``25 + 10 * (stride - 1)`` ms).
    """
    feats = log_fbank(wave, sampling_rate, num_mel_bins)
    if feats.shape[0] < max(stride, 2):
        raise ValueError(f"a clip of {len(wave)} samples is too short for one fbank unit")
    feats = (feats - feats.mean(0)) / torch.sqrt(feats.var(0, unbiased=True) + 1e-7)
    t = feats.shape[0] // stride
    return feats[: t * stride].reshape(t, num_mel_bins * stride)


def mfcc_with_deltas(wave: Tensor, sampling_rate: int, num_ceps: int = 13) -> Tensor:
    """``[frames, 3 * num_ceps]`` Kaldi MFCCs with deltas and delta-deltas, HuBERT's first-iteration
    clustering features (Hsu et al. 2021, sec. IV-B: 39-dim MFCC, 10 ms hop)."""
    import torchaudio.compliance.kaldi as kaldi
    import torchaudio.functional as AF

    mfcc = kaldi.mfcc(
        wave[None] * 32768.0, sample_frequency=sampling_rate, num_ceps=num_ceps, dither=0.0, snip_edges=True
    )  # [T, C]
    d1 = AF.compute_deltas(mfcc.T[None])[0].T
    d2 = AF.compute_deltas(d1.T[None])[0].T
    return torch.cat([mfcc, d1, d2], dim=1)


def spec_augment(
    units: Tensor,
    padding_mask: Tensor,
    *,
    time_masks: int = 2,
    time_width: int = 10,
    freq_masks: int = 2,
    freq_width: int = 8,
    features_per_frame: int | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """SpecAugment time and frequency masking (Park et al. 2019) of a batch of frame units.

    Each row gets ``time_masks`` spans of ``U[0, time_width]`` units and ``freq_masks`` bands
    of ``U[0, freq_width]`` bins set to 0 (the utterance mean after per-bin normalisation).
    With stacked frames (``C = n_mels * stride``) pass ``features_per_frame = n_mels`` so a
    band covers the same mel bins in every stacked frame. Padding stays untouched.

    Args:
        units: ``[B, T, C]`` frame units.
        padding_mask: ``[B, T]`` bool, True at padding.

    Returns:
        ``[B, T, C]`` masked copy.
    """
    b, t, c = units.shape
    dev = units.device
    n_bins = features_per_frame or c
    lengths = (~padding_mask).sum(1)

    def spans(count: int, width: int, extent: Tensor, size: int) -> Tensor:
        if count == 0 or width == 0:
            return torch.zeros(b, size, dtype=torch.bool, device=dev)
        w = torch.randint(0, width + 1, (b, count), device=dev, generator=generator)
        start = (torch.rand(b, count, device=dev, generator=generator) * (extent[:, None] - w).clamp(min=0)).long()
        pos = torch.arange(size, device=dev)
        return ((pos >= start[..., None]) & (pos < (start + w)[..., None])).any(1)

    time = spans(time_masks, time_width, lengths, t)  # [B, T]
    freq = spans(freq_masks, freq_width, torch.full((b,), n_bins, device=dev), n_bins)  # [B, n_bins]
    freq = freq.repeat(1, c // n_bins)  # the same bins of every stacked frame
    drop = (time[:, :, None] | freq[:, None, :]) & ~padding_mask[:, :, None]
    return units.masked_fill(drop, 0.0)
