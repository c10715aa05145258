"""Export through transformers' Auto classes and pipelines, the Hub push path, and vocabulary checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer, pipeline

from mmssl import hub
from mmssl.export import export_run
from mmssl.pretrain import pretrain
from tests.conftest import TINY


def test_bert_export_loads_with_auto_classes_and_fill_mask(tiny_bert_run: Path, tmp_path: Path) -> None:
    export = tiny_bert_run / "export"
    model = AutoModelForMaskedLM.from_pretrained(export)
    assert type(model).__name__ == "BertForMaskedLM"
    fill = pipeline("fill-mask", model=str(export))
    out = fill("she was [MASK] to see him")
    assert len(out) == 5 and all(0 <= r["score"] <= 1 for r in out)
    card = (export / "README.md").read_text()
    assert "pipeline_tag: fill-mask" in card and "optimizer steps: 12" in card and "final training loss" in card
    assert json.loads((export / "mmssl.json").read_text())["domain"] == "text"

    # `mmssl export` from the checkpoint reproduces the in-memory export exactly
    again = export_run(tiny_bert_run, tmp_path / "again")
    tok = AutoTokenizer.from_pretrained(export)
    ids = tok("it was a truth", return_tensors="pt")
    a, b = AutoModelForMaskedLM.from_pretrained(export).eval(), AutoModelForMaskedLM.from_pretrained(again).eval()
    torch.testing.assert_close(a(**ids).logits, b(**ids).logits)
    torch.testing.assert_close(a.cls.predictions.decoder.weight, a.bert.embeddings.word_embeddings.weight)


def test_gpt_export_generates(tiny_gpt_run: Path) -> None:
    export = tiny_gpt_run / "export"
    assert type(AutoModelForCausalLM.from_pretrained(export)).__name__ == "GPT2LMHeadModel"
    gen = pipeline("text-generation", model=str(export))
    text = gen("It is a truth", max_new_tokens=5, do_sample=False)[0]["generated_text"]
    assert text.startswith("It is a truth") and len(text) > len("It is a truth")
    assert "pipeline_tag: text-generation" in (export / "README.md").read_text()


def test_pretrained_tokenizer_loads_by_path_and_init_from_checks_the_vocab(tiny_bert_run: Path, tmp_path: Path) -> None:
    export = str(tiny_bert_run / "export")
    # continued pretraining from an export with its own tokenizer
    run = pretrain(
        "bert",
        [*TINY, "train.max_steps=2", f"data.tokenizer.name_or_path={export}", f"encoder.init_from={export}"],
        tmp_path / "continued",
    )
    assert (run / "export" / "model.safetensors").is_file()
    # a retrained tokenizer of another size does not fit the checkpoint's embeddings
    with pytest.raises(
        ValueError, match=r"tokenizer/vocabulary mismatch: the tokenizer has \d+ tokens .*config.vocab_size=\d+"
    ):
        pretrain(
            "bert",
            [*TINY, "train.max_steps=2", "data.tokenizer.vocab_size=200", f"encoder.init_from={export}"],
            tmp_path / "mismatch",
        )


class FakeHfApi:
    """Records what mmssl asks of the Hub (no network)."""

    calls: list[tuple[str, dict]] = []

    def __init__(self, token: str | None = None) -> None:
        FakeHfApi.calls.append(("init", {"token": token}))

    def create_repo(self, **kw):
        FakeHfApi.calls.append(("create_repo", kw))

    def upload_folder(self, **kw):
        FakeHfApi.calls.append(("upload_folder", kw))
        return type("Commit", (), {"commit_url": f"https://huggingface.co/{kw['repo_id']}/commit/abc"})()


def test_push_creates_repo_and_uploads_the_export(tiny_bert_run: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setattr(hub, "HfApi", FakeHfApi)
    monkeypatch.setenv("HF_TOKEN", "hf_secret_value")
    FakeHfApi.calls = []
    from mmssl.cli import main

    assert main(["push", str(tiny_bert_run), "--repo-id", "me/tiny-bert", "--private"]) == 0
    names = [c[0] for c in FakeHfApi.calls]
    assert names == ["init", "create_repo", "upload_folder"]
    assert FakeHfApi.calls[0][1]["token"] == "hf_secret_value"
    assert FakeHfApi.calls[1][1] == {"repo_id": "me/tiny-bert", "repo_type": "model", "private": True, "exist_ok": True}
    assert Path(FakeHfApi.calls[2][1]["folder_path"]) == tiny_bert_run / "export"
    out = capsys.readouterr()
    assert "hf_secret_value" not in out.out + out.err
    assert "me/tiny-bert/commit" in out.out


def test_push_dry_run_lists_files_and_sends_nothing(
    tiny_bert_run: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setattr(hub, "HfApi", FakeHfApi)
    FakeHfApi.calls = []
    from mmssl.cli import main

    assert main(["push", str(tiny_bert_run / "export"), "--repo-id", "me/tiny-bert", "--dry-run"]) == 0
    assert FakeHfApi.calls == []
    out = capsys.readouterr().out
    for name in ("model.safetensors", "config.json", "tokenizer.json", "README.md", "mmssl.json"):
        assert name in out


def test_push_rejects_a_bad_repo_id(tiny_bert_run: Path) -> None:
    with pytest.raises(ValueError, match="ORG/NAME"):
        hub.push(tiny_bert_run, "no-slash", dry_run=True)


def test_push_offline_says_the_hub_cannot_be_reached(
    tiny_bert_run: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_secret_value")  # the real HfApi, under the tests' HF_HUB_OFFLINE=1
    from mmssl.cli import main

    assert main(["push", str(tiny_bert_run), "--repo-id", "me/tiny-bert"]) == 2
    err = capsys.readouterr().err
    assert "mmssl: error: the Hugging Face Hub cannot be reached: HF_HUB_OFFLINE is set" in err
    assert "Traceback" not in err and "hf_secret_value" not in err and len(err.splitlines()) == 1


def test_push_without_network_says_so(tiny_bert_run: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    import functools

    import huggingface_hub

    monkeypatch.setenv("HF_TOKEN", "hf_secret_value")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(
        hub, "HfApi", functools.partial(huggingface_hub.HfApi, endpoint="http://127.0.0.1:9")
    )  # closed port
    from mmssl.cli import main

    assert main(["push", str(tiny_bert_run), "--repo-id", "me/tiny-bert"]) == 2
    err = capsys.readouterr().err
    assert "the Hugging Face Hub cannot be reached (ConnectError" in err and "nothing was uploaded" in err
    assert "Traceback" not in err and "hf_secret_value" not in err


def test_push_without_a_token_says_so_and_dry_run_reports_it(
    tiny_bert_run: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setattr(hub, "HfApi", FakeHfApi)
    monkeypatch.setattr(hub, "get_token", lambda: None)
    FakeHfApi.calls = []
    from mmssl.cli import main

    assert main(["push", str(tiny_bert_run), "--repo-id", "me/tiny-bert"]) == 2
    assert "no Hugging Face token found: run `hf auth login` or set HF_TOKEN" in capsys.readouterr().err
    assert FakeHfApi.calls == []
    assert main(["push", str(tiny_bert_run), "--repo-id", "me/tiny-bert", "--dry-run"]) == 0
    assert "token: none found" in capsys.readouterr().out
    monkeypatch.setattr(hub, "get_token", lambda: "hf_secret_value")
    assert main(["push", str(tiny_bert_run), "--repo-id", "me/tiny-bert", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "token: found" in out and "hf_secret_value" not in out


def test_exports_name_no_local_path_and_dry_run_shows_the_data_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """A run on the user's own files publishes their names only, never the folders they sit in."""
    from mmssl.cli import main

    corpus = tmp_path / "private-folder" / "my-notes.txt"
    corpus.parent.mkdir()
    corpus.write_text("\n\n".join(f"paragraph {i} about the sea and the ships that sail on it" for i in range(300)))
    run = pretrain(
        "bert", [*TINY, "data.source=files", f"data.paths=[{corpus}]", "train.max_steps=2"], tmp_path / "run"
    )
    for f in (run / "export").rglob("*"):
        if f.is_file() and f.suffix in (".json", ".md", ".txt", ".yaml"):
            assert str(tmp_path) not in f.read_text(), f"{f.name} names a local folder"
    assert json.loads((run / "export" / "mmssl.json").read_text())["data_name"] == "my-notes.txt"
    monkeypatch.setattr(hub, "HfApi", FakeHfApi)
    assert main(["push", str(run), "--repo-id", "me/notes", "--dry-run"]) == 0
    out = capsys.readouterr().out
    card_lines = out.split("what the model card (README.md) says about the data:\n")[1]
    assert "- data_name: my-notes.txt" in card_lines and "- my-notes.txt" in card_lines
    assert str(tmp_path) not in card_lines
