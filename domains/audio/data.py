"""Audio pretraining data: the recipe's ``data:`` section, duration-bucketed batches and the collator.

Data flow: :class:`domains.audio.io.AudioClips` -> :class:`BucketedClips` (an iterable that
yields clips grouped by duration, so a batch holds clips of similar length and little
padding; random crops of long clips to ``max_seconds``) -> :class:`AudioCollator` (a
:class:`Batch` of waveform samples ``[B, S]`` or fbank units ``[B, T, C]``, right-padded,
with ``padding_mask``) -> the per-step :class:`SpecAugmentTransform` (optional) -> the objective.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import IterableDataset

from domains.audio.features import fbank_units, mfcc_with_deltas, normalise_waveform, spec_augment
from domains.audio.io import AudioClips
from domains.audio.views import AudioViewConfig
from mmssl.types import Batch, Extra

STREAMS = ("waveform", "fbank")


@dataclass(frozen=True)
class AudioDataConfig:
    """A recipe's ``data:`` section for audio.

    ``source``: ``prepared`` (a ``mmssl data prepare`` name: ``speech``, ``kws``), ``folder``
    (every audio file under ``path``) or ``hub`` (a Hub dataset name or ``save_to_disk``
    folder in ``name``, audio in ``audio_column``). ``stream`` picks the units: ``waveform``
    samples (wav2vec 2.0) or stacked ``fbank`` frames (HuBERT, BEST-RQ, APC, TERA).
    """

    source: Literal["prepared", "folder", "hub"] = "prepared"
    name: str = "speech"
    path: str | None = None
    split: str = "train"
    audio_column: str = "audio"
    sampling_rate: int = 16000
    stream: Literal["waveform", "fbank"] = "waveform"
    num_mel_bins: int = 80
    frame_stride: int = 2  # fbank frames stacked per unit (w2v-BERT 2.0: 2, i.e. 20 ms units)
    max_seconds: float = 4.0  # longer clips are randomly cropped (wav2vec 2.0 crops to 250k samples, 15.6 s)
    min_seconds: float = 0.2  # shorter clips are skipped (and counted)
    max_clips: int | None = None  # use only the first N clips
    bucket_batches: int = 20  # batches per duration-sorting window; 0: plain shuffled batches
    targets: Literal["none", "mfcc-kmeans"] = "none"  # HuBERT iteration 1: k-means ids of MFCC frames
    num_clusters: int = 100  # HuBERT: 100 clusters on MFCC (Hsu et al. 2021, sec. IV-B)
    kmeans_clips: int = 500  # clips whose MFCC frames fit the k-means
    spec_augment: bool = False  # fbank stream: SpecAugment as a per-step transform
    time_masks: int = 2
    time_mask_width: int = 10  # units
    freq_masks: int = 2
    freq_mask_width: int = 8  # mel bins
    views: int = 0  # augmented views of each clip made every step (Speech SimCLR, DeLoRes: 2); 0: none
    augment: AudioViewConfig = field(default_factory=AudioViewConfig)  # the views' ops (domains/audio/views.py)

    def __post_init__(self) -> None:
        if self.source == "folder" and not self.path:
            raise ValueError("data.path is required when data.source=folder")
        if self.sampling_rate < 1000:
            raise ValueError(f"data.sampling_rate must be >= 1000 Hz, got {self.sampling_rate}")
        if self.frame_stride < 2:
            raise ValueError("data.frame_stride must be >= 2 (SeamlessM4TFeatureExtractor's frame stacking)")
        if not 0 < self.min_seconds <= self.max_seconds:
            raise ValueError("data.min_seconds must be > 0 and <= data.max_seconds")
        if self.targets != "none" and self.stream != "fbank":
            raise ValueError("data.targets=mfcc-kmeans needs data.stream=fbank (targets on the fbank unit grid)")
        if self.spec_augment and self.stream != "fbank":
            raise ValueError("data.spec_augment needs data.stream=fbank (wav2vec 2.0 masks its own conv frames)")
        if self.num_clusters < 2 or self.bucket_batches < 0:
            raise ValueError("data.num_clusters must be >= 2 and data.bucket_batches >= 0")
        if self.views:
            self._check_views()

    def _check_views(self) -> None:
        """Views are 2 or more fbank views, with masks that fit in the units of a ``max_seconds`` clip."""
        if self.views < 2 or self.stream != "fbank" or self.spec_augment:
            raise ValueError(
                f"data.views must be 0 or >= 2 (got {self.views}), with data.stream=fbank and "
                "data.spec_augment=false (the views make their own masks)"
            )
        units = int((self.max_seconds * 1000 - 25) // 10 + 1) // self.frame_stride
        if self.augment.time_mask_width > units:
            raise ValueError(
                f"data.augment.time_mask_width={self.augment.time_mask_width} is wider than the {units} units of a "
                f"data.max_seconds={self.max_seconds} clip"
            )
        if self.augment.freq_mask_width > self.num_mel_bins:
            raise ValueError(
                f"data.augment.freq_mask_width={self.augment.freq_mask_width} is wider than the "
                f"data.num_mel_bins={self.num_mel_bins} bins"
            )


def bucket_order(lengths: list[int], batch_size: int, window: int, rng: np.random.Generator) -> list[int]:
    """A permutation of clip indices in which every run of ``batch_size`` holds clips of similar length.

    The clips are shuffled, cut into windows of ``window * batch_size``, each window is sorted
    by length and cut into batches, and the batches of all windows are shuffled (the bucketing
    of fairseq / ESPnet, randomised per epoch). A final incomplete batch comes last.
    """
    perm = rng.permutation(len(lengths))
    span = max(1, window) * batch_size
    batches = []
    for start in range(0, len(perm), span):
        chunk = sorted(perm[start : start + span], key=lambda i: lengths[i])
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    full = [b for b in batches if len(b) == batch_size]
    rest = [i for b in batches if len(b) < batch_size for i in b]
    order = rng.permutation(len(full))
    return [i for k in order for i in full[k]] + rest


class BucketedClips(IterableDataset):
    """Clips in duration-bucketed, per-epoch shuffled order, long clips cropped at a random offset.

    Deterministic given ``(seed, epoch)`` (the trainer calls :meth:`set_epoch` through
    Accelerate), so a resumed run sees the same batches. ``batch_size`` is the global batch
    (per-process batch x processes): Accelerate hands each process consecutive slices.
    """

    def __init__(self, clips: AudioClips, batch_size: int, max_samples: int, seed: int = 0, window: int = 20) -> None:
        self.clips = clips
        self.batch_size = batch_size
        self.max_samples = max_samples
        self.seed = seed
        self.window = window
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.clips)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        lengths = [min(len(w), self.max_samples) for w in self.clips.waves]
        for i in bucket_order(lengths, self.batch_size, self.window, rng):
            yield crop_row(self.clips, i, self.max_samples, rng)


def crop_row(clips: AudioClips, i: int, max_samples: int, rng: np.random.Generator | None) -> dict[str, Any]:
    """Row ``i`` as ``{"wave", "label", "index"}``, cropped to ``max_samples`` (random offset, or the start)."""
    wave = clips.waves[i]
    if len(wave) > max_samples:
        start = int(rng.integers(0, len(wave) - max_samples + 1)) if rng is not None else 0
        wave = wave[start : start + max_samples]
    return {"wave": wave, "label": -1 if clips.labels is None else clips.labels[i], "index": i}


class ClipRows(torch.utils.data.Dataset):
    """Map-style rows of :class:`AudioClips` (first ``max_samples`` of each), for tasks and probes."""

    def __init__(self, clips: AudioClips, max_samples: int) -> None:
        self.clips = clips
        self.max_samples = max_samples

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return crop_row(self.clips, i, self.max_samples, None)


def _pad(seqs: list[Tensor]) -> tuple[Tensor, Tensor]:
    """Right-pad ``[L_i, ...]`` tensors to ``[B, L_max, ...]``; padding mask True at padding."""
    longest = max(len(s) for s in seqs)
    out = seqs[0].new_zeros((len(seqs), longest, *seqs[0].shape[1:]))
    pad = torch.ones(len(seqs), longest, dtype=torch.bool)
    for b, s in enumerate(seqs):
        out[b, : len(s)] = s
        pad[b, : len(s)] = False
    return out, pad


class AudioCollator:
    """Rows -> :class:`Batch` of one stream.

    ``waveform``: ``units [B, S]`` normalised samples, ``padding_mask [B, S]``.
    ``fbank``: ``units [B, T, n_mels * stride]``, ``padding_mask [B, T]``; with a k-means
    model, ``extras[Extra.TARGETS]`` ``[B, T]`` int64 cluster ids (-100 at padding).
    ``extras[Extra.LABELS]`` holds the rows' labels when ``with_labels``.
    """

    def __init__(
        self,
        stream: str,
        sampling_rate: int,
        num_mel_bins: int = 80,
        frame_stride: int = 2,
        with_labels: bool = False,
        kmeans: MFCCKMeans | None = None,
        keep_waves: bool = False,
    ) -> None:
        if stream not in STREAMS:
            raise ValueError(f"data.stream must be one of {STREAMS}, got {stream!r}")
        self.stream = stream
        self.sampling_rate = sampling_rate
        self.num_mel_bins = num_mel_bins
        self.frame_stride = frame_stride
        self.with_labels = with_labels
        self.kmeans = kmeans
        self.keep_waves = keep_waves  # the raw clips, for the per-step views (extras WAVES, WAVE_LENGTHS)

    def __call__(self, rows: list[dict[str, Any]]) -> Batch:
        extras: dict[str, Tensor] = {}
        if self.stream == "waveform":
            units, pad = _pad([normalise_waveform(r["wave"]) for r in rows])
        else:
            frames = [fbank_units(r["wave"], self.sampling_rate, self.num_mel_bins, self.frame_stride) for r in rows]
            units, pad = _pad(frames)
            if self.kmeans is not None:
                ids = [self.kmeans.unit_targets(r["wave"], len(f), self.frame_stride) for r, f in zip(rows, frames)]
                targets, _ = _pad(ids)
                extras[Extra.TARGETS] = targets.masked_fill(pad, -100)
        if self.keep_waves:
            extras[Extra.WAVES], _ = _pad([r["wave"].float() for r in rows])
            extras[Extra.WAVE_LENGTHS] = torch.tensor([len(r["wave"]) for r in rows], dtype=torch.long)
        if self.with_labels:
            extras[Extra.LABELS] = torch.tensor([r["label"] for r in rows], dtype=torch.long)
        return Batch(units=units, padding_mask=pad, extras=extras)


class MFCCKMeans:
    """HuBERT's first-iteration targets: k-means cluster ids of 39-dim MFCC frames (Hsu et al. 2021).

    Fitted once on the frames of a sample of clips (``MiniBatchKMeans``); a fbank unit's
    target is the cluster of the MFCC frame at its first stacked frame (both grids hop 10 ms).
    """

    def __init__(self, centroids: np.ndarray, sampling_rate: int) -> None:
        self.centroids = torch.as_tensor(centroids, dtype=torch.float32)
        self.sampling_rate = sampling_rate

    @classmethod
    def fit(cls, clips: AudioClips, num_clusters: int, max_clips: int, seed: int = 0) -> MFCCKMeans:
        from sklearn.cluster import MiniBatchKMeans

        feats = torch.cat([mfcc_with_deltas(w, clips.sampling_rate) for w in clips.waves[:max_clips]]).numpy()
        if len(feats) < num_clusters:
            raise ValueError(f"data.num_clusters={num_clusters} exceeds the {len(feats)} MFCC frames to cluster")
        km = MiniBatchKMeans(n_clusters=num_clusters, random_state=seed, n_init=3, batch_size=4096).fit(feats)
        return cls(km.cluster_centers_, clips.sampling_rate)

    def unit_targets(self, wave: Tensor, num_units: int, stride: int) -> Tensor:
        mfcc = mfcc_with_deltas(wave, self.sampling_rate)[::stride][:num_units]
        ids = torch.cdist(mfcc, self.centroids).argmin(1)
        if len(ids) < num_units:  # never expected (same windows and hop); keep shapes aligned
            ids = torch.cat([ids, ids[-1:].expand(num_units - len(ids))])
        return ids


class SpecAugmentTransform:
    """Per-step SpecAugment of fbank units (on the training device, torch's global RNG)."""

    def __init__(self, cfg: AudioDataConfig) -> None:
        self.cfg = cfg

    def __call__(self, batch: Batch) -> Batch:
        c = self.cfg
        units = spec_augment(
            batch.units,
            batch.padding_mask,
            time_masks=c.time_masks,
            time_width=c.time_mask_width,
            freq_masks=c.freq_masks,
            freq_width=c.freq_mask_width,
            features_per_frame=c.num_mel_bins,
        )
        return batch.replace(units=units)


def max_samples(cfg: AudioDataConfig) -> int:
    return int(math.floor(cfg.max_seconds * cfg.sampling_rate))
