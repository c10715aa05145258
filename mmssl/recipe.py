"""Recipes: YAML files validated into a typed :class:`Recipe`.

A recipe names a domain and an objective; the domain supplies the dataclasses that
validate its ``data`` and ``encoder`` sections and the objective those of ``objective``,
so every section is checked against a schema, including sections that third-party
domains add.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from mmssl.config import ConfigError, apply_overrides, from_dict, read_yaml
from mmssl.registry import DOMAINS


@dataclass(frozen=True)
class TrainConfig:
    """The optimisation loop shared by every recipe."""

    # The run's length in optimizer steps. Fine-tuning leaves it unset and trains train.epochs passes over
    # its rows instead; set, it wins over train.epochs (transformers' max_steps overrides num_train_epochs too).
    max_steps: int | None = 1000
    epochs: int | None = None  # passes over the training rows (mmssl finetune: 3); pretraining refuses it
    batch_size: int = 32  # per process and micro-batch; global = batch_size * processes * grad_accum_steps
    grad_accum_steps: int = 1
    lr: float = 5e-4  # peak learning rate after warmup
    weight_decay: float = 0.01  # AdamW decoupled decay; never applied to biases and norm weights
    betas: tuple[float, float] = (0.9, 0.98)  # RoBERTa (Liu et al. 2019) uses beta2=0.98 for stability
    eps: float = 1e-6
    # linear warmup (capped at the run's steps), then cosine decay to 0 at the last step; a value below 1 is a
    # fraction of the run's steps (transformers' convention: 0.1 warms up over the first 10%)
    warmup_steps: int | float = 100
    max_grad_norm: float = 1.0  # clip the global gradient norm; <= 0 disables clipping (the run logs it)
    mixed_precision: Literal["no", "bf16", "fp16", "auto"] = "no"  # auto: bf16 where the hardware runs it natively
    seed: int = 0
    log_every: int = 10
    checkpoint_every: int = 200  # save_state every N optimizer steps (and at the end)
    keep_checkpoints: int = 2  # keep the last K checkpoints
    max_consecutive_nonfinite: int = 5  # abort after K NaN/inf losses in a row
    num_workers: int = 0  # DataLoader workers
    max_minutes: float | None = None  # stop early (checkpoint + export) after this wall time

    def __post_init__(self) -> None:
        for name in (
            "max_steps",
            "epochs",
            "batch_size",
            "grad_accum_steps",
            "log_every",
            "checkpoint_every",
            "keep_checkpoints",
        ):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"train.{name} must be >= 1")
        if self.max_steps is None and self.epochs is None:
            raise ValueError("set train.max_steps or train.epochs (train.max_steps wins when both are set)")
        if self.lr <= 0:
            raise ValueError("train.lr must be > 0")
        if self.warmup_steps < 0 or (self.warmup_steps >= 1 and self.warmup_steps != int(self.warmup_steps)):
            raise ValueError(
                "train.warmup_steps must be a whole number of steps, or a fraction below 1 of the run's steps"
            )


@dataclass(frozen=True)
class MonitorConfig:
    """A recipe's ``monitor:`` section: an online kNN probe of the encoder during pretraining."""

    task: str | None = None  # a registered task of the recipe's domain (e.g. fashion-mnist); None: no monitor
    every: int = 0  # optimizer steps between probes (0: off); also run at the last step, if at least one interval fits
    k: int = 200
    temperature: float = 0.07
    max_train: int = 10000  # training rows used as the kNN memory (the first N of the task's split)
    max_test: int = 2000

    def __post_init__(self) -> None:
        if self.every < 0 or self.k < 1 or self.temperature <= 0 or self.max_train < 1 or self.max_test < 1:
            raise ValueError("monitor: every >= 0, k >= 1, temperature > 0, max_train >= 1, max_test >= 1 are required")
        if self.every and not self.task:
            raise ValueError("monitor.task is required when monitor.every > 0")


