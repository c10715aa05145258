"""What the experiment scripts share: ``mmssl pretrain`` run in its own process, timed.

The scripts are run from the repository root (``python experiments/NAME.py``), so this module is found next to
them; ``tests/experiments/experiment_loader.py`` puts the folder on ``sys.path`` the same way.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from mmssl.metrics import read_metrics


def pretrain(recipe: str, out: Path, overrides: list[str]) -> dict[str, Any]:
    """Run ``mmssl pretrain RECIPE --output-dir OUT --set ...`` in a fresh process; its wall time, the last
    logged step and the last logged loss."""
    cmd = [sys.executable, "-m", "mmssl.cli", "pretrain", recipe, "--output-dir", str(out)]
    for o in overrides:
        cmd += ["--set", o]
    start = time.perf_counter()
    subprocess.run(cmd, check=True)
    wall = time.perf_counter() - start
    rows = [r for r in read_metrics(out) if "loss" in r and "step" in r and "event" not in r]
    return {"wall_s": round(wall, 1), "steps": rows[-1]["step"], "final_loss": rows[-1]["loss"]}
