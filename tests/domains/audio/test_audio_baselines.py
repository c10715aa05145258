"""The audio domain's raw-feature baseline: MFCC statistics, behind :meth:`AudioDomain.raw_features`,
``mmssl evaluate --init raw`` and ``python -m domains.audio.baselines``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from domains.audio import baselines
from domains.audio.baselines import mfcc_baseline, mfcc_statistics
from domains.audio.data import AudioDataConfig, ClipRows
from domains.audio.domain import make_processor
from domains.audio.features import mfcc_with_deltas
from domains.audio.io import load_folder
from mmssl.cli import main
from mmssl.probes import fit_linear_probe, knn_accuracy
from mmssl.registry import DOMAINS, TASKS, TaskSpec
from mmssl.tasks import ProbeConfig, TaskConfig
from mmssl.types import Extra
from tests.domains.audio.audio_fixtures import RATE, write_clips


@pytest.fixture(scope="module")
def tones(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A two-class folder task of rising low and falling high tones: 16 training and 8 test clips of 0.5-1 s."""
    root = tmp_path_factory.mktemp("tones")
    write_clips(root / "train", 16, seed=1, labelled=True)
    write_clips(root / "test", 8, seed=2, labelled=True)
    return root


def _clips(tones: Path, split: str):
    return load_folder(tones / split, RATE, labelled=True, key="task.path")


def test_mfcc_statistics_are_the_mean_and_std_of_39_dim_mfccs(tones: Path) -> None:
    clips = _clips(tones, "test")
    stats = mfcc_statistics(clips)
    assert stats.shape == (8, 78)
    frames = mfcc_with_deltas(clips.waves[3], RATE)  # [T, 39]
    torch.testing.assert_close(stats[3], torch.cat([frames.mean(0), frames.std(0)]))
    rows = ClipRows(clips, RATE // 2)  # a task reads the first 0.5 s of each clip: so does the baseline
    raw = mfcc_baseline(rows, rows)
    torch.testing.assert_close(raw.test[0][3], mfcc_statistics(clips.subset([3]), RATE // 2)[0])
    assert not torch.allclose(raw.test[0], stats)  # the clips are 0.5-1 s long
    assert raw.name == "mfcc-statistics" and raw.test[1].tolist() == clips.labels


def test_raw_features_keep_the_rows_and_labels_the_encoder_sees(tones: Path) -> None:
    task, domain = TaskConfig(name="folder", path=str(tones)), DOMAINS.get("audio")
    data = domain.task_data(task)
    raw = domain.raw_features(data, task)
    assert raw.train[0].shape == (16, 78) and raw.test[0].shape == (8, 78) and raw.train[0].dtype == torch.float32
    collate = domain.task_collate(make_processor(AudioDataConfig()), task)
    for rows, (_, labels) in ((data.train, raw.train), (data.test, raw.test)):
        assert torch.equal(labels, collate([rows[i] for i in range(len(rows))]).extras[Extra.LABELS])


def _result(out: str) -> dict:
    return json.loads([line for line in out.splitlines() if line.startswith("{")][-1])


def test_evaluate_init_raw_and_the_module_command_give_the_old_mfcc_probe(
    tones: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    train, test = _clips(tones, "train"), _clips(tones, "test")
    # the reference: the former mfcc_probe(train, test) on whole clips (all shorter than a task's 30 s)
    x_train, x_test = (mfcc_statistics(train), train.labels), (mfcc_statistics(test), test.labels)
    reference = fit_linear_probe(x_train, x_test, ProbeConfig())
    export = tmp_path / "export"  # init=raw reads nothing of an export but the domain it names
    export.mkdir()
    (export / "mmssl.json").write_text(json.dumps({"domain": "audio"}))
    task = ["--task", "folder", "--set", f"task.path={tones}", "--init", "raw"]
    assert main(["evaluate", str(export), *task]) == 0
    linear = _result(capsys.readouterr().out)
    assert linear["baseline"] == "mfcc-statistics" and linear["feature_dim"] == 78
    assert linear["accuracy"] == reference["accuracy"] and linear["train_accuracy"] == reference["train_accuracy"]
    assert main(["evaluate", str(export), "--protocol", "knn", "--set", "probe.k=5", *task]) == 0
    knn = knn_accuracy(tuple(map(torch.as_tensor, x_train)), tuple(map(torch.as_tensor, x_test)), 2, k=5)
    assert _result(capsys.readouterr().out)["accuracy"] == knn

    monkeypatch.setitem(TASKS._items, "tones", TaskSpec(lambda: (train, test), domain="audio"))
    monkeypatch.setattr(sys, "argv", ["baselines", "--task", "tones"])
    baselines.main()  # python -m domains.audio.baselines --task tones
    assert _result(capsys.readouterr().out) == {"task": "tones", "baseline": "mfcc-statistics", **reference}
