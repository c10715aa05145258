"""The speech_text domain has no raw-feature baseline: its paired task has no labels to probe, and
``mmssl evaluate --init raw`` says so in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mmssl.cli import main
from mmssl.domain import TaskData
from mmssl.registry import DOMAINS
from mmssl.tasks import TaskConfig

NO_BASELINE = (
    "the speech_text domain has no raw-feature baseline (init=raw): task 'speech-text' pairs speech with "
    "text and has no labels to probe; evaluate it with --protocol retrieval, against --set init=random"
)


def test_raw_features_are_refused() -> None:
    with pytest.raises(ValueError) as error:
        DOMAINS.get("speech_text").raw_features(TaskData([], [], []), TaskConfig(name="speech-text"))
    assert str(error.value) == NO_BASELINE


@pytest.mark.parametrize("protocol", ["linear", "knn"])
def test_evaluate_init_raw_is_one_line(
    protocol: str,
    pairs_folder: Path,
    tmp_path: Path,  # noqa: F811
    capsys: pytest.CaptureFixture,
) -> None:
    export = tmp_path / "export"  # an export as far as init=raw reads it: mmssl.json naming the domain
    export.mkdir()
    (export / "mmssl.json").write_text(json.dumps({"domain": "speech_text"}))
    assert (
        main(
            [
                "evaluate",
                str(export),
                "--protocol",
                protocol,
                "--task",
                "speech-text",
                "--set",
                f"task.path={pairs_folder}",
                "--init",
                "raw",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert f"mmssl: error: {NO_BASELINE}" in err and "Traceback" not in err
