"""The run directory: refused when it holds a run, replaced only with --overwrite (and then only the run's own
files), a resume without a checkpoint that starts over cleanly, TensorBoard without duplicate steps, and
writes that an interruption cannot leave half done."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from mmssl.checkpoint import COMPLETE_MARKER, METRICS_FILE, checkpoint_dirs, latest_checkpoint
from mmssl.cli import main
from mmssl.metrics import append_metrics, read_metrics, truncate_after
from mmssl.pretrain import pretrain
from mmssl.trainer import Trainer
from tests.conftest import TINY
from tests.mmssl.loop_fixtures import logged_steps, losses, regression_trainer, stop_at, tensorboard_scalars

SHORT = [*TINY, "train.max_steps=3", "train.checkpoint_every=100"]  # one checkpoint, at the end


# ---------------------------------------------------------------------------- refusing and overwriting
@pytest.mark.parametrize("held", ["config.yaml", "metrics.jsonl", "checkpoints"])
def test_a_directory_holding_a_run_is_refused(tmp_path: Path, held: str) -> None:
    (tmp_path / held).mkdir() if held == "checkpoints" else (tmp_path / held).write_text("earlier run\n")
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(
        FileExistsError,
        match=rf"{tmp_path} already holds a run \({held}\): pass --resume "
        r"to continue it, --overwrite to replace it",
    ):
        pretrain("bert", SHORT, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written


def test_the_refusal_reaches_the_command_line_as_one_sentence(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "config.yaml").write_text("earlier run\n")
    assert main(["pretrain", "bert", "--output-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"mmssl: error: {tmp_path} already holds a run (config.yaml)") and "--overwrite" in err


def test_a_directory_without_a_run_is_used_as_it_is(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine\n")
    run = pretrain("bert", [*TINY, "train.max_steps=1"], tmp_path)
    assert (run / "notes.txt").read_text() == "mine\n" and logged_steps(run) == [1]


def _earlier_run(run: Path) -> None:
    """What a pretraining run leaves in its directory (contents made up: only the names matter)."""
    (run / "checkpoints" / "step-0000009").mkdir(parents=True)
    (run / "checkpoints" / "step-0000009" / COMPLETE_MARKER).write_text("9\n")
    for name in ("export", "tensorboard", "tokenizer", "processor"):
        (run / name).mkdir()
        (run / name / "earlier.json").write_text("{}\n")
    (run / "config.yaml").write_text("name: earlier\n")
    (run / "data_summary.json").write_text("{}\n")
    (run / "kmeans_centroids.npy").write_bytes(b"\x93NUMPY")
    for step in range(1, 10):
        append_metrics(run, {"step": step, "loss": 1.0})


def test_overwrite_replaces_the_earlier_run_and_nothing_else(tmp_path: Path) -> None:
    _earlier_run(tmp_path)
    (tmp_path / "notes.txt").write_text("mine\n")  # a user's own files in the same folder
    (tmp_path / "my_data").mkdir()
    (tmp_path / "my_data" / "texts.csv").write_text("text\nhello\n")
    run = pretrain("bert", [*TINY, "train.max_steps=2"], tmp_path, overwrite=True)
    assert (run / "notes.txt").read_text() == "mine\n"
    assert (run / "my_data" / "texts.csv").read_text() == "text\nhello\n"
    assert logged_steps(run) == [1, 2]  # the earlier run's rows are gone
    assert [d.name for d in checkpoint_dirs(run)] == ["step-0000002"]
    assert not list(run.glob("*/earlier.json")) and not (run / "kmeans_centroids.npy").exists()
    assert json.loads((run / "export" / "mmssl.json").read_text())["step"] == 2
    assert sorted(p.name for p in run.iterdir()) == [
        "checkpoints",
        "config.yaml",
        "data_summary.json",
        "export",
        "metrics.jsonl",
        "my_data",
        "notes.txt",
        "tensorboard",
        "tokenizer",
    ]


def test_resume_and_overwrite_together_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="pass one of them"):
        pretrain("bert", SHORT, tmp_path, resume=True, overwrite=True)


def test_an_output_dir_that_is_a_file_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "out").write_text("a file\n")
    with pytest.raises(NotADirectoryError, match=f"--output-dir {tmp_path / 'out'} is a file"):
        pretrain("bert", SHORT, tmp_path / "out")


# ---------------------------------------------------------------------------- resuming
def test_resume_without_a_complete_checkpoint_starts_over_cleanly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """A run killed before its first checkpoint: --resume says so, starts at step 0 and logs each step once."""
    original = Trainer._run_hooks

    def interrupt(self: Trainer) -> dict:
        if self.state.step == 3:
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(Trainer, "_run_hooks", interrupt)
    with pytest.raises(KeyboardInterrupt):
        pretrain("bert", SHORT, tmp_path)
    monkeypatch.setattr(Trainer, "_run_hooks", original)
    assert logged_steps(tmp_path) == [1, 2] and latest_checkpoint(tmp_path) is None
    capsys.readouterr()
    pretrain("bert", SHORT, tmp_path, resume=True)
    assert f"no complete checkpoint in {tmp_path}: starting from step 0" in capsys.readouterr().out
    assert logged_steps(tmp_path) == [1, 2, 3]  # not 1, 2, 1, 2, 3
    assert [step for step, _ in tensorboard_scalars(tmp_path)] == [1, 2, 3]


def test_tensorboard_shows_each_step_once_after_a_resume(tmp_path: Path) -> None:
    interrupted = regression_trainer(tmp_path, max_steps=10, checkpoint_every=4)
    interrupted.hooks.append(stop_at(6))  # logged through step 5, checkpoint at 4
    with pytest.raises(KeyboardInterrupt):
        interrupted.fit()
    assert [step for step, _ in tensorboard_scalars(tmp_path)] == [1, 2, 3, 4, 5]
    regression_trainer(tmp_path, max_steps=10, checkpoint_every=4).fit(resume=True)
    points = tensorboard_scalars(tmp_path)
    assert [step for step, _ in points] == list(range(1, 11))
    assert dict(points) == pytest.approx(losses(tmp_path), rel=1e-6)  # the re-run points replaced the old ones


# ---------------------------------------------------------------------------- crash-safe writes
def test_a_rotation_cut_short_never_leaves_a_complete_looking_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed while deleting the oldest checkpoint: its remains are never listed, resumed or exported."""
    rmtree = shutil.rmtree

    def killed_midway(path, *args, **kwargs) -> None:
        (Path(path) / "model.safetensors").unlink()  # some files are gone...
        raise KeyboardInterrupt  # ...when the process dies

    monkeypatch.setattr(shutil, "rmtree", killed_midway)
    with pytest.raises(KeyboardInterrupt):
        regression_trainer(tmp_path, max_steps=6, checkpoint_every=2, keep_checkpoints=1).fit()
    monkeypatch.setattr(shutil, "rmtree", rmtree)
    assert [d.name for d in checkpoint_dirs(tmp_path)] == ["step-0000004"]  # step-0000002 is half deleted
    (tmp_path / "checkpoints" / "step-0000004" / COMPLETE_MARKER).unlink()  # say step 4 was cut short too
    assert latest_checkpoint(tmp_path) is None  # never the half-deleted step 2
    (tmp_path / "checkpoints" / "step-0000004" / COMPLETE_MARKER).write_text("4\n")
    regression_trainer(tmp_path, max_steps=6, checkpoint_every=2, keep_checkpoints=1).fit(resume=True)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-0000006"]  # leftovers cleared


