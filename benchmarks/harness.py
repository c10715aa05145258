"""What every side-by-side benchmark in this folder shares: rounds, clocks, medians, flags, the JSON line.

A side-by-side benchmark measures mmssl (one side) against a reference implementation (the other
side) in one run, on one machine:

* the sides take turns for several rounds (A, B, A, B, ...; or A, B, B, A, ... so that neither
  always goes first), so that a slow minute on a shared machine hits both: :func:`interleave`;
* a measurement is what happened between two :class:`Stamp` s of the clocks (wall time, our CPU
  time and, where asked, the machine's busy CPU time): :func:`stamp`, :func:`span`;
* a measurement whose process got less than :data:`CONTENDED` of the cores it could use in CPU time
  is flagged ``contended``: another process took the cores (it still counts; rerun on a quiet
  machine). Where the stamps carry the machine's busy time, one during which other processes used
  more than :data:`BUSY` of the cores is flagged ``busy``: :func:`contended`, :func:`busy`, :func:`flags`;
* the result is the median of each side and the ratio of the medians: :func:`medians`, :func:`ratio`;
* the output ends with one JSON line for scripts: :func:`print_record`.

The scripts import this module as ``harness``: run as ``python benchmarks/NAME.py``, their folder
is first on ``sys.path``. It imports torch and psutil only where a function needs them.
"""

from __future__ import annotations

import functools
import json
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")

# A measurement whose process got less than this share of the cores it could use (its torch threads,
# or the machine's cores) in CPU time was slowed down by another process: it is flagged `contended`.
CONTENDED = 0.8
# ... and one during which other processes used more than this share of the cores is flagged `busy`.
BUSY = 0.1


# ---------------------------------------------------------------------------------------- clocks
@dataclass(frozen=True)
class Stamp:
    """The clocks at one instant, in seconds."""

    wall: float  # time.perf_counter()
    cpu: float  # CPU time of this process (with its child processes where stamped with children=True)
    busy: float = 0.0  # machine-wide busy CPU time (0.0 unless stamped with machine=True)


@dataclass(frozen=True)
class Span:
    """What happened between two stamps."""

    wall: float  # seconds
    cpu: float  # our CPU seconds per wall second
    other: float  # other processes' CPU seconds per wall second (0.0 unless both stamps carry machine time)


def synchronize(device: Any = None) -> None:
    """Wait until the kernels queued on ``device`` have finished (a CUDA device; anything else runs synchronously)."""
    if device is None:
        return
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


@functools.cache
def _this_process() -> Any:
    import psutil

    return psutil.Process()


