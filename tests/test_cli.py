"""The command line: listings, and errors that name the key (exit code 2, no traceback)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mmssl.cli import main


def test_recipes_and_data_list(capsys) -> None:
    assert main(["recipes"]) == 0
    out = capsys.readouterr().out
    assert "\nbert " in out and "\ngpt " in out and "\nsimclr " in out
    assert main(["data", "list"]) == 0
    out = capsys.readouterr().out
    for name in ("austen", "rotten-tomatoes", "gcide", "kjv", "python-docs", "fortunes"):
        assert name in out


@pytest.mark.parametrize(
    "args, message",
    [
        (["pretrain", "bert", "--set", "train.lrr=1"], "unknown key 'train.lrr'"),
        (["pretrain", "bert", "--set", "train.batch_size=big"], "train.batch_size: expected int, got 'big'"),
        (["pretrain", "bert", "--set", "encoder"], "--set 'encoder': expected key=value"),
        (["pretrain", "nope"], "unknown recipe 'nope'"),
        (["finetune", "/nonexistent", "--task", "rotten-tomatoes"], "neither an mmssl run"),
        (["evaluate", "/nonexistent", "--task", "x", "--set", "task.nme=1"], "unknown key 'task.nme'"),
        (["data", "prepare", "imagenet"], "unknown dataset 'imagenet'"),
        (["export", "/nonexistent"], "not an mmssl run"),
    ],
)
def test_errors_name_the_problem(args: list[str], message: str, capsys) -> None:
    assert main(args) == 2
    assert message in capsys.readouterr().err


def test_console_script_is_installed(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "mmssl.cli", "pretrain", "bert", "--set", "train.lr=oops"],
                         capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 2 and "train.lr: expected float" in out.stderr and "Traceback" not in out.stderr
