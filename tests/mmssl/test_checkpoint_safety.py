"""Resuming never runs code from a run directory, and only intact checkpoints are resumed or exported.

A malicious pickle is written into each file the resume path reads; the resume must not run it (it
falls back to an older checkpoint, or stops with an error naming the file). Damaged checkpoints
(truncated, altered, missing a file) are named in a warning and skipped.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import shlex
import shutil
from pathlib import Path

import pytest
import torch
from accelerate.utils.other import load as accelerate_load

import mmssl.checkpoint as checkpoint_module
from mmssl.checkpoint import MANIFEST_FILE, CheckpointError, checkpoint_dirs, file_digest, latest_checkpoint
from mmssl.cli import main
from mmssl.export import export_meta
from tests.conftest import TINY
from tests.mmssl.loop_fixtures import logged_steps, regression_trainer, stop_at

# Every file Accelerate's load_state (or, for objects registered with it, load_custom_state) reads.
RESUME_READS = ["custom_checkpoint_0.pkl", "random_states_0.pkl", "optimizer.bin", "scheduler.bin", "sampler.bin"]


class Payload:
    """Unpickling this creates ``marker``: what an attacker's checkpoint file would do instead."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


def _two_checkpoints(run: Path) -> tuple[Path, Path]:
    regression_trainer(run, max_steps=4, checkpoint_every=2).fit()
    older, newest = checkpoint_dirs(run)
    return older, newest


def _forge_manifest(ckpt: Path) -> None:
    """What an attacker who can write the folder would also do: record the planted files' sizes and hashes."""
    manifest = json.loads((ckpt / MANIFEST_FILE).read_text())
    manifest["files"] = {
        p.name: file_digest(p) for p in sorted(ckpt.iterdir()) if p.name not in (MANIFEST_FILE, "COMPLETE")
    }
    (ckpt / MANIFEST_FILE).write_text(json.dumps(manifest))


def _resume(run: Path, max_steps: int = 4) -> None:
    regression_trainer(run, max_steps=max_steps, checkpoint_every=2).fit(resume=True)


def test_the_payload_runs_when_unpickled(tmp_path: Path) -> None:
    """The planted files are real exploits: loading one the unsafe way runs the code."""
    marker = tmp_path / "pwned"
    torch.save(Payload(marker), tmp_path / "evil.bin")
    torch.load(tmp_path / "evil.bin", weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("forged", [False, True], ids=["manifest-kept", "manifest-forged"])
@pytest.mark.parametrize("name", RESUME_READS)
def test_a_planted_pickle_never_runs_and_the_run_falls_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, name: str, forged: bool
) -> None:
    run, marker = tmp_path / "run", tmp_path / "pwned"
    _, newest = _two_checkpoints(run)
    torch.save(Payload(marker), newest / name)
    if forged:
        _forge_manifest(newest)
    with caplog.at_level(logging.WARNING, logger="mmssl.checkpoint"):
        _resume(run)
    assert not marker.exists()
    assert f"checkpoint {newest} cannot be used: {name}" in caplog.text  # names the checkpoint and the file
    assert logged_steps(run) == [1, 2, 3, 4]  # resumed from step 2: steps 3 and 4 again, once each
    assert [d.name for d in checkpoint_dirs(run, verify=True)] == ["step-0000002", "step-0000004"]


def test_a_plain_pickle_is_not_loaded_either(tmp_path: Path) -> None:
    """A file written with pickle itself (not torch.save), manifest forged: refused, never unpickled."""
    run, marker = tmp_path / "run", tmp_path / "pwned"
    _, newest = _two_checkpoints(run)
    (newest / "optimizer.bin").write_bytes(pickle.dumps(Payload(marker)))
    _forge_manifest(newest)
    _resume(run)
    assert not marker.exists()
    assert logged_steps(run) == [1, 2, 3, 4]


@pytest.mark.parametrize("name", ["optimizer.bin", "scheduler.bin", "random_states_0.pkl"])
def test_accelerate_itself_reads_checkpoints_with_weights_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    """Past mmssl's own checks (switched off here), Accelerate's loader is the restricted unpickler."""
    run, marker = tmp_path / "run", tmp_path / "pwned"
    older, newest = _two_checkpoints(run)
    for ckpt in (older, newest):
        torch.save(Payload(marker), ckpt / name)
        _forge_manifest(ckpt)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        accelerate_load(newest / name)  # what load_state calls for each of these files
    monkeypatch.setattr(checkpoint_module, "_unsafe_pickle", lambda path: None)
    if name == "random_states_0.pkl":  # Accelerate catches this one itself and keeps the current RNG state
        _resume(run)
    else:
        with pytest.raises(CheckpointError, match=f"{newest} holds a file that is not plain tensors"):
            _resume(run)
    assert not marker.exists()


