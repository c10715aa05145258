"""Loading an experiment script (``experiments/NAME.py``, not a package) as a module for its tests."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"


def load_experiment(name: str) -> Iterator[ModuleType]:
    """Yield ``experiments/{name}.py`` imported as ``experiment_{name}``; unregistered afterwards (fixture body)."""
    if str(EXPERIMENTS) not in sys.path:  # the scripts import their shared module (pretraining.py) as run from there
        sys.path.insert(0, str(EXPERIMENTS))
    spec = importlib.util.spec_from_file_location(f"experiment_{name}", EXPERIMENTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their annotations through sys.modules
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)
