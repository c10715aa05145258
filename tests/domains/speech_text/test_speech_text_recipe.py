"""The clip_speech_text recipe end to end at tiny size: pretrain -> evaluate retrieval -> export -> reload
both towers with transformers alone and get the same outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoFeatureExtractor, AutoModel, AutoTokenizer

from domains.speech_text.encoders import load_speech_text_encoder
from mmssl.cli import main
from mmssl.metrics import read_metrics
from mmssl.objectives.clip import ClipHeads
from mmssl.pretrain import pretrain
from tests.domains.speech_text.speech_text_fixtures import SENTENCES, TINY_SPEECH_TEXT, tone


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, pairs_folder: Path) -> Path:  # noqa: F811
    run = tmp_path_factory.mktemp("runs") / "clip"
    return pretrain("clip_speech_text", [*TINY_SPEECH_TEXT, f"data.path={pairs_folder}", "train.max_steps=3"], run)


def test_pretrain_logs_finite_losses(tiny_run: Path) -> None:
    records = [r for r in read_metrics(tiny_run) if "loss" in r]
    assert len(records) == 3 and all(torch.isfinite(torch.tensor([r["loss"] for r in records])))
    assert records[0]["logit_scale"] == pytest.approx(1 / 0.07, rel=0.05)
    summary = json.loads((tiny_run / "data_summary.json").read_text())
    assert summary["pairs"] == 16 and summary["dropped_pairs"] == 0


def test_retrieval_evaluation_is_logged(tiny_run: Path, pairs_folder: Path, capsys: pytest.CaptureFixture) -> None:  # noqa: F811
    for init in ("pretrained", "random"):
        assert (
            main(
                [
                    "evaluate",
                    str(tiny_run),
                    "--protocol",
                    "retrieval",
                    "--task",
                    "speech-text",
                    "--set",
                    f"task.path={pairs_folder}",
                    "--set",
                    f"init={init}",
                ]
            )
            == 0
        )
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    records = [r for r in read_metrics(tiny_run) if r.get("protocol") == "retrieval"]
    assert [r["init"] for r in records] == ["pretrained", "random"] and records[0]["n_test"] == 8
    for key in (
        "speech_to_text_recall@1",
        "speech_to_text_recall@5",
        "text_to_speech_recall@1",
        "text_to_speech_recall@5",
    ):
        assert 0.0 <= records[0][key] <= 1.0 and records[0][key] == printed[0][key]
    assert records[0]["chance_recall@5"] == pytest.approx(5 / 8)


def test_export_reloads_without_mmssl(tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["export", str(tiny_run), "--to", str(tmp_path / "export")]) == 0
    export = tmp_path / "export"
    assert {"README.md", "mmssl.json", "projection_heads.safetensors", "audio", "text"} <= {
        p.name for p in export.iterdir()
    }
    encoder = load_speech_text_encoder(export).eval()
    heads = ClipHeads.load(export).eval()
    # text tower: transformers' BertModel + tokenizer
    tokenizer = AutoTokenizer.from_pretrained(export / "text")
    bert = AutoModel.from_pretrained(export / "text").eval()
    assert type(bert).__name__ == "BertModel"
    # audio tower: the audio domain's export format (a transformers conformer + feature extractor)
    extractor = AutoFeatureExtractor.from_pretrained(export / "audio")
    conformer = AutoModel.from_pretrained(export / "audio").eval()
    waves = [tone(1), tone(2)]
    texts = SENTENCES[:2]
    text_in = tokenizer(texts, return_tensors="pt", padding=True)
    weights = load_file(str(export / "projection_heads.safetensors"))
    with torch.no_grad():
        text_hidden = bert(**text_in).last_hidden_state
        from domains.speech_text.data import SpeechTextProcessor
        from domains.speech_text.domain import SpeechTextDomain
        from mmssl.tasks import TaskConfig

        processor = SpeechTextProcessor.from_pretrained(export)
        batch = SpeechTextDomain().task_collate(processor, TaskConfig())(
            [
                {"wave": torch.from_numpy(w), "text": t, "index": i, "label": -1}
                for i, (w, t) in enumerate(zip(waves, texts))
            ]
        )
        ours_text = encoder.text.encode(batch.pair).hidden
        torch.testing.assert_close(text_hidden, ours_text, atol=1e-4, rtol=1e-4)
        ours_speech = encoder.audio.encode(batch).hidden
        for i in range(2):  # each clip alone (the extractor pads to an even number of frames, the collator drops one)
            units = batch.units[i, ~batch.padding_mask[i]]
            theirs = extractor([waves[i]], sampling_rate=16000, return_tensors="pt")["input_features"][0, : len(units)]
            torch.testing.assert_close(theirs, units, atol=1e-3, rtol=1e-3)  # the feature extractor computes our units
            alone = conformer(input_features=units[None]).last_hidden_state[0]
            torch.testing.assert_close(alone, ours_speech[i, ~batch.padding_mask[i]], atol=1e-4, rtol=1e-4)
        # the joint embedding by hand: mean-pool, then the exported projection
        keep = (~batch.pair.padding_mask).unsqueeze(-1).float()
        by_hand = ((text_hidden * keep).sum(1) / keep.sum(1)) @ weights["paired_projection.weight"].T
        torch.testing.assert_close(by_hand, heads.project(encoder, batch)[1], atol=1e-4, rtol=1e-4)


def test_push_dry_run_lists_both_towers(tiny_run: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["push", str(tiny_run), "--repo-id", "me/clip-speech-text", "--dry-run"]) == 0
    out = capsys.readouterr().out
    for name in (
        "text/model.safetensors",
        "audio/model.safetensors",
        "projection_heads.safetensors",
        "README.md",
        "text/tokenizer.json",
        "audio/preprocessor_config.json",
    ):
        assert name in out
