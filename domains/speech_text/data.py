"""Paired speech and text: the recipe's ``data:`` section, paired rows, the processor and the collator.

Data flow: a prepared split (``mmssl data prepare speech-text``, or a folder in the same format)
-> :class:`SpeechTextPairs` (clips + sentences) -> :class:`PairedStream` (the audio domain's
duration-bucketed :class:`domains.audio.data.BucketedClips`, each row given its sentence) ->
:class:`SpeechTextCollator`: the audio domain's :class:`domains.audio.data.AudioCollator` makes
the main :class:`Batch` of speech units, the tokenizer the text :class:`Batch` in
``Batch.pair``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from torch.utils.data import Dataset, IterableDataset
from transformers import AutoFeatureExtractor, FeatureExtractionMixin, PreTrainedTokenizerBase

from domains.audio.builders import load_split
from domains.audio.data import AudioCollator, AudioDataConfig
from domains.audio.io import AudioClips
from domains.speech_text.builders import PAIRS_FILE
from domains.text.tokenizer import TokenizerConfig, load_tokenizer
from mmssl.types import Batch, Extra

TEXT_DIR = "text"  # the tokenizer (and, in an export, the BertModel)
AUDIO_DIR = "audio"  # the feature extractor (and, in an export, the audio encoder)


@dataclass(frozen=True)
class SpeechTextDataConfig:
    """A recipe's ``data:`` section for paired speech and text.

    ``source``: ``prepared`` (a ``mmssl data prepare`` name) or ``folder`` (``path`` holds
    ``SPLIT/{audio.npy, offsets.npy, meta.json, pairs.jsonl}``, the builder's format). The
    speech stream and its settings are the audio domain's (:class:`AudioDataConfig`).
    """

    source: Literal["prepared", "folder"] = "prepared"
    name: str = "speech-text"
    path: str | None = None
    split: str = "train"
    text_column: str = "text"  # key of each pairs.jsonl object holding the sentence
    sampling_rate: int = 16000
    stream: Literal["fbank", "waveform"] = "fbank"
    num_mel_bins: int = 80
    frame_stride: int = 2
    max_seconds: float = 10.0  # longer pairs are dropped: a crop would cut words the sentence still names
    min_seconds: float = 0.2
    max_pairs: int | None = None  # use only the first N pairs
    max_text_tokens: int = 64
    bucket_batches: int = 20  # batches per duration-sorting window (the audio domain's bucketing)
    spec_augment: bool = False  # fbank stream: SpecAugment with the audio domain's default widths
    tokenizer: TokenizerConfig = field(default_factory=lambda: TokenizerConfig(vocab_size=4096))

    def __post_init__(self) -> None:
        if self.source == "folder" and not self.path:
            raise ValueError("data.path is required when data.source=folder")
        if not 0 < self.min_seconds <= self.max_seconds:
            raise ValueError("data.min_seconds must be > 0 and <= data.max_seconds")
        if self.max_text_tokens < 4 or self.bucket_batches < 1:
            raise ValueError("data.max_text_tokens must be >= 4 and data.bucket_batches >= 1")
        self.audio()  # the audio domain validates the stream settings

    def audio(self) -> AudioDataConfig:
        """The speech stream settings as the audio domain's data config."""
        return AudioDataConfig(
            source="prepared",
            sampling_rate=self.sampling_rate,
            stream=self.stream,
            num_mel_bins=self.num_mel_bins,
            frame_stride=self.frame_stride,
            max_seconds=self.max_seconds,
            min_seconds=self.min_seconds,
            spec_augment=self.spec_augment,
        )


@dataclass
class SpeechTextPairs:
    """Clips and their sentences, aligned by index (``texts[i]`` is what ``clips.waves[i]`` says)."""

    clips: AudioClips
    texts: list[str]
    dropped: int = 0  # pairs outside [min_seconds, max_seconds]

    def __len__(self) -> int:
        return len(self.texts)


def split_dir(cfg: SpeechTextDataConfig, split: str) -> Path:
    """Folder of ``split`` of the configured source (prepared on first use)."""
    if cfg.source == "prepared":
        from mmssl.datasets import prepare

        root = prepare(cfg.name)
    else:
        root = Path(cfg.path)
    path = root / split
    if not (path / PAIRS_FILE).is_file():
        raise FileNotFoundError(
            f"data.split: {cfg.source} dataset {cfg.path or cfg.name!r} has no paired split "
            f"{split!r} ({path / PAIRS_FILE} is missing)"
        )
    return path


def read_texts(path: Path, column: str) -> list[str]:
    """The ``column`` value of every line of a ``pairs.jsonl``.

    Raises:
        KeyError: naming the column and the keys that exist, if a line lacks it.
    """
    texts = []
    with open(path) as f:
        for i, line in enumerate(f):
            row = json.loads(line)
            if column not in row or not isinstance(row[column], str):
                raise KeyError(
                    f"data.text_column: column {column!r} is missing from line {i + 1} of {path}; "
                    f"columns: {', '.join(row)}"
                )
            texts.append(row[column])
    return texts


def load_pairs(cfg: SpeechTextDataConfig, split: str) -> SpeechTextPairs:
    """The split's pairs within ``[min_seconds, max_seconds]``, the first ``max_pairs`` of them."""
    path = split_dir(cfg, split)
    clips = load_split(path, cfg.sampling_rate)
    texts = read_texts(path / PAIRS_FILE, cfg.text_column)
    if len(texts) != len(clips):
        raise ValueError(f"{path}: {len(clips)} clips but {len(texts)} lines in {PAIRS_FILE}")
    lo, hi = cfg.min_seconds * cfg.sampling_rate, cfg.max_seconds * cfg.sampling_rate
    keep = [i for i, w in enumerate(clips.waves) if lo <= len(w) <= hi]
    dropped = len(texts) - len(keep)
    keep = keep[: cfg.max_pairs] if cfg.max_pairs else keep
    if not keep:
        raise ValueError(f"data: no pair of {cfg.min_seconds}-{cfg.max_seconds} s in {path}")
    return SpeechTextPairs(clips.subset(keep), [texts[i] for i in keep], dropped)


class PairedRows(Dataset):
    """Map-style rows ``{"wave", "text", "index", "label"}`` (tasks and retrieval)."""

    def __init__(self, pairs: SpeechTextPairs) -> None:
        self.pairs = pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"wave": self.pairs.clips.waves[i], "text": self.pairs.texts[i], "index": i, "label": -1}


