"""The speech-text builder, paired loading and collation."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from domains.speech_text.builders import PAIRS_FILE, build_pairs, split_sentences, voices
from domains.speech_text.data import SpeechTextDataConfig, load_pairs
from mmssl.config import ConfigError
from mmssl.pretrain import pretrain
from tests.domains.speech_text.speech_text_fixtures import TINY_SPEECH_TEXT, write_pairs


def test_sentences_keep_honorifics_and_drop_quotes() -> None:
    assert split_sentences('He met Mr. Knightley. "Yes," said _she_. Done!') == [
        "He met Mr. Knightley.",
        "Yes, said she.",
        "Done!",
    ]


def test_voices_are_split_by_variant() -> None:
    train, test = voices()
    assert not set(train) & set(test) and len(test) == 12
    assert all(v.endswith(("+f4", "+m7")) for v in test)


@pytest.mark.skipif(not (shutil.which("espeak-ng") and shutil.which("sox")), reason="needs espeak-ng and sox")
def test_builder_renders_disjoint_pairs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MMSSL_AUDIO_WORKERS", "1")
    build_pairs(
        tmp_path,
        ["The sun rose over the hills.", "She wrote a long letter."],
        ["It was a fine day."],
        ["espeak:en-us+m1"],
        ["espeak:en-gb+f4"],
    )
    cfg = SpeechTextDataConfig(source="folder", path=str(tmp_path))
    train, test = load_pairs(cfg, "train"), load_pairs(cfg, "test")
    assert train.texts == ["The sun rose over the hills.", "She wrote a long letter."]
    assert test.texts == ["It was a fine day."]
    assert all(w.numel() > 0.5 * 16000 for w in train.clips.waves + test.clips.waves)  # speech, not silence
    rows = [json.loads(line) for line in (tmp_path / "test" / PAIRS_FILE).read_text().splitlines()]
    assert rows == [{"text": "It was a fine day.", "voice": "espeak:en-gb+f4"}]
    with pytest.raises(ValueError, match="no sentence and no voice"):
        build_pairs(tmp_path / "again", ["a b c d e."], ["a b c d e."], ["espeak:en-us"], ["espeak:en-gb"])


def test_missing_text_column_is_named(tmp_path: Path) -> None:
    write_pairs(tmp_path, "train", ["One two three four five."], "v")
    path = tmp_path / "train" / PAIRS_FILE
    path.write_text(json.dumps({"sentence": "One two three four five.", "voice": "v"}) + "\n")
    with pytest.raises(KeyError, match="data.text_column: column 'text' is missing .* columns: sentence, voice"):
        load_pairs(SpeechTextDataConfig(source="folder", path=str(tmp_path)), "train")
    assert load_pairs(
        SpeechTextDataConfig(source="folder", path=str(tmp_path), text_column="sentence"), "train"
    ).texts == ["One two three four five."]


def test_missing_split_and_bad_stream_are_errors(tmp_path: Path, pairs_folder: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no paired split 'dev'"):
        load_pairs(SpeechTextDataConfig(source="folder", path=str(pairs_folder)), "dev")
    with pytest.raises(ValueError, match="data.stream=fbank"):
        pretrain(
            "clip_speech_text",
            [*TINY_SPEECH_TEXT, f"data.path={pairs_folder}", "data.stream=waveform", "train.max_steps=1"],
            tmp_path / "bad",
        )
    with pytest.raises(ConfigError, match="encoder.text.arch must be bert"):
        pretrain("clip_speech_text", ["encoder.text.arch=gpt2"], tmp_path / "bad2")


def test_collator_pairs_speech_with_text(pairs_folder: Path) -> None:
    from domains.speech_text.domain import SpeechTextDomain
    from mmssl.tasks import TaskConfig

    domain = SpeechTextDomain()
    task = TaskConfig(name="speech-text", path=str(pairs_folder))
    data = domain.task_data(task)
    assert len(data.train) == 16 and len(data.test) == 8
    from domains.audio.domain import make_processor
    from domains.speech_text.data import SpeechTextProcessor
    from domains.text.tokenizer import TokenizerConfig, train_tokenizer

    tokenizer = train_tokenizer(iter(data.train.pairs.texts), TokenizerConfig(vocab_size=100), "bert", 32)
    processor = SpeechTextProcessor(tokenizer, make_processor(SpeechTextDataConfig().audio()))
    batch = domain.task_collate(processor, task)([data.test[i] for i in range(3)])
    text = batch.pair
    assert batch.units.shape[0] == text.units.shape[0] == 3 and batch.units.shape[2] == 160
    assert (text.units[:, 0] == tokenizer.cls_token_id).all() and text.special_mask[:, 0].all()
    assert (
        tokenizer.decode(text.units[0][~text.padding_mask[0]], skip_special_tokens=True) == "emma smiled at her friend."
    )
