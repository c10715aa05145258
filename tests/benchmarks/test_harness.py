"""benchmarks/harness.py: interleaved rounds, clocks, medians, the contended/busy flags and the JSON line.

Plus one check over every side-by-side script: each uses the harness and re-derives none of it.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys

import pytest
import torch
from bench_loader import BENCHMARKS, load_benchmark


@pytest.fixture(scope="module")
def harness():
    yield from load_benchmark("harness")


def test_interleave_takes_every_side_once_per_round_in_turn(harness) -> None:
    calls: list[str] = []

    def side(name: str):
        def run(r: int) -> str:
            calls.append(f"{name}{r}")
            return f"{name}{r}"

        return run

    events: list[str] = []
    runs = harness.interleave(
        {"a": side("a"), "b": side("b")},
        3,
        before_round=lambda r: events.append(f"before{r}"),
        after_round=lambda r, so_far: events.append(f"after{r}:{len(so_far['b'])}"),
    )
    assert calls == ["a0", "b0", "a1", "b1", "a2", "b2"]
    assert runs == {"a": ["a0", "a1", "a2"], "b": ["b0", "b1", "b2"]}
    assert events == ["before0", "after0:1", "before1", "after1:2", "before2", "after2:3"]
    calls.clear()
    runs = harness.interleave({"a": side("a"), "b": side("b")}, 3, alternate=True)
    assert calls == ["a0", "b0", "b1", "a1", "a2", "b2"]  # neither side always goes first
    assert runs == {"a": ["a0", "a1", "a2"], "b": ["b0", "b1", "b2"]}


def test_span_gives_our_cpu_and_other_processes_per_wall_second(harness) -> None:
    first, last = harness.Stamp(10.0, 5.0, 100.0), harness.Stamp(12.0, 8.0, 106.0)
    timed = harness.span(first, last)
    assert (timed.wall, timed.cpu, timed.other) == (2.0, 1.5, 1.5)  # the machine was busy 3/s, 1.5 of it ours
    # stamps without machine time: nothing is attributed to other processes
    assert harness.span(harness.Stamp(0.0, 0.0), harness.Stamp(2.0, 3.0)).other == 0.0


def test_contended_and_busy_flags(harness) -> None:
    assert harness.contended(1.5, 2) and not harness.contended(1.6, 2)  # below 80% of the cores
    assert not harness.contended(0.1, 2, gpu=True)  # on a GPU the host thread waits: never flagged
    assert harness.busy(0.21, 2) and not harness.busy(0.2, 2)  # others used more than 10% of the cores
    assert harness.flags(1.5, 2) == "  <- contended"
    assert harness.flags(1.5, 2, other=0.5) == "  <- contended  <- busy"
    assert harness.flags(1.9, 2, other=0.5) == "  <- busy"
    assert harness.flags(1.9, 2, other=0.0) == harness.flags(0.1, 2, gpu=True) == ""


def test_warning_only_when_a_measurement_was_flagged(harness, capsys: pytest.CaptureFixture[str]) -> None:
    harness.warn_if_contended(0, 2)
    harness.warn_if_contended(0, 2, 0)
    assert capsys.readouterr().out == ""
    harness.warn_if_contended(3, 4)
    assert capsys.readouterr().out.startswith("warning: 3 measurement(s) got less than 80% of 4 cores (another process")
    harness.warn_if_contended(0, 4, 2)
    assert "during 2 other processes used more than 10%" in capsys.readouterr().out


def test_stamp_counts_child_processes_only_when_asked(harness) -> None:
    burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3:\n    pass"
    own, with_children = harness.stamp(), harness.stamp(children=True)
    subprocess.run([sys.executable, "-c", burn], check=True)  # a DataLoader worker, say, that has ended
    own_cpu = harness.stamp().cpu - own.cpu
    children_cpu = harness.stamp(children=True).cpu - with_children.cpu
    assert children_cpu - own_cpu > 0.25  # the child's 0.3 s count only with children=True


def test_stamp_reads_the_machine_busy_time_only_when_asked(harness) -> None:
    assert harness.stamp().busy == 0.0
    first = harness.stamp(machine=True)
    assert first.busy > 0.0 and harness.stamp(machine=True).busy >= first.busy


def test_medians_ratio_and_the_closing_json_line(harness, capsys: pytest.CaptureFixture[str]) -> None:
    medians = harness.medians({"ours": [3.0, 1.0, 2.0], "theirs": [4.0, 8.0, 6.0]}, float)
    assert medians == {"ours": 2.0, "theirs": 6.0}
    assert harness.ratio(medians, "ours", "theirs") == pytest.approx(1 / 3)
    record = {"benchmark": "x", "ratio": 0.333}
    print("a progress line")
    assert harness.print_record(record) is record
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == record
    assert harness.device_name("cpu") == "cpu"


def test_a_side_that_changes_torch_threads_fails_the_run(harness) -> None:
    threads = torch.get_num_threads()
    harness.check_threads("mmssl", threads)
    torch.set_num_threads(threads + 1)
    try:
        with pytest.raises(RuntimeError, match=f"the hf side changed torch threads from {threads} to {threads + 1}"):
            harness.check_threads("hf", threads)
    finally:
        torch.set_num_threads(threads)


# what the harness owns: a script that defines one of these re-derives it
HARNESS_NAMES = {
    "CONTENDED",
    "BUSY",
    "Stamp",
    "Span",
    "cpu_seconds",
    "machine_busy_seconds",
    "span",
    "interleave",
    "medians",
    "contended",
    "busy",
    "device_name",
}


@pytest.mark.parametrize("script", sorted(p.name for p in BENCHMARKS.glob("*.py") if p.name != "harness.py"))
def test_every_side_by_side_script_uses_the_harness(script: str) -> None:
    tree = ast.parse((BENCHMARKS / script).read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    assert "harness" in imported, f"{script} does not import benchmarks/harness.py"
    defined = {node.name for node in tree.body if isinstance(node, (ast.FunctionDef, ast.ClassDef))}
    defined |= {
        t.id for node in tree.body if isinstance(node, ast.Assign) for t in node.targets if isinstance(t, ast.Name)
    }
    assert not defined & HARNESS_NAMES, f"{script} re-defines {sorted(defined & HARNESS_NAMES)}"
