"""Smoke test of benchmarks/text_mlm.py: it runs end to end and reports well-formed figures.

Timings are never asserted (the machine is shared and noisy); docs/benchmarks.md holds the numbers.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from bench_loader import load_benchmark


@pytest.fixture(scope="module")
def text_mlm():
    yield from load_benchmark("text_mlm")


def test_quick_run_ends_with_one_json_line(text_mlm, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    returned = text_mlm.main(["--quick", "--profile", "1", "--work-dir", str(tmp_path)])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    record = json.loads(last)
    assert record == returned
    assert record["benchmark"] == "text_mlm"
    for key in ("mmssl_tokens_per_s", "hf_tokens_per_s", "ratio"):
        assert math.isfinite(record[key]) and record[key] > 0, key
    assert record["ratio"] == pytest.approx(record["mmssl_tokens_per_s"] / record["hf_tokens_per_s"], rel=1e-2)
    assert (record["repeats"], record["steps"], record["batch_size"], record["seq_len"]) == (1, 3, 4, 32)
    assert record["model"]["hidden_size"] == 32 and record["torch_threads"] >= 1
    for side in ("mmssl", "hf"):
        assert len(record[f"{side}_runs"]) == 1
        assert record["profile_ms"][side]["sum of phases"] > 0
