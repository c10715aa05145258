"""Audio downstream: `mmssl finetune` / `mmssl evaluate` on a folder task, for wav2vec2 and data2vec-audio exports
(AutoModelForAudioClassification) and a conformer export (pooled linear head)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mmssl.cli import main
from mmssl.model import load_run_recipe
from mmssl.pretrain import pretrain
from tests.domains.audio.audio_fixtures import TINY_AUDIO, TINY_BY_RECIPE


@pytest.fixture(scope="module", params=["wav2vec2", "data2vec_audio", "tera"])
def audio_run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, audio_folder: Path) -> Path:
    name = request.param
    return pretrain(
        name,
        [*TINY_AUDIO, f"data.path={audio_folder}", *TINY_BY_RECIPE[name], "train.max_steps=2"],
        tmp_path_factory.mktemp(name) / "run",
    )


def _last_json(out: str) -> dict:
    return json.loads([line for line in out.splitlines() if line.startswith("{")][-1])


def test_finetune_and_linear_probe_on_a_folder_task(
    audio_run: Path, tone_task: Path, capsys: pytest.CaptureFixture
) -> None:
    task = ["--task", "folder", "--set", f"task.path={tone_task}"]
    # the tiny post-LN data2vec-audio transformer needs more steps than the pre-LN ones (40 steps: 0.67-0.75)
    steps = 80 if load_run_recipe(audio_run).name == "data2vec_audio" else 40
    main(
        [
            "finetune",
            str(audio_run),
            *task,
            "--set",
            f"train.max_steps={steps}",
            "--set",
            "train.lr=3e-3",
            "--set",
            "train.batch_size=8",
            "--set",
            "train.warmup_steps=4",
        ]
    )
    record = _last_json(capsys.readouterr().out)
    assert record["n_test"] == 24 and record["accuracy"] >= 0.75  # rising low tones vs falling high tones
    export = audio_run / "finetune" / "folder-pretrained" / "export"
    assert (export / "config.json").is_file() and (
        export / "preprocessor_config.json"
    ).is_file()  # the feature extractor
    head = export / "classifier_head.json"  # the conformer's linear head; transformers models keep them in config.json
    labels = json.loads((head if head.is_file() else export / "config.json").read_text())["id2label"]
    assert sorted(labels.values()) == ["high", "low"]  # the task's folder names
    main(["evaluate", str(audio_run), "--protocol", "linear", *task])
    probe = _last_json(capsys.readouterr().out)
    assert probe["protocol"] == "linear" and probe["n_train"] == 48 and 0.0 <= probe["accuracy"] <= 1.0
