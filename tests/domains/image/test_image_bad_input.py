"""Bad image input through the CLI: a sentence naming data.path, counted skips, and a word on what was converted."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmssl.cli import main
from mmssl.export import export_meta
from tests.conftest import TINY_IMAGE


def _pretrain(run_dir: Path, path: Path, *overrides: str) -> int:
    sets = [*TINY_IMAGE[1:], "data.source=imagefolder", f"data.path={path}", "train.max_steps=1", *overrides]
    return main(["pretrain", "mae", "--output-dir", str(run_dir), *[a for o in sets for a in ("--set", o)]])


def _folder(root: Path, gray: int = 0, corrupt: int = 0, odd_size: bool = False) -> Path:
    """``root/a`` and ``root/b`` with ten 28x28 RGB images in all, ``gray`` of them grayscale instead."""
    rng = np.random.default_rng(0)
    for i in range(10):
        folder = root / "ab"[i % 2]
        folder.mkdir(parents=True, exist_ok=True)
        shape = (28, 28) if i < gray else (28, 28, 3)
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(folder / f"{i}.png")
    for i in range(corrupt):
        (root / "a" / f"broken{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    if odd_size:
        Image.fromarray(np.zeros((30, 28, 3), dtype=np.uint8)).save(root / "b" / "tall.png")
    return root


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: None, "no such folder"),
        (lambda p: p.write_bytes(b"not a folder"), "is a file, not a folder"),
    ],
    ids=["missing", "a file"],
)
def test_an_imagefolder_path_that_is_not_a_folder(
    make, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "images"
    make(path)
    assert _pretrain(tmp_path / "run", path) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"mmssl: error: data.path={path}") and message in err


def test_images_of_different_sizes_suggest_the_setting(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _pretrain(tmp_path / "run", _folder(tmp_path / "images", odd_size=True)) == 2
    err = capsys.readouterr().err
    assert "is 28x28 but" in err and "tall.png is 30x28" in err and "--set data.image_size=N" in err
    assert "size=(H, W)" not in err


def test_skipped_images_are_counted_and_gray_ones_converted_with_a_word(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _pretrain(tmp_path / "run", _folder(tmp_path / "images", gray=3, corrupt=2)) == 0
    summary = json.loads((tmp_path / "run" / "data_summary.json").read_text())
    assert summary["images"] == 10 and summary["skipped_images"] == 2 and summary["image_shape"][0] == 3
    assert export_meta(tmp_path / "run" / "export")["skipped_images"] == 2
    converted = [line for line in capsys.readouterr().err.splitlines() if "grayscale" in line]
    assert converted == [
        f"{tmp_path / 'images'}: 3 of 10 images are grayscale and the others RGB: converted the "
        "grayscale ones to RGB (gray copied to all three channels); --set data.channels=1 trains "
        "on grayscale instead"
    ]
