"""Offline dataset builders: ``mmssl data list`` and ``mmssl data prepare NAME``.

A builder writes its output once into ``$MMSSL_CACHE/datasets/NAME`` (default
``~/.cache/mmssl``); a ``.complete`` marker makes the build idempotent and safe to
interrupt: a half-written folder is rebuilt on the next call, never read.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from mmssl.config import MmsslError
from mmssl.registry import DATASETS

COMPLETE_MARKER = ".complete"


def cache_root() -> Path:
    """Root of mmssl's cache (``$MMSSL_CACHE`` or ``~/.cache/mmssl``)."""
    return Path(os.environ.get("MMSSL_CACHE", Path.home() / ".cache" / "mmssl")).expanduser()


def dataset_dir(name: str) -> Path:
    return cache_root() / "datasets" / name


def is_prepared(name: str) -> bool:
    return (dataset_dir(name) / COMPLETE_MARKER).exists()


def prepare(name: str, force: bool = False) -> Path:
    """Build dataset ``name`` if needed and return its folder.

    Raises:
        KeyError: ``name`` is not a registered builder (the message lists the known ones).
        MmsslError: the builder failed (a missing tool or package, a changed source layout); the
            message is the builder's, and the half-built folder is rebuilt on the next call.
    """
    builder = DATASETS.get(name)
    out = dataset_dir(name)
    if is_prepared(name) and not force:
        return out
    if out.exists():
        shutil.rmtree(out)
    tmp = out.with_name(out.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        builder.run(tmp)
    except RuntimeError as e:  # builders raise RuntimeError with a sentence that says what to install or fix
        raise MmsslError(f"mmssl data prepare {name} failed: {e}") from e
    (tmp / COMPLETE_MARKER).write_text("ok\n")
    tmp.rename(out)
    return out
