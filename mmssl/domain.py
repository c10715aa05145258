"""The domain protocol: what a modality package provides to the core."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import Tensor, nn

from mmssl.encoder import Encoder
from mmssl.types import Batch, Extra, ObjectiveOutput


@dataclass
class PretrainData:
    """Everything the trainer needs to iterate a domain's pretraining data.

    Attributes:
        dataset: map-style (``torch``/``datasets.Dataset``) or iterable (streaming) dataset.
        collate: list of samples -> :class:`Batch`; deterministic (no randomness), so a
            resumed run sees the same batches.
        processor: tokenizer / feature extractor (``save_pretrained``-able), saved beside exports.
        transform: optional random per-step transform applied on the training device
            (augmentations, sentence-pair construction); draws from the global torch RNG,
            which the trainer seeds per step for exact resume.
        summary: facts for the model card (corpus name, number of blocks, ...).
        states: what the data pipeline must save with every checkpoint for an exact resume, by name
            (the position of a labelled-minibatch stream: S4L); ``mmssl pretrain`` registers each with
            :meth:`mmssl.trainer.Trainer.register_state`.
    """

    dataset: Any
    collate: Callable[[list[Any]], Batch]
    processor: Any = None
    transform: Callable[[Batch], Batch] | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    states: dict[str, Any] = field(default_factory=dict)


class Domain(Protocol):
    """A modality adapter, registered in :data:`mmssl.registry.DOMAINS` under :attr:`name`."""

    name: str
    unit_name: str  # "tokens", "patches", "frames", "nodes": what tokens_per_s counts
    unit_kind: str  # what its batches' units are: a key of mmssl.objectives.base.UNIT_KINDS ("ids", "grid", ...)
    data_config: type  # dataclass validating a recipe's ``data:`` section
    encoder_config: type  # dataclass validating a recipe's ``encoder:`` section

    def smoke_overrides(self, data: Any) -> tuple[str, ...]:
        """``--set`` strings that shrink a recipe of this domain, whose ``data:`` section is ``data``, to a
        seconds-long run (the recipe smoke test and the contract tests); ``{name}`` in a value stands for the
        path that the test fixture ``name`` returns (``data.path={tiny_images}``)."""
        ...

    def contract_overrides(self, needs: tuple[str, ...]) -> tuple[str, ...] | None:
        """``--set`` strings that make this domain's batches and encoder give ``needs`` (keys of
        :data:`mmssl.objectives.base.NEEDS`: ``views``, ``causal``, ...) besides units of :attr:`unit_kind`;
        None when the domain cannot give one of them.

        The contract tests (``tests/contracts``) build every objective that declares this unit kind with
        these settings on top of :meth:`smoke_overrides`; ``needs=()`` gives the domain's plain units.
        """
        ...

    def check_recipe(self, recipe: Any) -> None:
        """Refuse settings of different sections that do not fit together (``data.block_size`` above
        ``encoder.max_position_embeddings``, ...) with a ``ValueError`` naming the dotted keys.

        Called when the recipe loads (:func:`mmssl.recipe.recipe_from_dict`), before any run directory
        exists; what needs the data itself (an image size the patch size must divide) is checked in
        :meth:`pretrain_data`.
        """
        ...

    def derived_objective_settings(self, data: Any, objective: str) -> dict[str, tuple[Any, str]]:
        """Objective settings this domain's validated ``data`` section determines, for objective ``objective``.

        ``{key: (value, why)}``, ``why`` naming the data key (``"data.jigsaw_permutations=24"``): the
        recipe loader fills each key in, and refuses a recipe that sets it to another value, so a
        value derived from another is computed, never copied into a recipe. ``{}`` when there are none.
        """
        ...

    def pretrain_data(self, recipe: Any, run_dir: Path, rank: int, world_size: int) -> PretrainData:
        """Load, preprocess and wrap the recipe's pretraining data; saves the processor in ``run_dir``."""
        ...

    def load_processor(self, path: Path) -> Any:
        """Load the processor a run directory or an export folder holds (no data is re-read)."""
        ...

    def build_encoder(self, encoder_config: Any, processor: Any) -> Encoder:
        """Build a freshly initialised encoder sized by the config and the processor."""
        ...


def needs_overrides(
    needs: tuple[str, ...], given: dict[str, tuple[str, ...]], base: tuple[str, ...] = ()
) -> tuple[str, ...] | None:
    """A domain's :meth:`Domain.contract_overrides` from the table of what it gives.

    Args:
        needs: the objective's needs (keys of :data:`mmssl.objectives.base.NEEDS`).
        given: the ``--set`` strings that give each need this domain can give.
        base: the settings of the domain's plain units, applied first (a need's settings win).

    Returns:
        ``base`` then each need's settings, or None if the domain cannot give one of ``needs``.
    """
    if any(need not in given for need in needs):
        return None
    return (*base, *(o for need in needs for o in given[need]))


