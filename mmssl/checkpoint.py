"""The layout of a run directory, and its checkpoints: ``checkpoints/step-N/`` folders that are complete,
verified and never unpickled.

A run directory holds ``config.yaml`` (the fully resolved recipe), ``metrics.jsonl``, ``data_summary.json``,
``checkpoints/``, ``tensorboard/`` and ``export/`` (:data:`RUN_OUTPUTS`), and the domain's processor.

A checkpoint folder holds, in the order they are written:

* what ``Accelerator.save_state`` writes: ``model.safetensors``, ``optimizer.bin``, ``scheduler.bin`` and
  ``random_states_<rank>.pkl`` (Accelerate reads these back with torch's restricted ``weights_only``
  unpickler, which rebuilds tensors and numbers and refuses anything else);
* the trainer's own state, ``trainer_state.json`` and ``trainer_state.safetensors``: the loop counters
  and every object registered with ``Trainer.register_state`` (tensors and JSON scalars only);
* ``manifest.json``: the size and SHA-256 of every file above (SHA-256 runs at about 1 GB/s here, a
  second per gigabyte of checkpoint);
* last, the ``COMPLETE`` marker, whose text is the step.

Crash safety: the files, the marker and the folder are fsynced before the checkpoint counts as complete,
and a checkpoint is removed by first renaming it to ``step-N.deleting``, so a removal cut short never
leaves a folder that looks complete. On resume and export, :func:`latest_checkpoint` checks the newest
checkpoint against its manifest and falls back to the newest intact one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any, Protocol

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list
from accelerate.utils.other import TORCH_SAFE_GLOBALS
from safetensors.torch import load_file, save_file

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------- the run directory
CONFIG_FILE = "config.yaml"  # the fully resolved recipe
METRICS_FILE = "metrics.jsonl"  # one JSON object per logged step, and one per evaluation or fine-tune
SUMMARY_FILE = "data_summary.json"  # the pretraining data's facts (PretrainData.summary)
CHECKPOINT_DIR = "checkpoints"
TRACKER_DIR = "tensorboard"  # TensorBoard event files
EXPORT_DIR = "export"  # the encoder in its library's format (mmssl.export)
# A directory holding any of these holds a run: pretrain refuses it without --resume or --overwrite.
RUN_MARKERS = (CONFIG_FILE, METRICS_FILE, CHECKPOINT_DIR)
# Everything a pretraining run writes into its directory, and all that --overwrite removes: the
# domains add their tokenizer (text) or processor (image, audio, graph, speech-text) and the
# audio k-means centroids of HuBERT targets.
RUN_OUTPUTS = (
    *RUN_MARKERS,
    SUMMARY_FILE,
    EXPORT_DIR,
    TRACKER_DIR,
    "tokenizer",
    "processor",
    "kmeans_centroids.npy",
    "report",  # mmssl report RUN
)

# ---------------------------------------------------------------------------- a checkpoint folder
COMPLETE_MARKER = "COMPLETE"
MANIFEST_FILE = "manifest.json"
STATE_JSON = "trainer_state.json"
STATE_TENSORS = "trainer_state.safetensors"
DELETING_SUFFIX = ".deleting"
_NAME = re.compile(r"step-(\d+)")
_PICKLE_SUFFIXES = {".bin", ".pkl", ".pt"}  # torch.save files that Accelerate's load_state may read
_WEIGHT_SUFFIXES = _PICKLE_SUFFIXES | {".safetensors"}


class CheckpointError(ValueError):
    """No checkpoint of a run can be loaded safely (each one is damaged, altered or of an older format)."""


class Stateful(Protocol):
    """What ``Trainer.register_state`` accepts: values are tensors or JSON scalars (int, float, str, bool, None)."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


