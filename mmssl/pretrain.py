"""``mmssl pretrain``: recipe -> data -> encoder + objective -> Trainer -> checkpoints -> export."""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState
from accelerate.utils import set_seed
from torch.utils.data import DataLoader

from mmssl.checkpoint import CONFIG_FILE, EXPORT_DIR, RUN_MARKERS, RUN_OUTPUTS, SUMMARY_FILE
from mmssl.config import ConfigError, read_yaml, to_dict, write_yaml
from mmssl.domain import PretrainData
from mmssl.export import write_export
from mmssl.model import build_model
from mmssl.objectives.base import SSLModel
from mmssl.probes import KNNMonitor
from mmssl.recipe import Recipe, load_recipe
from mmssl.registry import DOMAINS
from mmssl.tasks import TaskConfig
from mmssl.trainer import Trainer, use_cpu

log = logging.getLogger(__name__)

# Settings a resumed run may change: they alter neither the model nor the batches it sees.
RESUMABLE_CHANGES = {
    "train.max_steps",
    "train.max_minutes",
    "train.log_every",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "train.num_workers",
}


def _flatten(d: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(_flatten(v, key + ".") if isinstance(v, dict) else {key: v})
    return out


def check_resumable(run_dir: Path, recipe: Recipe) -> None:
    """A run resumes only with the configuration it was started with (bar :data:`RESUMABLE_CHANGES`)."""
    saved = _flatten(read_yaml(run_dir / CONFIG_FILE))
    now = _flatten(to_dict(recipe))
    changed = sorted(
        k
        for k in saved.keys() | now.keys()
        if saved.get(k) != now.get(k) and k not in RESUMABLE_CHANGES and not k.startswith("monitor.")
    )  # probes never change training
    if changed:
        raise ConfigError(
            f"cannot resume {run_dir}: {changed[0]!r} differs from the saved {CONFIG_FILE} "
            f"({saved.get(changed[0])!r} -> {now.get(changed[0])!r}); start a new --output-dir instead"
        )


def check_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> None:
    """Refuse a directory that cannot take this run (read-only: every process calls it before anything is written)."""
    if resume and overwrite:
        raise ValueError("--resume continues the run in --output-dir and --overwrite replaces it: pass one of them")
    if run_dir.exists() and not run_dir.is_dir():
        raise NotADirectoryError(f"--output-dir {run_dir} is a file, not a directory: choose another --output-dir")
    held = [name for name in RUN_MARKERS if (run_dir / name).exists()]
    if resume and not (run_dir / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"--resume: {run_dir} has no {CONFIG_FILE}; pass the --output-dir of the run to resume")
    if held and not (resume or overwrite):
        raise FileExistsError(
            f"{run_dir} already holds a run ({', '.join(held)}): pass --resume to continue it, "
            "--overwrite to replace it, or choose another --output-dir"
        )


def remove_run(run_dir: Path) -> None:
    """Delete what an earlier pretraining run wrote into ``run_dir`` (:data:`RUN_OUTPUTS`), and nothing else."""
    for name in RUN_OUTPUTS:
        path = run_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
    log.info("--overwrite: removed the earlier run's files from %s", run_dir)


def knn_monitor(recipe: Recipe, domain: Any, processor: Any) -> KNNMonitor:
    """The online kNN probe of ``recipe.monitor`` on the domain's task, with the run's processor."""
    task = TaskConfig(name=recipe.monitor.task)
    try:
        rows = domain.task_data(task)
    except KeyError as e:
        raise ConfigError(f"monitor.task: {e.args[0]}") from None
    return KNNMonitor(
        recipe.monitor,
        rows.train,
        rows.test,
        domain.task_collate(processor, task),
        len(rows.label_names),
        encoder_of=lambda model: model.encoder,
    )


def default_run_dir(recipe: Recipe) -> Path:
    return Path("runs") / f"{recipe.name}-{time.strftime('%Y%m%d-%H%M%S')}"


def monitor_hooks(recipe: Recipe, domain: Any, processor: Any, state: PartialState) -> list[KNNMonitor]:
    """The online kNN probe, unless it is off or no ``monitor.every`` interval fits in ``train.max_steps``."""
    every, max_steps = recipe.monitor.every, recipe.train.max_steps
    if not every:
        return []
    if max_steps < every:
        state.print(
            f"monitor: skipped: train.max_steps={max_steps} is below monitor.every={every}, "
            "so no kNN probe runs (lower monitor.every to probe this run)"
        )
        return []
    return [knn_monitor(recipe, domain, processor)]


def write_objective_artifacts(model: SSLModel, data: PretrainData, run_dir: Path) -> list[Path]:
    """The objective's own files after pretraining (:meth:`Objective.write_artifacts`: the VAE's sample grid), from
    the first ``artifact_samples`` training samples as the objective sees them (collated, transformed), in eval mode."""
    count = model.objective.artifact_samples
    if not count:
        return []
    loader = DataLoader(data.dataset, batch_size=count, collate_fn=data.collate)
    batch = next(iter(loader)).to(next(model.parameters()).device)
    batch = batch if data.transform is None else data.transform(batch)
    model.eval()
    with torch.no_grad():
        return model.objective.write_artifacts(model.encoder, batch, run_dir)


def pretrain(
    recipe_name: str,
    overrides: list[str] = (),
    output_dir: Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
) -> Path:
    """Pretrain a recipe; returns the run directory (which holds ``export/`` at the end).

    With ``resume=True`` the newest intact checkpoint in ``output_dir`` is loaded and training
    continues exactly where it stopped. A directory that already holds a run is refused unless
    ``resume`` or ``overwrite`` is set; ``overwrite=True`` first removes the earlier run's files
    (:data:`RUN_OUTPUTS`) and leaves everything else in the directory alone.
    """
    recipe = load_recipe(recipe_name, list(overrides))
    state = PartialState(cpu=use_cpu())
    run_dir = Path(output_dir) if output_dir else default_run_dir(recipe)
    check_run_dir(run_dir, resume, overwrite)
    if resume:
        check_resumable(run_dir, recipe)
    state.wait_for_everyone()  # every process has looked at run_dir before the main process changes it
    if state.is_main_process:
        if overwrite and any((run_dir / name).exists() for name in RUN_MARKERS):
            remove_run(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        write_yaml(recipe, run_dir / CONFIG_FILE)
    state.wait_for_everyone()

    domain = DOMAINS.get(recipe.domain)
    set_seed(recipe.train.seed)
    with state.main_process_first():  # the main process trains and saves the tokenizer; the others load it
        data = domain.pretrain_data(recipe, run_dir, state.process_index, state.num_processes)
    if state.is_main_process:
        (run_dir / SUMMARY_FILE).write_text(json.dumps(data.summary, indent=2) + "\n")
    set_seed(recipe.train.seed)  # model init does not depend on how much RNG data loading used
    model = build_model(recipe, data.processor)
    if state.is_main_process:
        log.info("data: %s", ", ".join(f"{k} {v:,}" if type(v) is int else f"{k} {v}" for k, v in data.summary.items()))
        log.info(
            "model: %s encoder, %s objective, %s parameters",
            type(model.encoder).__name__,
            recipe.objective.name,
            f"{sum(p.numel() for p in model.parameters()):,}",
        )
    hooks = monitor_hooks(recipe, domain, data.processor, state)
    trainer = Trainer(
        model,
        data.dataset,
        data.collate,
        recipe.train,
        run_dir,
        transform=data.transform,
        unit_name=domain.unit_name,
        hooks=hooks,
    )
    for name, state in data.states.items():  # e.g. the labelled-minibatch stream of a semi-supervised recipe
        trainer.register_state(name, state)
    trainer.fit(resume=resume)
    if trainer.accelerator.is_main_process:
        write_export(
            trainer.accelerator.unwrap_model(trainer.model),
            data.processor,
            recipe,
            run_dir / EXPORT_DIR,
            run_dir,
            trainer.state.step,
            data.summary,
        )
        log.info("exported %s", run_dir / EXPORT_DIR)
        write_objective_artifacts(trainer.accelerator.unwrap_model(trainer.model), data, run_dir)
        log.info("report: mmssl report %s", run_dir)  # plots and report.md on demand: seconds, not every run
    trainer.accelerator.wait_for_everyone()
    trainer.close()
    return run_dir
