"""The same code under `torchrun --nproc_per_node 2` on CPU (gloo)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mmssl.trainer import checkpoint_dirs
from tests.conftest import TINY


def _torchrun(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "MMSSL_CACHE": str(tmp_path / "cache")}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "mmssl.cli",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=Path(__file__).parents[1])


def test_two_process_pretrain_checkpoint_and_resume(tmp_path: Path) -> None:
    run = tmp_path / "run"
    sets = [x for o in [*TINY, "train.max_steps=6", "train.checkpoint_every=3"] for x in ("--set", o)]
    first = _torchrun(["pretrain", "bert", "--output-dir", str(run), *sets], tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == list(range(1, 7))  # written once (main process), not twice
    assert [d.name for d in checkpoint_dirs(run)] == ["step-0000003", "step-0000006"]
    assert (run / "checkpoints" / "step-0000006" / "random_states_1.pkl").is_file()  # both ranks' RNG saved
    summary = json.loads((run / "data_summary.json").read_text())
    # samples/s counts both processes: 2 x batch 8 per step
    assert lines[-1]["samples_per_s"] > 0 and summary["blocks"] > 16

    sets_longer = [x for o in [*TINY, "train.max_steps=8", "train.checkpoint_every=3"] for x in ("--set", o)]
    second = _torchrun(["pretrain", "bert", "--output-dir", str(run), "--resume", *sets_longer], tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == list(range(1, 9))
    assert json.loads((run / "export" / "mmssl.json").read_text())["step"] == 8


def _worker(nproc: int, out: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        str(nproc),
        "-m",
        "tests.distributed_worker",
        str(out),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=Path(__file__).parents[1])
    assert done.returncode == 0, done.stderr[-3000:]


def test_two_processes_equal_one_process_with_the_same_global_batch(tmp_path: Path) -> None:
    """MLM, NT-Xent with negatives gathered across processes, and data2vec: the gradients after one
    step match to 1e-5, masked losses are normalised by the global masked count (the ranks mask
    different numbers of units), and the EMA teacher is identical on every process after 3 steps
    and equal to the one-process teacher."""
    import torch

    _worker(1, tmp_path / "one.pt")
    _worker(2, tmp_path / "two.pt")
    one, two = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")
    assert (one["world"], two["world"]) == (1, 2)
    for case in ("mlm", "simclr", "data2vec"):
        a, b = one[case], two[case]
        assert a["grads"].keys() == b["grads"].keys() and a["grads"], case
        for name in a["grads"]:
            torch.testing.assert_close(b["grads"][name], a["grads"][name], rtol=1e-5, atol=1e-5, msg=f"{case} {name}")
        assert b["loss_sum"] / 2 == pytest.approx(a["loss_sum"], rel=1e-5), case
    for case in ("mlm", "data2vec"):  # masked losses: the two processes masked different numbers of units
        counts = two[case]["masked_per_process"].tolist()
        assert counts[0] != counts[1] and sum(counts) == one[case]["masked_per_process"].item()
    teachers = two["data2vec"]["teachers"]
    assert torch.equal(teachers[0], teachers[1])  # identical on every process
    torch.testing.assert_close(teachers[0], one["data2vec"]["teachers"][0], rtol=1e-5, atol=1e-6)