class PairedStream(IterableDataset):
    """Rows of an audio-domain stream (e.g. ``BucketedClips``), each given its sentence by ``row["index"]``."""

    def __init__(self, clips: Any, texts: list[str]) -> None:
        self.clips = clips
        self.texts = texts

    def set_epoch(self, epoch: int) -> None:
        self.clips.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.clips)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for row in self.clips:
            yield {**row, "text": self.texts[row["index"]]}


@dataclass
class SpeechTextProcessor:
    """The tokenizer and the feature extractor, saved as ``text/`` and ``audio/`` of a folder."""

    tokenizer: PreTrainedTokenizerBase
    feature_extractor: FeatureExtractionMixin

    def save_pretrained(self, path: str | Path) -> None:
        self.tokenizer.save_pretrained(str(Path(path) / TEXT_DIR))
        self.feature_extractor.save_pretrained(str(Path(path) / AUDIO_DIR))

    @classmethod
    def from_pretrained(cls, path: str | Path) -> SpeechTextProcessor:
        path = Path(path)
        return cls(load_tokenizer(path / TEXT_DIR), AutoFeatureExtractor.from_pretrained(str(path / AUDIO_DIR)))


class SpeechTextCollator:
    """Rows -> the speech :class:`Batch` (the audio domain's units) with the text :class:`Batch` in ``Batch.pair``.

    The text batch holds ``[B, L]`` token ids (``[CLS] ... [SEP]``, right-padded, truncated to
    ``max_tokens``), its ``padding_mask`` and ``token_type_ids``. Deterministic.
    """

    def __init__(self, audio: AudioCollator, tokenizer: PreTrainedTokenizerBase, max_tokens: int) -> None:
        self.audio = audio
        self.tokenizer = tokenizer
        self.max_tokens = min(max_tokens, tokenizer.model_max_length)

    def text_batch(self, texts: list[str]) -> Batch:
        enc = self.tokenizer(
            texts,
            padding=True,
            truncation=True,
            max_length=self.max_tokens,
            return_tensors="pt",
            return_special_tokens_mask=True,
        )
        extras = {Extra.TOKEN_TYPE_IDS: enc["token_type_ids"]} if "token_type_ids" in enc else {}
        return Batch(
            units=enc["input_ids"],
            padding_mask=enc["attention_mask"] == 0,
            special_mask=enc["special_tokens_mask"].bool(),
            extras=extras,
        )

    def __call__(self, rows: list[dict[str, Any]]) -> Batch:
        speech = self.audio(rows)
        return speech.replace(pair=self.text_batch([r["text"] for r in rows]))
