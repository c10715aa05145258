"""Offline audio datasets for ``mmssl data prepare NAME``.

* ``kws`` -- keyword spotting: the ten Speech Commands words (Warden 2018: yes no up down
  left right on off stop go) rendered by espeak-ng (8 English accents x 11 voice variants,
  speed 120-220 wpm, pitch 20-80) and flite (kal, kal16, awb, rms, slt), varied with sox
  (tempo 0.85-1.15, pitch +-300 cents, 16 kHz mono), placed at a random offset in a 1 s
  window, with a random gain and white noise at 5-30 dB SNR. Train and test are split **by
  voice** (voice variants f4 and m7 of every accent and the flite voice awb are test only),
  so the test accuracy measures generalisation to unseen speakers.
* ``speech`` -- unlabelled speech: Asterisk's English studio prompts (Debian
  ``asterisk-core-sounds-en-wav``, CC-BY-SA-3.0, 8 kHz), KLettres' letter and syllable
  recordings (Debian ``klettres-data``, GPL, 26 languages, 44.1 kHz Ogg) and espeak-ng reading
  sentences of the embedded Austen corpus with random voices.

Each split is stored as ``SPLIT/audio.npy`` (int16 samples of all clips, concatenated),
``SPLIT/offsets.npy`` (``[N + 1]`` clip boundaries), ``SPLIT/labels.npy`` (``kws``) and
``SPLIT/meta.json`` (sampling rate, label names, each clip's voice or source). Rendering runs
in ``MMSSL_AUDIO_WORKERS`` processes (default 2) with a progress bar.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
import tempfile
from multiprocessing import Pool
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from domains.audio.io import AudioClips, decode_file
from domains.packages import extracted_debs
from domains.text.builders import embedded_corpus_text

SAMPLING_RATE = 16000
KWS_WORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
ESPEAK_ACCENTS = (
    "en-us",
    "en-gb",
    "en-gb-scotland",
    "en-gb-x-rp",
    "en-gb-x-gbclan",
    "en-gb-x-gbcwmd",
    "en-029",
    "en-us-nyc",
)
ESPEAK_VARIANTS = ("f1", "f2", "f3", "f4", "m1", "m2", "m3", "m4", "m5", "m6", "m7")
FLITE_VOICES = ("kal", "kal16", "awb", "rms", "slt")
TEST_VARIANTS = ("f4", "m7")  # held-out espeak variants (every accent)
TEST_FLITE = ("awb",)
KWS_REPEATS = 4  # renderings per (voice, word)
SPEECH_SENTENCES = 3000  # espeak-ng-read sentences in `speech`


def kws_voices() -> list[str]:
    """Every voice: ``espeak:ACCENT+VARIANT`` and ``flite:NAME``."""
    return [f"espeak:{a}+{v}" for a in ESPEAK_ACCENTS for v in ESPEAK_VARIANTS] + [f"flite:{v}" for v in FLITE_VOICES]


def is_test_voice(voice: str) -> bool:
    engine, name = voice.split(":", 1)
    return name.split("+")[-1] in TEST_VARIANTS if engine == "espeak" else name in TEST_FLITE


RENDER_TOOLS = ("espeak-ng", "flite", "sox")  # Debian packages of the same names


def _require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise RuntimeError(f"`{tool}` is needed to render audio: apt-get install -y {' '.join(RENDER_TOOLS)}")
    return path


def require_render_tools() -> None:
    """Fail at once, before any decoding or rendering, when a speech synthesis tool is missing."""
    missing = [tool for tool in RENDER_TOOLS if shutil.which(tool) is None]
    if missing:
        raise RuntimeError(
            f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not installed; the audio "
            f"datasets are rendered with them: apt-get install -y {' '.join(RENDER_TOOLS)}"
        )


def _run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"`{' '.join(cmd)}` failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")


def synthesize(
    voice: str, text: str, out: Path, rng: random.Random, tempo: float = 1.0, cents: float = 0.0
) -> np.ndarray:
    """Render ``text`` with one voice, then sox tempo/pitch to 16 kHz mono; returns float32 samples."""
    engine, name = voice.split(":", 1)
    raw = out.with_suffix(".raw.wav")
    if engine == "espeak":
        _run(
            [
                _require("espeak-ng"),
                "-v",
                name,
                "-s",
                str(rng.randint(120, 220)),
                "-p",
                str(rng.randint(20, 80)),
                "-w",
                str(raw),
                text,
            ]
        )
    else:
        _run([_require("flite"), "-voice", name, "-t", text, "-o", str(raw)])
    effects = (["tempo", f"{tempo:.3f}"] if abs(tempo - 1) > 1e-3 else []) + (
        ["pitch", f"{cents:.0f}"] if cents else []
    )
    _run([_require("sox"), str(raw), "-r", str(SAMPLING_RATE), "-c", "1", "-b", "16", str(out), *effects])
    wave = decode_file(out, SAMPLING_RATE).numpy()
    raw.unlink(missing_ok=True)
    out.unlink(missing_ok=True)
    return wave


def place_in_window(word: np.ndarray, rng: random.Random, seconds: float = 1.0) -> np.ndarray:
    """Trim silence, put the word at a random offset of a ``seconds`` window, random gain, white noise at 5-30 dB SNR."""
    loud = np.flatnonzero(np.abs(word) > 0.02 * (np.abs(word).max() + 1e-9))
    word = word[loud[0] : loud[-1] + 1] if len(loud) else word
    n = int(seconds * SAMPLING_RATE)
    word = word[:n]
    clip = np.zeros(n, dtype=np.float32)
    start = rng.randint(0, n - len(word))
    clip[start : start + len(word)] = word / (np.abs(word).max() + 1e-9) * 10 ** (rng.uniform(-12, -1) / 20)
    power = float(np.mean(word_part**2)) if (word_part := clip[start : start + len(word)]).size else 1e-6
    noise_power = power / 10 ** (rng.uniform(5, 30) / 10)
    noise = np.random.default_rng(rng.getrandbits(32)).normal(0, np.sqrt(noise_power), n)
    return np.clip(clip + noise, -1, 1).astype(np.float32)


def _render_kws(job: tuple[str, str, int, int]) -> tuple[str, str, np.ndarray]:
    voice, word, rep, seed = job
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory(prefix="mmssl-kws-") as tmp:
        wave = synthesize(
            voice, word, Path(tmp) / "w.wav", rng, tempo=rng.uniform(0.85, 1.15), cents=rng.uniform(-300, 300)
        )
    return voice, word, place_in_window(wave, rng)


def _workers() -> int:
    return max(1, int(os.environ.get("MMSSL_AUDIO_WORKERS", "2")))


def _parallel(fn, jobs: list, desc: str) -> list:
    if _workers() == 1:
        return [fn(j) for j in tqdm(jobs, desc=desc, unit="clip")]
    with Pool(_workers()) as pool:
        return list(tqdm(pool.imap(fn, jobs, chunksize=8), total=len(jobs), desc=desc, unit="clip"))


def save_split(out: Path, waves: list[np.ndarray], meta: dict[str, Any], labels: list[int] | None = None) -> None:
    """Write one split in the format :func:`load_split` reads."""
    out.mkdir(parents=True, exist_ok=True)
    offsets = np.concatenate([[0], np.cumsum([len(w) for w in waves])]).astype(np.int64)
    audio = np.concatenate(waves) if waves else np.zeros(0, np.float32)
    np.save(out / "audio.npy", np.round(np.clip(audio, -1, 1) * 32767).astype(np.int16))
    np.save(out / "offsets.npy", offsets)
    if labels is not None:
        np.save(out / "labels.npy", np.asarray(labels, dtype=np.int64))
    (out / "meta.json").write_text(json.dumps({"sampling_rate": SAMPLING_RATE, **meta}) + "\n")


def load_split(split_dir: Path, sampling_rate: int = SAMPLING_RATE) -> AudioClips:
    """A split written by :func:`save_split`, resampled to ``sampling_rate`` if it differs."""
    import torch

    from domains.audio.io import to_mono_float

    meta = json.loads((split_dir / "meta.json").read_text())
    audio = np.load(split_dir / "audio.npy", mmap_mode="r")
    offsets = np.load(split_dir / "offsets.npy")
    rate = int(meta["sampling_rate"])
    waves = []
    for a, b in zip(offsets[:-1], offsets[1:]):
        w = torch.from_numpy(np.asarray(audio[a:b], dtype=np.float32) / 32768.0)
        waves.append(w if rate == sampling_rate else to_mono_float(w, rate, sampling_rate))
    labels = np.load(split_dir / "labels.npy").tolist() if (split_dir / "labels.npy").exists() else None
    sources = meta.get("groups")
    names = [f"{split_dir}[{i}]" + (f" ({sources[i]})" if sources else "") for i in range(len(waves))]
    return AudioClips(waves, sampling_rate, labels, names, list(meta.get("label_names", [])), [], sources)


def build_kws(out: Path) -> None:
    """Render the keyword-spotting set (see the module docstring)."""
    require_render_tools()
    jobs = [
        (v, w, r, random.Random(f"{v}|{w}|{r}").getrandbits(32))  # a stable seed per clip
        for v in kws_voices()
        for w in KWS_WORDS
        for r in range(KWS_REPEATS)
    ]
    results = _parallel(_render_kws, jobs, "rendering keywords")
    for split, test in (("train", False), ("test", True)):
        rows = [(v, w, x) for v, w, x in results if is_test_voice(v) == test]
        save_split(
            out / split,
            [x for _, _, x in rows],
            {"label_names": list(KWS_WORDS), "groups": [v for v, _, _ in rows]},
            [KWS_WORDS.index(w) for _, w, _ in rows],
        )


def _render_sentence(job: tuple[str, str, int]) -> np.ndarray:
    voice, text, seed = job
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory(prefix="mmssl-speech-") as tmp:
        return synthesize(voice, text, Path(tmp) / "s.wav", rng)


def austen_sentences(count: int, seed: int = 0) -> list[str]:
    """``count`` sentences of 4-30 words from the text domain's embedded Austen corpus."""
    text = re.sub(r"\s+", " ", embedded_corpus_text("austen"))
    sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+", text) if 4 <= len(s.split()) <= 30]
    return random.Random(seed).sample(sentences, min(count, len(sentences)))


