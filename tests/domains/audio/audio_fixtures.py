"""Synthetic audio for the audio tests: tone sweeps written as WAV/FLAC files, tiny model overrides."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

RATE = 16000

# A wav2vec 2.0 / conformer of a few thousand parameters on 1 s crops: seconds per run.
TINY_AUDIO = [
    "data.source=folder",
    "data.max_seconds=1.0",
    "data.bucket_batches=2",
    "encoder.hidden_size=32",
    "encoder.num_layers=2",
    "encoder.num_heads=2",
    "encoder.intermediate_size=64",
    "train.batch_size=4",
    "train.warmup_steps=2",
    "train.log_every=1",
    "train.max_minutes=null",
]
TINY_WAV2VEC2 = [
    "encoder.conv_dim=[16,16,16,16,16,16,16]",
    "encoder.num_conv_pos_embeddings=16",
    "encoder.num_conv_pos_embedding_groups=2",
    "encoder.num_codevectors_per_group=8",
    "encoder.codevector_dim=16",
    "encoder.proj_codevector_dim=16",
    "objective.num_negatives=5",
]
TINY_CONFORMER = ["encoder.conv_depthwise_kernel_size=3"]
TINY_DATA2VEC_AUDIO = [
    "encoder.conv_dim=[16,16,16,16,16,16,16]",
    "encoder.num_conv_pos_layers=2",
    "encoder.conv_pos_kernel_size=5",
    "encoder.num_conv_pos_embedding_groups=2",
    "objective.top_k_layers=2",
]
TINY_BY_RECIPE = {
    "wav2vec2": TINY_WAV2VEC2,
    "data2vec_audio": TINY_DATA2VEC_AUDIO,
    "hubert": [
        *TINY_CONFORMER,
        "data.num_clusters=8",
        "data.kmeans_clips=20",
        "objective.num_classes=8",
        "objective.embed_dim=16",
    ],
    "apc": TINY_CONFORMER,
    "tera": TINY_CONFORMER,
}


def tone(freq: float, seconds: float, rng: np.random.Generator, sweep: float = 0.0) -> np.ndarray:
    """A (swept) sine tone with harmonics and noise, float32 in [-1, 1]."""
    t = np.arange(int(seconds * RATE)) / RATE
    f = freq + sweep * t
    phase = 2 * np.pi * np.cumsum(f) / RATE
    x = 0.5 * np.sin(phase) + 0.2 * np.sin(2 * phase) + 0.05 * rng.standard_normal(len(t))
    return (x * np.hanning(len(t)) ** 0.2).astype(np.float32)


def write_clips(root: Path, count: int, seed: int = 0, labelled: bool = False) -> Path:
    """``count`` clips of 0.5-1.5 s (WAV and FLAC); labelled: ``root/low/*`` rising tones, ``root/high/*`` falling."""
    import soundfile as sf

    rng = np.random.default_rng(seed)
    for i in range(count):
        label = ("low", "high")[i % 2]
        folder = root / label if labelled else root / f"speaker{i % 3}"
        folder.mkdir(parents=True, exist_ok=True)
        if labelled:
            base = rng.uniform(200, 400) if label == "low" else rng.uniform(900, 1200)
            wave = tone(base, rng.uniform(0.5, 1.0), rng, sweep=300 if label == "low" else -300)
        else:
            wave = tone(rng.uniform(100, 2000), rng.uniform(0.5, 1.5), rng, sweep=rng.uniform(-500, 500))
        ext, rate = (".flac", RATE) if i % 4 == 3 else (".wav", 22050 if i % 5 == 0 else RATE)
        if rate != RATE:
            import torch
            import torchaudio.functional as AF

            wave = AF.resample(torch.from_numpy(wave), RATE, rate).numpy()
        sf.write(folder / f"clip{i:03d}{ext}", wave, rate)
    return root


@pytest.fixture(scope="session")
def audio_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 unlabelled clips (mixed WAV/FLAC, 16 and 22.05 kHz) and one corrupt file."""
    root = write_clips(tmp_path_factory.mktemp("audio") / "clips", 24)
    (root / "speaker0" / "broken.wav").write_bytes(b"RIFF\x00\x00not really a wav file")
    return root


@pytest.fixture(scope="session")
def tone_task(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A two-class folder task: ``train/{low,high}/*`` (48 clips) and ``test/{low,high}/*`` (24 clips)."""
    root = tmp_path_factory.mktemp("tones")
    write_clips(root / "train", 48, seed=1, labelled=True)
    write_clips(root / "test", 24, seed=2, labelled=True)
    return root