@dataclass(frozen=True)
class Recipe:
    """A fully validated recipe. ``data``/``encoder`` are the domain's dataclasses, ``objective`` the objective's."""

    name: str
    domain: str
    data: Any
    encoder: Any
    objective: Any
    train: TrainConfig = field(default_factory=TrainConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    description: str = ""


def recipe_dirs() -> list[Path]:
    """Where recipes are looked up: ``$MMSSL_RECIPE_PATH`` (colon-separated), the source tree, the install prefix."""
    dirs = [Path(p) for p in os.environ.get("MMSSL_RECIPE_PATH", "").split(os.pathsep) if p]
    dirs.append(Path(__file__).resolve().parents[1] / "recipes")
    dirs.append(Path(sys.prefix) / "share" / "mmssl" / "recipes")
    return [d for d in dirs if d.is_dir()]


def find_recipe(name_or_path: str | Path) -> Path:
    """Resolve a recipe name (``bert``) or a path to a YAML file."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ConfigError(f"recipe file {path} does not exist")
        return path
    for d in recipe_dirs():
        candidate = d / f"{name_or_path}.yaml"
        if candidate.is_file():
            return candidate
    known = ", ".join(sorted(n for n, _ in list_recipes())) or "none"
    raise ConfigError(f"unknown recipe {str(name_or_path)!r}; known recipes: {known}")


def list_recipes() -> list[tuple[str, str]]:
    """``(name, description)`` of every recipe found on the search path, first one wins."""
    seen: dict[str, str] = {}
    for d in recipe_dirs():
        for f in sorted(d.glob("*.yaml")):
            if f.stem not in seen:
                lines = str(read_yaml(f).get("description", "")).strip().splitlines()
                seen[f.stem] = lines[0] if lines else ""
    return sorted(seen.items())


def with_derived(objective: dict[str, Any], derived: dict[str, tuple[Any, str]]) -> dict[str, Any]:
    """The recipe's ``objective`` section with the values its data determines filled in.

    Args:
        objective: the raw ``objective`` mapping.
        derived: ``{key: (value, why)}`` from :meth:`mmssl.domain.Domain.derived_objective_settings`,
            ``why`` naming the data key the value comes from (``"data.jigsaw_permutations=24"``).

    Raises:
        ConfigError: If the recipe sets one of those keys to another value.
    """
    filled = dict(objective)
    for key, (value, why) in derived.items():
        if key in filled and filled[key] != value:
            raise ConfigError(
                f"objective.{key}={filled[key]!r} does not match the data: {why} gives {value!r}; "
                f"leave objective.{key} out and it is computed"
            )
        filled[key] = value
    return filled


def pretraining_train(raw: Any) -> TrainConfig:
    """A recipe's ``train`` section: a pretraining run is ``train.max_steps`` long; epochs are for fine-tuning."""
    train = from_dict(TrainConfig, raw, "train")
    if train.epochs is not None:
        raise ConfigError(
            f"train.epochs={train.epochs}: epochs are for mmssl finetune; a pretraining run lasts train.max_steps "
            "optimizer steps (or train.max_minutes): set train.max_steps and leave train.epochs out"
        )
    return train


def recipe_from_dict(raw: dict) -> Recipe:
    """Validate a raw recipe mapping (after overrides) into a :class:`Recipe`.

    Each section is checked by its dataclass; objective values that the data determines (a pretext
    head's classes, HuBERT's clusters) are computed from it
    (:meth:`mmssl.domain.Domain.derived_objective_settings`); then the domain checks the settings that
    must agree across sections (:meth:`mmssl.domain.Domain.check_recipe`), so a bad recipe fails
    before anything is written.
    """
    for key in ("name", "domain", "objective"):
        if key not in raw:
            raise ConfigError(f"missing required key {key!r}")
    try:
        domain = DOMAINS.get(raw["domain"])
    except KeyError as e:
        raise ConfigError(f"domain: {e.args[0]}") from None
    objective = raw.get("objective")
    if not isinstance(objective, dict) or "name" not in objective:
        raise ConfigError("missing required key 'objective.name'")
    from mmssl.objectives import objective_spec  # imports torch: only when a recipe is validated, not listed

    try:
        spec = objective_spec(objective["name"])
    except KeyError as e:
        raise ConfigError(f"objective.name: {e.args[0]}") from None
    sections = {"name", "domain", "description", "data", "encoder", "objective", "train", "monitor"}
    unknown = sorted(set(raw) - sections)
    if unknown:
        raise ConfigError(f"unknown key {unknown[0]!r}; valid keys: {', '.join(sorted(sections))}")
    data = from_dict(domain.data_config, raw.get("data"), "data")
    recipe = Recipe(
        name=str(raw["name"]),
        domain=raw["domain"],
        description=str(raw.get("description", "")),
        data=data,
        encoder=from_dict(domain.encoder_config, raw.get("encoder"), "encoder"),
        objective=from_dict(
            spec.config_cls,
            with_derived(objective, domain.derived_objective_settings(data, objective["name"])),
            "objective",
        ),
        train=pretraining_train(raw.get("train")),
        monitor=from_dict(MonitorConfig, raw.get("monitor"), "monitor"),
    )
    try:  # what one section's dataclass cannot see: settings that must agree across sections
        domain.check_recipe(recipe)
        check_objective_fits(recipe, objective["name"], spec.needs)
    except ValueError as e:  # the messages name the dotted keys
        raise ConfigError(str(e)) from e
    return recipe


def check_objective_fits(recipe: Recipe, name: str, needs: tuple[str, ...]) -> None:
    """The objective's own checks of other sections (``check_recipe`` of its config: SwAV's prototypes against
    the batch), and the encoder capabilities it needs (an encoder config's ``missing_capability``).

    Raises:
        ValueError: Naming the dotted keys.
    """
    from mmssl.objectives.base import ENCODER_NEEDS

    check = getattr(recipe.objective, "check_recipe", None)
    if check is not None:
        check(recipe)
    missing = getattr(recipe.encoder, "missing_capability", None)
    for need in needs:
        reason = missing(need) if missing is not None and need in ENCODER_NEEDS else None
        if reason:
            raise ValueError(f"objective.name={name} needs {ENCODER_NEEDS[need]}: {reason}")


def load_recipe(name_or_path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Read, override and validate a recipe. Errors name the file or the dotted key."""
    path = find_recipe(name_or_path)
    raw = apply_overrides(read_yaml(path), list(overrides))
    try:
        return recipe_from_dict(raw)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
