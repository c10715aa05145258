"""The kws builder renders keywords with espeak-ng and flite, splits by voice, and reads back as a task."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from domains.audio import builders

needs_tts = pytest.mark.skipif(
    not all(shutil.which(t) for t in ("espeak-ng", "flite", "sox")), reason="apt-get install -y espeak-ng flite sox"
)


def test_voices_split_by_voice() -> None:
    voices = builders.kws_voices()
    test = [v for v in voices if builders.is_test_voice(v)]
    assert len(voices) == 93 and 0.1 < len(test) / len(voices) < 0.3
    assert any(v.startswith("flite:") for v in test) and any(v.startswith("espeak:") for v in test)


def test_place_in_window_is_one_second_with_the_word_inside() -> None:
    import random

    word = np.sin(np.arange(6000) / 5).astype(np.float32)
    clip = builders.place_in_window(word, random.Random(0))
    assert clip.shape == (16000,) and clip.dtype == np.float32 and np.abs(clip).max() <= 1
    assert (np.abs(clip) > 0.05).sum() > 3000  # the word is there, above the noise


def test_speech_sentences_come_from_the_text_domains_embedded_corpus() -> None:
    from domains.text.builders import embedded_corpus_text

    sentences = builders.austen_sentences(3000)
    assert sentences[0].startswith("Knightley soon saw that he had lost his moment")  # the same draw as ever
    text = " ".join(embedded_corpus_text("austen").split())
    assert len(set(sentences)) == 3000 and all(s in text and 4 <= len(s.split()) <= 30 for s in sentences)


@needs_tts
def test_kws_builder_renders_and_splits_by_voice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(builders, "ESPEAK_ACCENTS", ("en-us",))
    monkeypatch.setattr(builders, "ESPEAK_VARIANTS", ("f1", "f4"))
    monkeypatch.setattr(builders, "FLITE_VOICES", ("kal", "awb"))
    monkeypatch.setattr(builders, "KWS_WORDS", ("yes", "no"))
    monkeypatch.setattr(builders, "KWS_REPEATS", 2)
    monkeypatch.setenv("MMSSL_AUDIO_WORKERS", "1")
    builders.build_kws(tmp_path)
    train, test = builders.load_split(tmp_path / "train"), builders.load_split(tmp_path / "test")
    assert len(train) == len(test) == 2 * 2 * 2  # 2 voices x 2 words x 2 repeats each
    assert set(train.groups) == {"espeak:en-us+f1", "flite:kal"} and set(test.groups) == {
        "espeak:en-us+f4",
        "flite:awb",
    }
    assert train.label_names == ["yes", "no"] and sorted(set(train.labels)) == [0, 1]
    assert all(len(w) == 16000 for w in train.waves + test.waves)
    assert all(float(w.abs().max()) > 0.05 for w in train.waves)


@pytest.mark.parametrize("name", ["kws", "speech"])
def test_missing_speech_tools_fail_at_once_naming_the_apt_command(
    name: str, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """No decoding or rendering starts (it took 8 minutes before the failure) when a tool is missing."""
    from mmssl.cli import main

    real_which = shutil.which
    monkeypatch.setattr(builders.shutil, "which", lambda tool: None if tool == "sox" else real_which(tool))
    started = []
    monkeypatch.setattr(builders, "_debian_clips", lambda *a: started.append(a) or [])
    monkeypatch.setattr(builders, "_parallel", lambda *a: started.append(a) or [])
    assert main(["data", "prepare", name]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"mmssl: error: mmssl data prepare {name} failed: sox is not installed")
    assert "apt-get install -y espeak-ng flite sox" in err and "Traceback" not in err
    assert started == []
