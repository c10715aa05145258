"""Loading a benchmark script (``benchmarks/NAME.py``, not a package) as a module for its smoke tests."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def load_benchmark(name: str) -> Iterator[ModuleType]:
    """Yield ``benchmarks/{name}.py`` imported as ``bench_{name}``; unregistered afterwards (fixture body).

    It is imported as ``python benchmarks/NAME.py`` runs it: with ``benchmarks/`` first on ``sys.path``,
    so that its ``import harness`` finds ``benchmarks/harness.py``.
    """
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their annotations through sys.modules
    sys.path.insert(0, str(BENCHMARKS))
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(str(BENCHMARKS))
        sys.modules.pop(spec.name, None)
        harness = sys.modules.get("harness")
        if harness is not None and Path(harness.__file__).parent == BENCHMARKS:
            del sys.modules["harness"]  # the next script imports it afresh, as a run would