def cpu_seconds(children: bool = False) -> float:
    """CPU seconds of this process, or with ``children``, of it and its child processes (DataLoader
    workers), live (``children()``) or ended and waited for (``children_*``)."""
    if not children:
        return time.process_time()
    import psutil

    proc = _this_process()
    t = proc.cpu_times()
    total = t.user + t.system + t.children_user + t.children_system
    for child in proc.children(recursive=True):
        try:
            total += sum(child.cpu_times()[:2])
        except psutil.NoSuchProcess:
            pass
    return total


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy (every process, every core) since it booted."""
    import psutil

    t = psutil.cpu_times()
    return t.user + t.nice + t.system + t.irq + t.softirq + t.steal


def stamp(device: Any = None, *, children: bool = False, machine: bool = False) -> Stamp:
    """The clocks now; on a CUDA ``device``, once its queued kernels have finished.

    Args:
        device: the device the measured side runs on (``None`` or a CPU device: no wait).
        children: count the CPU time of child processes (DataLoader workers) as ours.
        machine: also read the machine's busy CPU time, so that :func:`span` can tell what other
            processes used.
    """
    synchronize(device)
    busy = machine_busy_seconds() if machine else 0.0
    return Stamp(time.perf_counter(), cpu_seconds(children), busy)


def span(first: Stamp, last: Stamp) -> Span:
    """Wall seconds between two stamps, our CPU per wall second, and what other processes used meanwhile."""
    wall = last.wall - first.wall
    cpu = (last.cpu - first.cpu) / wall
    return Span(wall, cpu, max((last.busy - first.busy) / wall - cpu, 0.0))


# ---------------------------------------------------------------------------------------- rounds
def interleave(
    sides: Mapping[str, Callable[[int], T]],
    rounds: int,
    *,
    alternate: bool = False,
    before_round: Callable[[int], None] | None = None,
    after_round: Callable[[int, Mapping[str, list[T]]], None] | None = None,
) -> dict[str, list[T]]:
    """Take one measurement of every side per round, the sides in turn, for ``rounds`` rounds.

    Args:
        sides: side name -> a function of the round index (0-based) that takes one measurement.
        rounds: number of rounds.
        alternate: run the sides in reverse order in odd rounds (A, B, B, A, ...), so that neither
            always goes first; otherwise always in the order of ``sides`` (A, B, A, B, ...).
        before_round: called with the round index before its first measurement.
        after_round: called with the round index and every side's measurements so far after its last.

    Returns:
        side name -> its measurements, in the order taken.
    """
    runs: dict[str, list[T]] = {side: [] for side in sides}
    order = list(sides)
    for r in range(rounds):
        if before_round is not None:
            before_round(r)
        for side in order[::-1] if alternate and r % 2 else order:
            runs[side].append(sides[side](r))
        if after_round is not None:
            after_round(r, runs)
    return runs


def medians(runs: Mapping[str, Sequence[T]], value: Callable[[T], float]) -> dict[str, float]:
    """side name -> the median of ``value`` over its measurements."""
    return {side: statistics.median(value(m) for m in ms) for side, ms in runs.items()}


def ratio(medians: Mapping[str, float], side: str, reference: str) -> float:
    """The ratio of two sides' medians, ``side / reference``."""
    return medians[side] / medians[reference]


def check_threads(side: str, threads: int) -> None:
    """Fail if running ``side`` changed torch's thread count: both sides must run on the same ``threads``."""
    import torch

    if torch.get_num_threads() != threads:
        raise RuntimeError(f"the {side} side changed torch threads from {threads} to {torch.get_num_threads()}")


# ---------------------------------------------------------------------------------------- flags
def contended(cpu: float, cores: float, gpu: bool = False) -> bool:
    """Whether a measurement that used ``cpu`` CPU seconds per wall second got less than :data:`CONTENDED`
    of the ``cores`` it could use. Never on a GPU: the host thread mostly waits for kernels there, so its
    CPU share says nothing about contention."""
    return not gpu and cpu < CONTENDED * cores


def busy(other: float, cores: float) -> bool:
    """Whether other processes used more than :data:`BUSY` of the machine's ``cores`` during a measurement."""
    return other > BUSY * cores


def flags(cpu: float, cores: float, other: float | None = None, gpu: bool = False) -> str:
    """The marks printed after a measurement: ``  <- contended``, ``  <- busy`` (where ``other`` is known),
    both or none."""
    marks = ""
    if contended(cpu, cores, gpu):
        marks += "  <- contended"
    if other is not None and busy(other, cores):
        marks += "  <- busy"
    return marks


def warn_if_contended(n_contended: int, cores: int, n_busy: int | None = None) -> None:
    """Print a warning when any measurement was flagged: ``n_contended`` / ``n_busy`` count them
    (``n_busy`` is ``None`` where the benchmark does not read the machine's busy time)."""
    if not n_contended and not n_busy:
        return
    text = f"warning: {n_contended} measurement(s) got less than {CONTENDED:.0%} of {cores} cores"
    if n_busy is None:
        text += " (another process was busy)"
    else:
        text += f", during {n_busy} other processes used more than {BUSY:.0%}"
    print(text + "; the medians may be off, rerun on a quiet machine", flush=True)


# ---------------------------------------------------------------------------------------- output
def device_name(device: Any) -> str:
    """The GPU's name for a CUDA ``device``, else ``"cpu"`` (the ``device`` field of the JSON line)."""
    import torch

    device = torch.device(device)
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def print_record(record: dict[str, Any]) -> dict[str, Any]:
    """Print ``record`` as the one JSON line that ends a benchmark's output, for scripts; returns it."""
    print(json.dumps(record), flush=True)
    return record
