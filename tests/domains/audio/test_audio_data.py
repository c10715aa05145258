"""Audio data: decoding and resampling, corrupt files, the two unit streams, padding, duration buckets, SpecAugment."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import SeamlessM4TFeatureExtractor, Wav2Vec2FeatureExtractor

from domains.audio.data import AudioCollator, AudioDataConfig, BucketedClips, bucket_order
from domains.audio.features import fbank_units, spec_augment
from domains.audio.io import AudioClips, decode_file, load_folder, load_hf_audio
from tests.domains.audio.audio_fixtures import RATE, tone, write_clips


def test_folder_decodes_resamples_and_skips_corrupt_files(audio_folder: Path, caplog: pytest.LogCaptureFixture) -> None:
    clips = load_folder(audio_folder, RATE)
    assert len(clips) == 24 and clips.sampling_rate == RATE
    assert len(clips.skipped) == 1 and "broken.wav" in clips.skipped[0][0]
    assert "broken.wav" in caplog.text
    assert all(w.dtype == torch.float32 and w.ndim == 1 for w in clips.waves)
    # a 22.05 kHz file comes back at 16 kHz with the same duration
    resampled = next(n for n in clips.names if n.endswith("clip000.wav"))
    import soundfile as sf

    info = sf.info(resampled)
    assert info.samplerate == 22050
    assert abs(len(clips.waves[clips.names.index(resampled)]) - info.duration * RATE) <= 2


def test_decode_error_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.flac"
    bad.write_bytes(b"nope")
    with pytest.raises(ValueError, match="bad.flac"):
        decode_file(bad, RATE)
    with pytest.raises(FileNotFoundError, match="data.path"):
        load_folder(tmp_path / "missing", RATE)


def test_a_task_folder_is_named_by_the_task_key(tmp_path: Path) -> None:
    """A fine-tuning task's split folders come from task.path: the errors say so, not data.path."""
    with pytest.raises(FileNotFoundError, match=r"^task\.path: audio folder .*task/test does not exist$"):
        load_folder(tmp_path / "task" / "test", RATE, labelled=True, key="task.path")
    (tmp_path / "task" / "test").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"^task\.path: no audio files"):
        load_folder(tmp_path / "task" / "test", RATE, labelled=True, key="task.path")


def test_hub_dataset_on_disk_and_missing_column(tmp_path: Path) -> None:
    """A saved dataset whose audio column holds encoded file bytes (8 kHz WAV) is decoded with soundfile."""
    import io

    import datasets
    import soundfile as sf

    rng = np.random.default_rng(0)

    def wav_bytes(seconds: float) -> bytes:
        buf = io.BytesIO()
        sf.write(buf, tone(300, seconds, rng), 8000, format="WAV")
        return buf.getvalue()

    rows = {
        "audio": [
            {"bytes": wav_bytes(0.5), "path": None},
            {"bytes": b"corrupt", "path": None},
            {"bytes": wav_bytes(0.4), "path": None},
        ],
        "label": [0, 1, 1],
    }
    features = datasets.Features(
        {
            "audio": {"bytes": datasets.Value("binary"), "path": datasets.Value("string")},
            "label": datasets.ClassLabel(names=["a", "b"]),
        }
    )
    path = tmp_path / "ds"
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(rows, features=features)}).save_to_disk(str(path))
    clips = load_hf_audio(str(path), "train", RATE, label_column="label")
    assert len(clips) == 2 and clips.labels == [0, 1] and clips.label_names == ["a", "b"]
    assert len(clips.skipped) == 1 and "[train][1].audio" in clips.skipped[0][0]  # the error names row and column
    assert abs(len(clips.waves[0]) - 2 * 8000) <= 2  # 8000 samples written at 8 kHz: 1 s, 16000 samples at 16 kHz
    with pytest.raises(KeyError, match="'speech'"):
        load_hf_audio(str(path), "train", RATE, audio_column="speech")
    with pytest.raises(KeyError, match="'test'"):
        load_hf_audio(str(path), "test", RATE)