def test_no_safe_checkpoint_is_an_error_naming_the_file(tmp_path: Path) -> None:
    run, marker = tmp_path / "run", tmp_path / "pwned"
    for ckpt in _two_checkpoints(run):
        torch.save(Payload(marker), ckpt / "optimizer.bin")
        _forge_manifest(ckpt)
    with pytest.raises(
        CheckpointError,
        match=r"no intact checkpoint in .*checkpoints: in step-0000004, "
        r"optimizer.bin refers to code \(posix.system\)",
    ):
        _resume(run)
    assert not marker.exists()


# ---------------------------------------------------------------------------- damaged checkpoints
def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("damage", "name", "says"),
    [
        (_truncate, "model.safetensors", "model.safetensors has"),
        (_flip_a_byte, "model.safetensors", "model.safetensors does not match its SHA-256 checksum"),
        (Path.unlink, "optimizer.bin", "optimizer.bin is missing"),
        (Path.unlink, "trainer_state.json", "trainer_state.json is missing"),
    ],
)
def test_a_damaged_checkpoint_is_skipped_and_the_resume_stays_exact(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, damage, name: str, says: str
) -> None:
    straight = regression_trainer(tmp_path / "straight", max_steps=6, checkpoint_every=2)
    straight.fit()
    run = tmp_path / "run"
    interrupted = regression_trainer(run, max_steps=6, checkpoint_every=2)
    interrupted.hooks.append(stop_at(5))
    with pytest.raises(KeyboardInterrupt):
        interrupted.fit()
    newest = latest_checkpoint(run)
    damage(newest / name)
    resumed = regression_trainer(run, max_steps=6, checkpoint_every=2)
    with caplog.at_level(logging.WARNING, logger="mmssl.checkpoint"):
        resumed.fit(resume=True)
    assert f"checkpoint {newest} cannot be used: {says}" in caplog.text
    assert logged_steps(run) == list(range(1, 7))
    # resumed from step 2, the run ends bit-identical to the uninterrupted one
    assert torch.equal(
        resumed.accelerator.unwrap_model(resumed.model).lin.weight,
        straight.accelerator.unwrap_model(straight.model).lin.weight,
    )


def test_every_checkpoint_damaged_is_an_error(tmp_path: Path) -> None:
    run = tmp_path / "run"
    for ckpt in _two_checkpoints(run):
        _truncate(ckpt / "model.safetensors")
    with pytest.raises(
        CheckpointError,
        match=r"in step-0000004, model.safetensors has \d+ bytes instead of \d+ "
        r"\(truncated or overwritten\); start the run again with --overwrite",
    ):
        _resume(run)


def test_pretrain_resume_onto_damaged_checkpoints_is_one_sentence(
    tiny_bert_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run = tmp_path / "run"
    shutil.copytree(tiny_bert_run, run)
    for ckpt in checkpoint_dirs(run):
        _truncate(ckpt / "model.safetensors")
    sets = [x for o in [*TINY, "train.max_steps=12", "train.checkpoint_every=6"] for x in ("--set", o)]
    assert main(["pretrain", "bert", "--output-dir", str(run), "--resume", *sets]) == 2
    err = capsys.readouterr().err
    assert "mmssl: error: no intact checkpoint in" in err and "model.safetensors has" in err
    assert "Traceback" not in err


def test_export_uses_the_newest_intact_checkpoint(
    tiny_bert_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run = tmp_path / "run"
    shutil.copytree(tiny_bert_run, run)
    shutil.rmtree(run / "export")
    _truncate(run / "checkpoints" / "step-0000012" / "model.safetensors")
    assert main(["export", str(run)]) == 0
    assert export_meta(run / "export")["step"] == 6
    assert "step-0000012 cannot be used: model.safetensors has" in capsys.readouterr().err


def test_a_checkpoint_of_an_older_mmssl_exports_but_does_not_resume(tmp_path: Path) -> None:
    """Before manifests, the COMPLETE marker held only the step and the loop state was a pickle."""
    run = tmp_path / "run"
    older, newest = _two_checkpoints(run)
    for ckpt in (older, newest):
        (ckpt / MANIFEST_FILE).unlink()
        (ckpt / "trainer_state.json").unlink()
        torch.save({"step": 2}, ckpt / "custom_checkpoint_0.pkl")
    assert latest_checkpoint(run) == newest  # readable for export: the marker still says step 4
    with pytest.raises(CheckpointError, match="in step-0000004, it was written by an older mmssl"):
        _resume(run)
