"""Export helpers: model-card result cells and RUN_OR_EXPORT resolution."""

import json

import pytest

from mmssl.export import _result_text, resolve_export


def test_result_cells_show_accuracy_or_every_recall() -> None:
    assert _result_text({"event": "evaluate", "accuracy": 0.81234}) == "accuracy 0.8123"
    retrieval = {
        "event": "evaluate",
        "protocol": "retrieval",
        "audio_to_text_recall@1": 0.122,
        "audio_to_text_recall@5": 0.36,
        "chance_recall@1": 0.002,
    }
    assert _result_text(retrieval) == "audio to text recall@1 0.1220, audio to text recall@5 0.3600"
    assert _result_text({"event": "finetune"}) == "-"


def test_an_export_without_a_root_config_resolves_by_its_metadata(tmp_path) -> None:
    two_towers = tmp_path / "export"
    (two_towers / "text").mkdir(parents=True)
    (two_towers / "text" / "config.json").write_text("{}")
    (two_towers / "mmssl.json").write_text(json.dumps({"domain": "speech_text"}))
    assert resolve_export(two_towers) == (two_towers, None)
    with pytest.raises(FileNotFoundError, match="neither an mmssl run"):
        resolve_export(two_towers / "text" / "missing")
