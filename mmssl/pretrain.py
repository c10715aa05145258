"""``mmssl pretrain``: recipe -> data -> encoder + objective -> Trainer -> checkpoints -> export."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from accelerate import PartialState
from accelerate.utils import set_seed

from mmssl.config import ConfigError, read_yaml, to_dict, write_yaml
from mmssl.evaluation import KNNMonitor
from mmssl.export import CONFIG_FILE, EXPORT_DIR, build_model, write_export
from mmssl.recipe import Recipe, load_recipe
from mmssl.registry import DOMAINS
from mmssl.trainer import Trainer, latest_checkpoint, use_cpu

log = logging.getLogger(__name__)

# Settings a resumed run may change: they alter neither the model nor the batches it sees.
RESUMABLE_CHANGES = {"train.max_steps", "train.max_minutes", "train.log_every", "train.checkpoint_every",
                     "train.keep_checkpoints", "train.num_workers"}


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
    changed = sorted(k for k in saved.keys() | now.keys() if saved.get(k) != now.get(k)
                     and k not in RESUMABLE_CHANGES and not k.startswith("monitor."))  # probes never change training
    if changed:
        raise ConfigError(f"cannot resume {run_dir}: {changed[0]!r} differs from the saved {CONFIG_FILE} "
                          f"({saved.get(changed[0])!r} -> {now.get(changed[0])!r}); start a new --output-dir instead")


def knn_monitor(recipe: Recipe, domain: Any, processor: Any) -> KNNMonitor:
    """The online kNN probe of ``recipe.monitor`` on the domain's task, with the run's processor."""
    from mmssl.finetune import TaskConfig  # local: finetune imports sklearn

    task = TaskConfig(name=recipe.monitor.task)
    try:
        rows = domain.task_data(task)
    except KeyError as e:
        raise ConfigError(f"monitor.task: {e.args[0]}") from None
    return KNNMonitor(recipe.monitor, rows.train, rows.test, domain.task_collate(processor, task),
                      len(rows.label_names), encoder_of=lambda model: model.encoder)


def default_run_dir(recipe: Recipe) -> Path:
    return Path("runs") / f"{recipe.name}-{time.strftime('%Y%m%d-%H%M%S')}"


def pretrain(recipe_name: str, overrides: list[str] = (), output_dir: Path | None = None, resume: bool = False) -> Path:
    """Pretrain a recipe; returns the run directory (which holds ``export/`` at the end).

    With ``resume=True`` the latest checkpoint in ``output_dir`` is loaded and training continues
    exactly where it stopped.
    """
    recipe = load_recipe(recipe_name, list(overrides))
    state = PartialState(cpu=use_cpu())
    run_dir = Path(output_dir) if output_dir else default_run_dir(recipe)
    if resume:
        if not (run_dir / CONFIG_FILE).is_file():
            raise FileNotFoundError(f"--resume: {run_dir} has no {CONFIG_FILE}; pass the --output-dir of the run to resume")
        check_resumable(run_dir, recipe)
    elif latest_checkpoint(run_dir) is not None:
        raise FileExistsError(f"{run_dir} already holds checkpoints: pass --resume to continue it, or another --output-dir")
    if state.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_yaml(recipe, run_dir / CONFIG_FILE)
    state.wait_for_everyone()

    domain = DOMAINS.get(recipe.domain)
    set_seed(recipe.train.seed)
    with state.main_process_first():  # the main process trains and saves the tokenizer; the others load it
        data = domain.pretrain_data(recipe, run_dir, state.process_index, state.num_processes)
    if state.is_main_process:
        (run_dir / "data_summary.json").write_text(json.dumps(data.summary, indent=2) + "\n")
    set_seed(recipe.train.seed)  # model init does not depend on how much RNG data loading used
    model = build_model(recipe, data.processor)
    hooks = [knn_monitor(recipe, domain, data.processor)] if recipe.monitor.every else []
    trainer = Trainer(model, data.dataset, data.collate, recipe.train, run_dir, transform=data.transform,
                      unit_name=domain.unit_name, hooks=hooks)
    trainer.fit(resume=resume)
    if trainer.accelerator.is_main_process:
        write_export(trainer.accelerator.unwrap_model(trainer.model), data.processor, recipe,
                     run_dir / EXPORT_DIR, run_dir, trainer.state.step, data.summary)
        log.info("exported %s", run_dir / EXPORT_DIR)
    trainer.accelerator.wait_for_everyone()
    trainer.close()
    return run_dir