def test_truncating_the_metrics_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for step in range(1, 6):
        append_metrics(tmp_path, {"step": step, "loss": float(step)})
    append_metrics(tmp_path, {"event": "finetune", "accuracy": 0.5})
    before = (tmp_path / METRICS_FILE).read_text()

    def killed(*args, **kwargs) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        truncate_after(tmp_path, 3)
    assert (tmp_path / METRICS_FILE).read_text() == before  # whole, not half written
    monkeypatch.undo()
    truncate_after(tmp_path, 3)
    assert [r.get("step", r.get("event")) for r in read_metrics(tmp_path)] == [1, 2, 3, "finetune"]


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="reads file names of descriptors from /proc")
def test_checkpoint_files_marker_and_folder_reach_the_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[str] = []
    fsync = os.fsync

    def recording(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        fsync(fd)

    monkeypatch.setattr(os, "fsync", recording)
    regression_trainer(tmp_path, max_steps=2, checkpoint_every=2).fit()
    ckpt = str((tmp_path / "checkpoints" / "step-0000002").resolve())
    names = {Path(p).name for p in synced if p.startswith(ckpt + "/")}
    assert {"model.safetensors", "optimizer.bin", "scheduler.bin", "random_states_0.pkl"} <= names
    assert f".{COMPLETE_MARKER}.tmp" in names  # the marker's content, before it is renamed into place
    last = {p: i for i, p in enumerate(synced)}  # the folder is synced after the marker lands in it
    assert last[ckpt] > max(i for i, p in enumerate(synced) if p.endswith(f".{COMPLETE_MARKER}.tmp"))
    assert torch.load(Path(ckpt) / "optimizer.bin", weights_only=True)  # what was synced is a whole checkpoint