@dataclass
class TaskData:
    """A downstream classification task: train/test rows in the domain's format, and label names.

    ``skipped`` counts the rows left out, by reason (``{"missing_label": 64, "empty_text": 73}``);
    fine-tuning and probe results report it.
    """

    train: Any
    test: Any
    label_names: list[str]
    skipped: dict[str, int] = field(default_factory=dict)

    def skipped_record(self) -> dict[str, Any]:
        """``{"skipped_rows": {reason: count}}`` for a result record when rows were skipped, else ``{}``."""
        return {"skipped_rows": dict(self.skipped)} if self.skipped else {}


class Classifier(Protocol):
    """A fine-tunable model: ``forward(batch) -> ObjectiveOutput`` (cross-entropy on ``batch.extras['labels']``)."""

    def __call__(self, batch: Batch) -> Any: ...
    def logits(self, batch: Batch) -> Any: ...
    def export(self, out_dir: Path) -> None: ...


class ClassifierModule(nn.Module):
    """Base of the domains' classifiers: subclasses give ``logits(batch)`` and ``export(out_dir)``;
    ``forward`` is the cross-entropy on ``batch.extras[Extra.LABELS]`` (in float32) with accuracy."""

    def logits(self, batch: Batch) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def export(self, out_dir: Path) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, batch: Batch) -> ObjectiveOutput:
        logits = self.logits(batch)
        labels = batch.extras[Extra.LABELS]
        loss = F.cross_entropy(logits.float(), labels)
        return ObjectiveOutput(
            loss=loss, terms={"ce": loss}, logs={"accuracy": (logits.argmax(-1) == labels).float().mean().detach()}
        )


def save_classifier_head(head: nn.Linear, label_names: list[str], out_dir: Path) -> None:
    """A linear head beside its backbone: ``classifier_head.safetensors`` (weight ``[K, D]``, bias ``[K]``) and
    ``classifier_head.json`` (its sizes, ``id2label`` and ``label2id``, as in a transformers config)."""
    save_file(head.state_dict(), str(Path(out_dir) / "classifier_head.safetensors"))
    config = {
        "in_features": head.in_features,
        "num_labels": head.out_features,
        "id2label": {str(i): name for i, name in enumerate(label_names)},
        "label2id": {name: i for i, name in enumerate(label_names)},
    }
    (Path(out_dir) / "classifier_head.json").write_text(json.dumps(config, indent=2) + "\n")


class DownstreamDomain(Domain, Protocol):
    """The fine-tuning and evaluation half of a domain (used by ``mmssl finetune`` / ``mmssl evaluate``)."""

    def task_names(self) -> tuple[str, ...]:
        """The ``--task`` names this domain reads: the tasks registered for it
        (:func:`mmssl.registry.registered_tasks`), then its names for the user's data (``file``, ``hub``,
        ``folder``) where it reads them."""
        ...

    def task_data(self, task: Any) -> TaskData:
        """Load a task (a registered name, or the user's file / Hub dataset given by ``task.path``)."""
        ...

    def task_labels(self, rows: Any) -> np.ndarray:
        """``int64 [N]``: the label of each of ``rows`` (a split of :meth:`task_data`), in their order, read
        without decoding the inputs; the label budgets (:func:`mmssl.tasks.label_subset`) draw from it. A
        ``ValueError`` where the rows have no labels (paired tasks)."""
        ...

    def task_collate(self, processor: Any, task: Any) -> Callable[[list[Any]], Batch]:
        """Collate task rows into a Batch with ``labels`` in extras, with a run's or an export's processor."""
        ...

    def classifier(self, export_dir: Path, label_names: list[str], init: str) -> Classifier:
        """The export's backbone with a fresh head over ``label_names`` (exported with it as ``id2label``);
        ``init="random"`` re-initialises the backbone."""
        ...

    def load_encoder(self, export_dir: Path, random_init: bool = False) -> Encoder:
        """The exported encoder behind the protocol (frozen-feature probes); ``random_init`` keeps only its shape."""
        ...

    def raw_features(self, data: TaskData, task: Any) -> RawFeatures:
        """The domain's raw-feature baseline of a task's rows (``data`` from :meth:`task_data`): what the
        probes read with ``init=raw`` instead of an encoder's pooled features (pixels, MFCC statistics,
        propagated node features, TF-IDF); a ``ValueError`` where the domain has none."""
        ...


@dataclass(frozen=True)
class RawFeatures:
    """A raw-feature baseline of a task (:meth:`DownstreamDomain.raw_features`), in the shape of
    :func:`mmssl.probes.extract_features`' output so that every probe reads it unchanged.

    Attributes:
        name: the baseline (``pixels``, ``mfcc-statistics``, ``propagated-features``, ``tf-idf``, ...).
        train: ``(features [N, F] float32, labels [N] int64)`` of the task's training rows, in their order.
        test: ``(features [M, F] float32, labels [M] int64)`` of its test rows, in their order.
    """

    name: str
    train: tuple[Tensor, Tensor]
    test: tuple[Tensor, Tensor]
