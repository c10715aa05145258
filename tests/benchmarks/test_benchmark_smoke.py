"""Smoke runs of the other benchmark scripts at toy sizes: each ends with one well-formed JSON line.

Timings are never asserted (the machine is shared and noisy); docs/benchmarks.md holds the numbers.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _last_json(args: list[str], timeout: int = 600) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_image_augment_reports_both_sides_per_case() -> None:
    record = _last_json(["benchmarks/image_augment.py", "--rounds", "1", "--calls", "1"])
    assert record["benchmark"] == "image_augment" and record["device"] == "cpu"
    assert len(record["cases"]) == 2
    for case in record["cases"].values():
        assert case["mmssl_ms"] > 0 and case["torchvision_loop_ms"] > 0
        assert math.isclose(case["speedup"], case["torchvision_loop_ms"] / case["mmssl_ms"], rel_tol=0.01)


def test_audio_wav2vec2_reports_both_paths_and_their_ratio() -> None:
    record = _last_json(
        [
            "benchmarks/audio_wav2vec2.py",
            "--rounds",
            "1",
            "--steps",
            "1",
            "--set",
            "train.batch_size=1",
            "--set",
            "data.max_seconds=0.5",
            "--profile",
            "1",
        ]
    )
    assert record["benchmark"] == "audio_wav2vec2" and record["device"] == "cpu"
    assert record["mmssl_audio_s_per_s"] > 0 and record["transformers_audio_s_per_s"] > 0
    assert math.isclose(
        record["ratio"], record["mmssl_audio_s_per_s"] / record["transformers_audio_s_per_s"], rel_tol=0.01
    )


def test_graph_dgi_tiny_reports_speed_memory_and_probes() -> None:
    pytest.importorskip("torch_geometric")
    record = _last_json(
        [
            "benchmarks/graph_dgi.py",
            "--tiny",
            "--repeats",
            "1",
            "--epochs",
            "2",
            "--probe-epochs",
            "2",
            "--minibatch-steps",
            "2",
        ]
    )
    assert record["graph"] == "karate-club"
    for key in ("pyg_nodes_per_s", "mmssl_nodes_per_s", "pyg_peak_mb", "minibatch_peak_mb"):
        assert record[key] > 0
    assert 0.0 <= record["mmssl_probe_accuracy"] <= 1.0 and 0.0 <= record["pyg_probe_accuracy"] <= 1.0
