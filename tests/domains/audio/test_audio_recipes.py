"""Every audio recipe runs end to end at tiny size on synthetic audio files: pretrain -> export -> reload with transformers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoFeatureExtractor, AutoModel

from mmssl.export import export_meta
from mmssl.metrics import read_metrics
from mmssl.pretrain import pretrain
from mmssl.recipe import load_recipe
from tests.domains.audio.audio_fixtures import TINY_AUDIO, TINY_BY_RECIPE

AUDIO_RECIPES = ["wav2vec2", "data2vec_audio", "hubert", "apc", "tera"]


def test_audio_recipes_validate() -> None:
    for name in AUDIO_RECIPES:
        recipe = load_recipe(name)
        assert recipe.domain == "audio" and recipe.description


@pytest.mark.parametrize("name", AUDIO_RECIPES)
def test_audio_recipe_smoke_run(name: str, tmp_path: Path, audio_folder: Path) -> None:
    overrides = [*TINY_AUDIO, f"data.path={audio_folder}", *TINY_BY_RECIPE[name], "train.max_steps=3"]
    run = pretrain(name, overrides, tmp_path / name)
    losses = [r["loss"] for r in read_metrics(run) if "loss" in r]
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    export = run / "export"
    assert export_meta(export)["recipe"] == name and export_meta(export)["skipped_clips"] == 1  # the corrupt file
    base = AutoModel.from_pretrained(export)  # the backbone alone, as a fine-tuning user loads it
    assert base.config.hidden_size == 32
    extractor = AutoFeatureExtractor.from_pretrained(export)
    inputs = extractor([torch.randn(16000).numpy()], sampling_rate=16000, return_tensors="pt")
    with torch.no_grad():
        assert base(**inputs).last_hidden_state.shape[0] == 1


def test_resume_continues_exactly(tmp_path: Path, audio_folder: Path) -> None:
    overrides = [*TINY_AUDIO, f"data.path={audio_folder}", *TINY_BY_RECIPE["wav2vec2"], "train.checkpoint_every=2"]
    full = pretrain("wav2vec2", [*overrides, "train.max_steps=4"], tmp_path / "full")
    part = pretrain("wav2vec2", [*overrides, "train.max_steps=2"], tmp_path / "part")
    pretrain("wav2vec2", [*overrides, "train.max_steps=4"], part, resume=True)
    loss = lambda run: [r["loss"] for r in read_metrics(run) if "loss" in r]  # noqa: E731
    assert loss(part) == pytest.approx(loss(full), rel=1e-5)


def test_stream_and_encoder_must_agree(tmp_path: Path, audio_folder: Path) -> None:
    with pytest.raises(ValueError, match="data.stream=fbank"):
        pretrain(
            "tera",
            [*TINY_AUDIO, f"data.path={audio_folder}", "data.stream=waveform", "train.max_steps=1"],
            tmp_path / "bad",
        )
