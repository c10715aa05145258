"""Audio decoding and sources: ``soundfile`` decoding, torchaudio resampling, folders and Hub datasets.

torchaudio 2.9+ has no I/O, so files are decoded with ``soundfile`` (WAV, FLAC, OGG/Vorbis,
...) and resampled with :func:`torchaudio.functional.resample`. Every clip becomes a mono
``float32`` waveform in ``[-1, 1]`` at the recipe's sampling rate.

A file that cannot be decoded is reported (logged with its path and the decoder's message),
skipped and counted in :attr:`AudioClips.skipped`, so one corrupt file never stops a run.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

log = logging.getLogger(__name__)

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".mp3", ".aiff", ".aif", ".au")


@dataclass
class AudioClips:
    """Decoded clips of one split.

    Attributes:
        waves: mono ``float32`` waveforms (1-D tensors) at :attr:`sampling_rate`.
        labels: ``[N]`` int labels, or None for unlabelled audio.
        names: where each clip came from (file path, or ``column[index]`` of a dataset).
        label_names: class names for ``labels``.
        skipped: ``(name, reason)`` of every clip that could not be decoded or was too short.
        groups: optional per-clip group (e.g. the speaker / voice), for splits by group.
    """

    waves: list[Tensor]
    sampling_rate: int
    labels: list[int] | None = None
    names: list[str] = field(default_factory=list)
    label_names: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    groups: list[str] | None = None

    def __len__(self) -> int:
        return len(self.waves)

    @property
    def seconds(self) -> float:
        return sum(len(w) for w in self.waves) / self.sampling_rate

    def subset(self, index: Iterable[int]) -> AudioClips:
        index = list(index)
        pick = lambda xs: None if xs is None else [xs[i] for i in index]  # noqa: E731
        return AudioClips(
            [self.waves[i] for i in index],
            self.sampling_rate,
            pick(self.labels),
            pick(self.names) or [],
            list(self.label_names),
            list(self.skipped),
            pick(self.groups),
        )


def to_mono_float(samples: np.ndarray | Tensor, source_rate: int, target_rate: int) -> Tensor:
    """``[S]`` or ``[S, channels]`` samples -> mono ``float32`` ``[S']`` at ``target_rate``."""
    wave = torch.as_tensor(np.asarray(samples), dtype=torch.float32)
    if wave.ndim == 2:
        wave = wave.mean(1)
    if wave.ndim != 1:
        raise ValueError(f"expected mono or [samples, channels] audio, got shape {tuple(wave.shape)}")
    if source_rate != target_rate:
        import torchaudio.functional as AF

        wave = AF.resample(wave, source_rate, target_rate)
    return wave.contiguous()


def decode_file(path: str | Path, sampling_rate: int) -> Tensor:
    """Decode one file with ``soundfile`` and resample it.

    Raises:
        ValueError: naming the file, when it cannot be decoded or holds no samples.
    """
    import soundfile as sf

    try:
        samples, rate = sf.read(str(path), dtype="float32", always_2d=False)
    except Exception as e:  # soundfile raises LibsndfileError, RuntimeError or TypeError by format
        raise ValueError(f"cannot decode audio file {path}: {e}") from None
    if np.size(samples) == 0:
        raise ValueError(f"audio file {path} holds no samples")
    return to_mono_float(samples, rate, sampling_rate)


def _keep(wave: Tensor, name: str, min_samples: int, skipped: list[tuple[str, str]]) -> bool:
    if len(wave) < min_samples:
        skipped.append((name, f"shorter than {min_samples} samples ({len(wave)})"))
        return False
    if not torch.isfinite(wave).all():
        skipped.append((name, "non-finite samples"))
        return False
    return True


def _report(skipped: list[tuple[str, str]], where: str) -> None:
    for name, reason in skipped[:20]:
        log.warning("skipped %s: %s", name, reason)
    if skipped:
        log.warning("%s: skipped %d clip(s) that could not be used (first shown above)", where, len(skipped))


def load_folder(
    root: str | Path,
    sampling_rate: int,
    min_samples: int = 1,
    labelled: bool = False,
    limit: int | None = None,
    key: str = "data.path",
) -> AudioClips:
    """Every audio file under ``root`` (recursively, sorted). With ``labelled``, the first folder
    level names the class (``root/yes/a.wav``), as ``datasets``' ``audiofolder`` does. ``key`` is
    the setting that named the folder (``data.path``, or ``task.path`` for a task's split folders),
    for the error messages.

    Raises:
        FileNotFoundError: ``root`` does not exist or holds no audio file.
        ValueError: none of its files could be used.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{key}: audio folder {root} does not exist")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file())
    if not files:
        raise FileNotFoundError(f"{key}: no audio files ({', '.join(AUDIO_EXTENSIONS)}) under {root}")
    if labelled:
        classes = sorted({p.relative_to(root).parts[0] for p in files if len(p.relative_to(root).parts) > 1})
        files = [p for p in files if len(p.relative_to(root).parts) > 1]
    waves, names, labels, skipped = [], [], [], []
    for path in files:
        if limit is not None and len(waves) >= limit:
            break
        try:
            wave = decode_file(path, sampling_rate)
        except ValueError as e:
            skipped.append((str(path), str(e)))
            continue
        if _keep(wave, str(path), min_samples, skipped):
            waves.append(wave)
            names.append(str(path))
            if labelled:
                labels.append(classes.index(path.relative_to(root).parts[0]))
    _report(skipped, str(root))
    if not waves:
        raise ValueError(f"{key}: none of the {len(files)} audio files under {root} could be used")
    return AudioClips(waves, sampling_rate, labels if labelled else None, names, classes if labelled else [], skipped)


def _row_audio(value: Any, name: str, sampling_rate: int) -> Tensor:
    """One value of a ``datasets`` audio column: a decoded dict / decoder object, raw bytes or a path."""
    if isinstance(value, (str, Path)):
        return decode_file(value, sampling_rate)
    if isinstance(value, dict) and value.get("array") is not None:
        return to_mono_float(value["array"], int(value["sampling_rate"]), sampling_rate)
    if isinstance(value, dict) and (value.get("bytes") or value.get("path")):
        if value.get("bytes"):
            import io

            import soundfile as sf

            try:
                samples, rate = sf.read(io.BytesIO(value["bytes"]), dtype="float32")
            except Exception as e:
                raise ValueError(f"cannot decode {name}: {e}") from None
            return to_mono_float(samples, rate, sampling_rate)
        return decode_file(value["path"], sampling_rate)
    if hasattr(value, "get_all_samples"):  # datasets 4+/5 AudioDecoder (torchcodec)
        samples = value.get_all_samples()
        return to_mono_float(samples.data.mean(0), int(samples.sample_rate), sampling_rate)
    raise ValueError(f"{name}: cannot read audio from a {type(value).__name__}")


def load_hf_audio(
    name_or_path: str,
    split: str,
    sampling_rate: int,
    audio_column: str = "audio",
    label_column: str | None = None,
    min_samples: int = 1,
    limit: int | None = None,
) -> AudioClips:
    """An audio split of a Hub dataset name or a ``save_to_disk`` folder.

    The audio column is read without ``datasets``' decoding (``decode=False``) and decoded
    with ``soundfile`` here, so no FFmpeg/torchcodec is needed for WAV/FLAC/OGG.

    Raises:
        KeyError: naming the missing column or split.
    """
    import datasets

    path = Path(name_or_path)
    if path.is_dir() and ((path / "dataset_dict.json").exists() or (path / "dataset_info.json").exists()):
        ds = datasets.load_from_disk(str(path))
    else:
        ds = datasets.load_dataset(name_or_path)
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise KeyError(f"dataset {name_or_path} has no split {split!r}; splits: {', '.join(ds)}")
        ds = ds[split]
    for column in (audio_column, label_column):
        if column is not None and column not in ds.column_names:
            raise KeyError(f"dataset {name_or_path} has no column {column!r}; columns: {', '.join(ds.column_names)}")
    if isinstance(ds.features[audio_column], datasets.Audio):
        ds = ds.cast_column(audio_column, datasets.Audio(decode=False))
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    waves, names, labels, skipped = [], [], [], []
    for i, row in enumerate(ds):
        name = f"{name_or_path}[{split}][{i}].{audio_column}"
        try:
            wave = _row_audio(row[audio_column], name, sampling_rate)
        except ValueError as e:
            skipped.append((name, str(e)))
            continue
        if _keep(wave, name, min_samples, skipped):
            waves.append(wave)
            names.append(name)
            if label_column is not None:
                labels.append(int(row[label_column]))
    _report(skipped, f"{name_or_path}[{split}]")
    label_names: list[str] = []
    if label_column is not None:
        feature = ds.features[label_column]
        label_names = list(getattr(feature, "names", None) or [str(i) for i in range(max(labels, default=-1) + 1)])
    return AudioClips(waves, sampling_rate, labels if label_column else None, names, label_names, skipped)