def test_fbank_units_match_the_exported_feature_extractor() -> None:
    wave = torch.from_numpy(tone(440, 1.0, np.random.default_rng(0), sweep=200))
    ours = fbank_units(wave, RATE, 80, 2)
    theirs = SeamlessM4TFeatureExtractor()(wave.numpy(), sampling_rate=RATE, return_tensors="pt").input_features[0]
    assert ours.shape == theirs.shape == (49, 160)
    assert torch.allclose(ours, theirs, atol=1e-3)


def _rows(lengths: list[int]) -> list[dict]:
    rng = np.random.default_rng(0)
    return [{"wave": torch.from_numpy(tone(300, n / RATE, rng)), "label": i, "index": i} for i, n in enumerate(lengths)]


def test_waveform_collate_pads_and_normalises_like_wav2vec2_feature_extractor() -> None:
    rows = _rows([16000, 9000])
    batch = AudioCollator("waveform", RATE, with_labels=True)(rows)
    assert batch.units.shape == (2, 16000) and batch.padding_mask.sum(1).tolist() == [0, 7000]
    assert batch.extras["labels"].tolist() == [0, 1]
    ref = Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=True)(
        [r["wave"].numpy() for r in rows], sampling_rate=RATE, padding=True, return_tensors="pt"
    )
    assert torch.allclose(batch.units, ref.input_values, atol=1e-4)
    assert torch.equal(~batch.padding_mask, ref.attention_mask.bool())


def test_fbank_collate_grid_and_padding() -> None:
    batch = AudioCollator("fbank", RATE)(_rows([16000, 8000]))
    assert batch.units.shape == (2, 49, 160)
    assert batch.padding_mask.sum(1).tolist() == [0, 25]
    assert (batch.units[1, 24:] == 0).all()


def test_bucket_order_groups_similar_durations_and_covers_every_clip() -> None:
    rng = np.random.default_rng(0)
    lengths = rng.integers(1000, 50000, 200).tolist()
    order = bucket_order(lengths, 8, 5, np.random.default_rng(1))
    assert sorted(order) == list(range(200))
    spread = np.mean([np.ptp([lengths[i] for i in order[k : k + 8]]) for k in range(0, 200, 8)])
    random_spread = np.mean([np.ptp([lengths[i] for i in rng.permutation(200)[:8]]) for _ in range(25)])
    assert spread < 0.5 * random_spread


def test_bucketed_clips_are_deterministic_per_epoch_and_crop() -> None:
    clips = AudioClips([torch.randn(n) for n in (500, 3000, 1200, 800, 5000, 700)], RATE)
    ds = BucketedClips(clips, batch_size=2, max_samples=1000, seed=3, window=2)
    first = [(r["index"], r["wave"].sum().item()) for r in ds]
    assert first == [(r["index"], r["wave"].sum().item()) for r in ds]
    assert max(len(r["wave"]) for r in ds) == 1000
    ds.set_epoch(1)
    assert sorted(r["index"] for r in ds) == list(range(6))


def test_spec_augment_masks_time_and_frequency_but_not_padding() -> None:
    torch.manual_seed(0)
    units = torch.ones(4, 50, 160)
    pad = torch.zeros(4, 50, dtype=torch.bool)
    pad[:, 40:] = True
    out = spec_augment(units, pad, time_masks=2, time_width=10, freq_masks=2, freq_width=8, features_per_frame=80)
    assert (out[:, 40:] == 1).all()  # padding untouched
    zero = out[:, :40] == 0
    assert zero.any()
    # a masked frequency bin is masked in both stacked frames
    bins = zero.all(1)  # [B, 160]: bins zero at every real unit
    assert torch.equal(bins[:, :80], bins[:, 80:])


def test_data_config_errors_name_the_key() -> None:
    with pytest.raises(ValueError, match="data.path"):
        AudioDataConfig(source="folder")
    with pytest.raises(ValueError, match="data.stream=fbank"):
        AudioDataConfig(targets="mfcc-kmeans")


def test_audio_task_folder_without_its_test_split_names_task_path(tmp_path: Path) -> None:
    from domains.audio.domain import AudioDomain
    from mmssl.tasks import TaskConfig

    write_clips(tmp_path / "task" / "train", 4, labelled=True)  # no task/test folder
    with pytest.raises(FileNotFoundError, match=r"^task\.path: "):
        AudioDomain().task_data(TaskConfig(name="folder", path=str(tmp_path / "task")))