# ---------------------------------------------------------------------------- listing
def checkpoint_path(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR / f"step-{step:07d}"


def checkpoint_dirs(run_dir: Path, verify: bool = False) -> list[Path]:
    """Complete checkpoints of a run (``step-N`` folders holding a ``COMPLETE`` marker), oldest first.

    With ``verify=True`` only those whose files match their manifest (see :func:`checkpoint_problem`).
    Folders being removed (``step-N.deleting``) are never listed.
    """
    root = Path(run_dir) / CHECKPOINT_DIR
    found = [
        (int(m.group(1)), d)
        for d in (root.iterdir() if root.is_dir() else ())
        if (m := _NAME.fullmatch(d.name)) and (d / COMPLETE_MARKER).is_file()
    ]
    dirs = [d for _, d in sorted(found)]
    return [d for d in dirs if checkpoint_problem(d) is None] if verify else dirs


def latest_checkpoint(run_dir: Path, verify: bool = True, resumable: bool = False) -> Path | None:
    """The newest intact checkpoint of a run, or None when the run has no complete checkpoint.

    Each newer checkpoint that fails verification is named in a warning and skipped.

    Args:
        run_dir: the run directory.
        verify: check each candidate against its manifest (:func:`checkpoint_problem`).
        resumable: also require the trainer state that ``--resume`` loads.

    Raises:
        CheckpointError: the run has complete checkpoints, but none of them is intact.
    """
    dirs = checkpoint_dirs(run_dir)
    first_problem = None
    for ckpt in reversed(dirs):
        problem = checkpoint_problem(ckpt, resumable) if verify else None
        if problem is None:
            return ckpt
        log.warning("checkpoint %s cannot be used: %s; trying the one before it", ckpt, problem)
        first_problem = first_problem or f"in {ckpt.name}, {problem}"
    if first_problem:
        raise CheckpointError(
            f"no intact checkpoint in {Path(run_dir) / CHECKPOINT_DIR}: {first_problem}; "
            "start the run again with --overwrite or in another --output-dir"
        )
    return None


def choose_checkpoint(accelerator: Accelerator, run_dir: Path) -> Path | None:
    """The checkpoint ``--resume`` loads: the main process verifies, every process gets its choice.

    Raises:
        CheckpointError: on every process, when no complete checkpoint is intact.
    """
    if getattr(accelerator, "_custom_objects", None):
        raise RuntimeError(
            "objects registered with accelerator.register_for_checkpointing are unpickled on "
            "resume; register them with Trainer.register_state instead"
        )
    choice: list[str | None] = [None, None]  # [checkpoint path, error]
    if accelerator.is_main_process:
        try:
            ckpt = latest_checkpoint(run_dir, verify=True, resumable=True)
            choice[0] = None if ckpt is None else str(ckpt)
        except CheckpointError as e:
            choice[1] = str(e)
    if accelerator.num_processes > 1:
        broadcast_object_list(choice)
    if choice[1] is not None:
        raise CheckpointError(choice[1])
    return None if choice[0] is None else Path(choice[0])


# ---------------------------------------------------------------------------- verification
def checkpoint_problem(ckpt: Path, resumable: bool = False) -> str | None:
    """What makes a complete checkpoint unusable, in words, or None when it is intact.

    A checkpoint is intact when every file of its manifest is there with the recorded size and
    SHA-256, no weight or pickle file was added, and every pickled file holds only what torch's
    ``weights_only`` loader rebuilds (tensors, numbers, numpy RNG state). A checkpoint written before
    manifests existed cannot be checked: it is accepted, unless ``resumable`` asks for the trainer state.
    """
    ckpt = Path(ckpt)
    try:
        manifest = json.loads((ckpt / MANIFEST_FILE).read_text())["files"]
    except FileNotFoundError:
        if resumable:
            return (
                "it was written by an older mmssl, which kept the loop state in a pickle (custom_checkpoint_0.pkl) "
                "that is no longer loaded, since unpickling a file can run code (mmssl export still exports it)"
            )
        return None
    except (ValueError, KeyError, TypeError):
        return f"{MANIFEST_FILE} is unreadable"
    for name, expected in manifest.items():
        problem = _file_problem(ckpt / name, expected)
        if problem:
            return problem
    for path in sorted(ckpt.iterdir()):
        if path.suffix in _WEIGHT_SUFFIXES and path.name not in manifest:
            return f"{path.name} was not written with the checkpoint"
        if path.suffix in _PICKLE_SUFFIXES and (unsafe := _unsafe_pickle(path)):
            return f"{path.name} {unsafe}"
    return None


def _file_problem(path: Path, expected: dict[str, Any]) -> str | None:
    if not path.is_file():
        return f"{path.name} is missing"
    size = path.stat().st_size
    if size != expected["size"]:
        return f"{path.name} has {size} bytes instead of {expected['size']} (truncated or overwritten)"
    if file_digest(path)["sha256"] != expected["sha256"]:
        return f"{path.name} does not match its SHA-256 checksum (altered since it was saved)"
    return None


def _unsafe_pickle(path: Path) -> str | None:
    """Why torch's ``weights_only`` loader would refuse a pickled file (read statically, nothing runs), or None."""
    try:
        with torch.serialization.safe_globals(TORCH_SAFE_GLOBALS):  # Accelerate's own allow-list (numpy RNG state)
            unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except (ValueError, RuntimeError, OSError, KeyError):
        return "is not a file written by torch.save"
    return f"refers to code ({', '.join(sorted(unsafe))}), which a checkpoint never holds" if unsafe else None


def file_digest(path: Path) -> dict[str, Any]:
    """``{"size": bytes, "sha256": hex}`` of a file."""
    with open(path, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    return {"size": Path(path).stat().st_size, "sha256": digest}


# ---------------------------------------------------------------------------- trainer state
def save_trainer_state(ckpt: Path, states: dict[str, Stateful]) -> None:
    """Write every registered object's ``state_dict()``: scalars to ``trainer_state.json``, tensors to safetensors."""
    scalars: dict[str, dict[str, Any]] = {}
    tensors: dict[str, torch.Tensor] = {}
    for name, obj in states.items():
        scalars[name] = {}
        for key, value in obj.state_dict().items():
            if isinstance(value, torch.Tensor):
                tensors[f"{name}/{key}"] = value.detach().cpu().clone().contiguous()
            elif value is None or isinstance(value, (bool, int, float, str)):
                scalars[name][key] = value
            else:
                raise TypeError(
                    f"state {name!r}: {key!r} is a {type(value).__name__}; "
                    "checkpointed state holds tensors and JSON scalars only"
                )
    write_atomically(Path(ckpt) / STATE_JSON, json.dumps(scalars, indent=1) + "\n")
    if tensors:
        save_file(tensors, str(Path(ckpt) / STATE_TENSORS))


def load_trainer_state(ckpt: Path, states: dict[str, Stateful]) -> None:
    """Load what :func:`save_trainer_state` wrote into the same registered objects (JSON and safetensors only)."""
    scalars = json.loads((Path(ckpt) / STATE_JSON).read_text())
    tensors = load_file(str(Path(ckpt) / STATE_TENSORS)) if (Path(ckpt) / STATE_TENSORS).is_file() else {}
    for name, obj in states.items():
        if name not in scalars:
            raise CheckpointError(
                f"{ckpt} has no saved state for {name!r}: it was written by a run set up "
                "differently; start a new --output-dir instead"
            )
        prefix = f"{name}/"
        own = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        obj.load_state_dict({**scalars[name], **own})


# ---------------------------------------------------------------------------- writing and removing
def finish_checkpoint(ckpt: Path, step: int) -> None:
    """Make a saved checkpoint durable and complete: fsync its files, write the manifest, then the marker."""
    ckpt = Path(ckpt)
    files = sorted(p for p in ckpt.iterdir() if p.is_file() and p.name not in (MANIFEST_FILE, COMPLETE_MARKER))
    for path in files:
        _fsync(path)
    manifest = {"step": step, "files": {p.name: file_digest(p) for p in files}}
    write_atomically(ckpt / MANIFEST_FILE, json.dumps(manifest, indent=1) + "\n")
    write_atomically(ckpt / COMPLETE_MARKER, f"{step}\n")
    _fsync(ckpt.parent)  # the step-N entry itself


def prepare_checkpoint_dir(ckpt: Path) -> None:
    """Clear the way for a new checkpoint: a folder of the same step (a save cut short, or a damaged
    checkpoint the run fell back from) and leftovers of removals cut short are deleted."""
    ckpt = Path(ckpt)
    if ckpt.exists():
        remove_checkpoint(ckpt)
    for leftover in ckpt.parent.glob(f"step-*{DELETING_SUFFIX}"):
        shutil.rmtree(leftover, ignore_errors=True)


def remove_checkpoint(ckpt: Path) -> None:
    """Delete a checkpoint so that no interruption leaves it looking complete: rename, then delete."""
    doomed = Path(ckpt).with_name(Path(ckpt).name + DELETING_SUFFIX)
    if doomed.exists():
        shutil.rmtree(doomed, ignore_errors=True)
    os.replace(ckpt, doomed)
    _fsync(doomed.parent)
    shutil.rmtree(doomed, ignore_errors=True)


def rotate_checkpoints(run_dir: Path, keep: int) -> None:
    """Keep the last ``keep`` complete checkpoints (``train.keep_checkpoints``)."""
    for old in checkpoint_dirs(run_dir)[:-keep]:
        remove_checkpoint(old)


def write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` by ``text`` so that a crash leaves either the old or the new content, durably."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync(path.parent)


def _fsync(path: Path) -> None:
    """Flush a file's or a folder's content (for a folder: its entries) to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
