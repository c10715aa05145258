"""``mmssl data prepare speech-text``: sentences of the embedded Austen corpus read by espeak-ng voices.

Paired speech and text for cross-modal (CLIP-style) pretraining. Sentences of 5-20 words are
cut from the text domain's embedded corpus (:func:`domains.text.builders.load_embedded_corpus`),
each read once by an espeak-ng voice (6 English accents x 11 variants, speed 120-220 wpm, pitch
20-80, 16 kHz mono) with the audio domain's renderer (:func:`domains.audio.builders.synthesize`),
in ``MMSSL_AUDIO_WORKERS`` processes with a progress bar.

The held-out ``test`` split has sentences **and** voices never seen in ``train``: its
sentences are disjoint from the training ones, and it is read only by the variants ``f4`` and
``m7`` of every accent (as in the ``kws`` set), which never read a training sentence.

Each split is written in the audio domain's format (:func:`domains.audio.builders.save_split`:
``audio.npy``, ``offsets.npy``, ``meta.json``) plus ``pairs.jsonl``: one JSON object per clip,
in clip order, with ``text`` (the sentence) and ``voice``.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from domains.audio.builders import _parallel, _render_sentence, save_split

ACCENTS = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-us-nyc")
VARIANTS = ("f1", "f2", "f3", "f4", "m1", "m2", "m3", "m4", "m5", "m6", "m7")
TEST_VARIANTS = ("f4", "m7")  # held-out voices (every accent), as in the kws set
TRAIN_SENTENCES = 3000
TEST_SENTENCES = 500
MIN_WORDS, MAX_WORDS = 5, 20
PAIRS_FILE = "pairs.jsonl"
# abbreviations after which a full stop does not end an Austen sentence ("Mr. Knightley")
_ABBREVIATIONS = re.compile(r"\b(Mr|Mrs|Ms|Dr|St|Col|Capt|Gen|Sir|Rev)\.$")


def voices() -> tuple[list[str], list[str]]:
    """``(train, test)`` espeak-ng voices (``espeak:ACCENT+VARIANT``); no voice is in both."""
    every = [f"espeak:{a}+{v}" for a in ACCENTS for v in VARIANTS]
    test = [v for v in every if v.rsplit("+", 1)[1] in TEST_VARIANTS]
    return [v for v in every if v not in test], test


def split_sentences(paragraph: str) -> list[str]:
    """Sentences of one paragraph, quotes and ``_emphasis_`` marks removed, honorifics kept whole."""
    text = re.sub(r"[\"_]", "", re.sub(r"\s+", " ", paragraph)).strip()
    pieces, current = [], ""
    for piece in re.split(r"(?<=[.!?])\s+", text):
        current = f"{current} {piece}".strip()
        if not _ABBREVIATIONS.search(current):
            pieces.append(current)
            current = ""
    return pieces + ([current] if current else [])


def corpus_sentences(min_words: int = MIN_WORDS, max_words: int = MAX_WORDS) -> list[str]:
    """Distinct sentences of ``min_words``-``max_words`` words from the embedded Austen corpus, in corpus order."""
    from domains.text.builders import load_embedded_corpus

    seen: set[str] = set()
    out = []
    for paragraph in load_embedded_corpus("austen")["text"]:
        for s in split_sentences(paragraph):
            key = s.lower()
            if min_words <= len(s.split()) <= max_words and s[:1].isupper() and s[-1] in ".!?" and key not in seen:
                seen.add(key)
                out.append(s)
    return out


def build_pairs(
    out: Path,
    train_sentences: Sequence[str],
    test_sentences: Sequence[str],
    train_voices: Sequence[str],
    test_voices: Sequence[str],
    seed: int = 0,
) -> None:
    """Render and write the two splits; each sentence is read once, by a voice of its split.

    Raises:
        ValueError: If a sentence or a voice is in both splits, or a split has no voice.
    """
    if set(train_sentences) & set(test_sentences) or set(train_voices) & set(test_voices):
        raise ValueError("train and test must share no sentence and no voice")
    if not train_voices or not test_voices:
        raise ValueError("each split needs at least one voice")
    rng = random.Random(seed)
    for split, sentences, pool in (("train", train_sentences, train_voices), ("test", test_sentences, test_voices)):
        jobs = [(rng.choice(list(pool)), s, rng.getrandbits(32)) for s in sentences]
        waves: list[np.ndarray] = _parallel(_render_sentence, jobs, f"reading {split} sentences")
        save_split(out / split, waves, {"groups": [v for v, _, _ in jobs]})
        with open(out / split / PAIRS_FILE, "w") as f:
            for voice, text, _ in jobs:
                f.write(json.dumps({"text": text, "voice": voice}) + "\n")


def build_speech_text(out: Path) -> None:
    """The ``speech-text`` set: 3000 training and 500 held-out pairs (see the module docstring)."""
    sentences = corpus_sentences()
    random.Random(0).shuffle(sentences)
    if len(sentences) < TRAIN_SENTENCES + TEST_SENTENCES:
        raise RuntimeError(f"the embedded corpus has only {len(sentences)} sentences of {MIN_WORDS}-{MAX_WORDS} words")
    train_voices, test_voices = voices()
    build_pairs(
        out,
        sentences[:TRAIN_SENTENCES],
        sentences[TRAIN_SENTENCES : TRAIN_SENTENCES + TEST_SENTENCES],
        train_voices,
        test_voices,
    )