def _debian_clips(package: str, pattern: str) -> list[tuple[str, np.ndarray]]:
    clips = []
    with extracted_debs([package]) as root:
        files = sorted(root.rglob(pattern))
        if not files:
            raise RuntimeError(f"Debian package {package!r} has no {pattern} files; its layout changed")
        for path in tqdm(files, desc=f"decoding {package}", unit="file"):
            try:
                clips.append((f"{package}:{path.name}", decode_file(path, SAMPLING_RATE).numpy()))
            except ValueError as e:
                tqdm.write(f"skipped {path.name}: {e}")
    return clips


def build_speech(out: Path) -> None:
    """Unlabelled speech: Asterisk prompts, KLettres recordings and espeak-ng-read Austen sentences.

    Decoding and rendering keep every clip in memory before the split is written: about 5.6 GB at peak.
    """
    require_render_tools()
    clips = _debian_clips("asterisk-core-sounds-en-wav", "*.wav") + _debian_clips("klettres-data", "*.ogg")
    voices = [v for v in kws_voices() if v.startswith("espeak:")]
    rng = random.Random(0)
    jobs = [(rng.choice(voices), s, rng.getrandbits(32)) for s in austen_sentences(SPEECH_SENTENCES)]
    clips += [
        (f"espeak-austen:{v}", w) for (v, _, _), w in zip(jobs, _parallel(_render_sentence, jobs, "reading sentences"))
    ]
    clips = [(name, w) for name, w in clips if len(w) >= SAMPLING_RATE // 5]
    save_split(out / "train", [w for _, w in clips], {"groups": [name for name, _ in clips]})
