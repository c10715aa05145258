"""A tiny paired speech-text folder (synthetic tones, no espeak-ng) and tiny two-tower overrides."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from domains.audio.builders import save_split
from domains.speech_text.builders import PAIRS_FILE

RATE = 16000
SENTENCES = [
    "The weather was fine.",
    "She walked to the village.",
    "He said nothing at all.",
    "They dined at six.",
    "A letter came this morning.",
    "The party was very large.",
    "Her sister was not well.",
    "It rained all day.",
    "The carriage was ready.",
    "We shall see him tomorrow.",
    "His manners were pleasing.",
    "The house was quiet.",
    "Nobody could be more kind.",
    "She read the note twice.",
    "The ball was a success.",
    "He rode into town.",
    "Emma smiled at her friend.",
    "The garden looked lovely.",
    "Anne said very little.",
    "The dinner was late.",
    "Mr Darcy bowed slightly.",
    "They talked of books.",
    "The road was muddy.",
    "Her answer was short.",
]

# A conformer and a BERT of a few thousand parameters: seconds per run (data.path is added by the test).
TINY_SPEECH_TEXT = [
    "data.source=folder",
    "data.max_seconds=2.0",
    "data.bucket_batches=1",
    "data.spec_augment=false",
    "data.tokenizer.vocab_size=100",
    "data.max_text_tokens=16",
    "encoder.audio.hidden_size=32",
    "encoder.audio.num_layers=2",
    "encoder.audio.num_heads=2",
    "encoder.audio.intermediate_size=64",
    "encoder.audio.conv_depthwise_kernel_size=3",
    "encoder.text.hidden_size=32",
    "encoder.text.num_layers=2",
    "encoder.text.num_heads=2",
    "encoder.text.intermediate_size=64",
    "objective.projection_dim=16",
    "train.batch_size=4",
    "train.warmup_steps=2",
    "train.log_every=1",
    "train.max_minutes=null",
]


def tone(seed: int) -> np.ndarray:
    """0.5-1.5 s of a harmonic tone whose pitch and length depend on ``seed``."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(rng.uniform(0.5, 1.5) * RATE)) / RATE
    f = 150 + 40 * (seed % 24)
    return (
        0.4 * np.sin(2 * np.pi * f * t) + 0.1 * np.sin(4 * np.pi * f * t) + 0.02 * rng.standard_normal(len(t))
    ).astype(np.float32)


def write_pairs(root: Path, split: str, sentences: list[str], voice: str, offset: int = 0) -> None:
    """One split in the builder's format: tones for audio, ``pairs.jsonl`` with text and voice."""
    waves = [tone(offset + i) for i in range(len(sentences))]
    save_split(root / split, waves, {"groups": [voice] * len(sentences)})
    with open(root / split / PAIRS_FILE, "w") as f:
        f.writelines(json.dumps({"text": s, "voice": voice}) + "\n" for s in sentences)


@pytest.fixture(scope="session")
def pairs_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """16 training and 8 held-out pairs (disjoint sentences, disjoint 'voices')."""
    root = tmp_path_factory.mktemp("speech-text")
    write_pairs(root, "train", SENTENCES[:16], "synthetic:a")
    write_pairs(root, "test", SENTENCES[16:], "synthetic:b", offset=16)
    return root
