"""The model of a run: its recipe read back, the encoder + objective built from it, and checkpoint weights loaded.

Pretraining, export and the benchmarks all build the model here, so a run and its export always
hold the same architecture.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from safetensors.torch import load_file

from mmssl.checkpoint import CONFIG_FILE
from mmssl.config import read_yaml
from mmssl.objectives import objective_spec
from mmssl.objectives.base import SSLModel
from mmssl.recipe import Recipe, recipe_from_dict
from mmssl.registry import DOMAINS


def load_run_recipe(run_dir: Path) -> Recipe:
    """The recipe a run was started with (its ``config.yaml``), validated again."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} is not an mmssl run: {CONFIG_FILE} is missing")
    return recipe_from_dict(read_yaml(path))


def build_model(recipe: Recipe, processor: Any) -> SSLModel:
    """Encoder + objective exactly as the run built them (weights freshly initialised)."""
    domain = DOMAINS.get(recipe.domain)
    encoder = domain.build_encoder(recipe.encoder, processor)
    objective = objective_spec(recipe.objective.name).cls(recipe.objective, encoder)
    return SSLModel(encoder, objective)


def load_weights(model: SSLModel, path: Path) -> None:
    """Load a checkpoint's weights strictly, allowing only keys of tied (aliased) tensors to be absent.

    ``save_state`` stores one name per shared tensor (e.g. BERT's decoder weight is the word
    embedding), and loading either alias fills both.
    """
    by_ptr: dict[int, list[str]] = {}
    for name, tensor in model.state_dict().items():
        by_ptr.setdefault(tensor.data_ptr(), []).append(name)
    aliased = {n for names in by_ptr.values() if len(names) > 1 for n in names}
    missing, unexpected = model.load_state_dict(load_file(str(path)), strict=False)
    if unexpected or set(missing) - aliased:
        raise ValueError(
            f"checkpoint {path} does not match the recipe's model: "
            f"missing {sorted(set(missing) - aliased)[:5]}, unexpected {sorted(unexpected)[:5]}"
        )
