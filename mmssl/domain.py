"""The domain protocol: what a modality package provides to the core."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import torch.nn.functional as F
from torch import Tensor, nn

from mmssl.encoder import Encoder
from mmssl.types import Batch, ObjectiveOutput


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
    """

    dataset: Any
    collate: Callable[[list[Any]], Batch]
    processor: Any = None
    transform: Callable[[Batch], Batch] | None = None
    summary: dict[str, Any] = field(default_factory=dict)


class Domain(Protocol):
    """A modality adapter, registered in :data:`mmssl.registry.DOMAINS` under :attr:`name`."""

    name: str
    unit_name: str  # "tokens", "patches", "frames", "nodes": what tokens_per_s counts
    data_config: type  # dataclass validating a recipe's ``data:`` section
    encoder_config: type  # dataclass validating a recipe's ``encoder:`` section

    def pretrain_data(self, recipe: Any, run_dir: Path, rank: int, world_size: int) -> PretrainData:
        """Load, preprocess and wrap the recipe's pretraining data; saves the processor in ``run_dir``."""
        ...

    def load_processor(self, path: Path) -> Any:
        """Load the processor a run directory or an export folder holds (no data is re-read)."""
        ...

    def build_encoder(self, encoder_config: Any, processor: Any) -> Encoder:
        """Build a freshly initialised encoder sized by the config and the processor."""
        ...


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


class Classifier(Protocol):
    """A fine-tunable model: ``forward(batch) -> ObjectiveOutput`` (cross-entropy on ``batch.extras['labels']``)."""

    def __call__(self, batch: Batch) -> Any: ...
    def logits(self, batch: Batch) -> Any: ...
    def export(self, out_dir: Path) -> None: ...


class ClassifierModule(nn.Module):
    """Base of the domains' classifiers: subclasses give ``logits(batch)`` and ``export(out_dir)``;
    ``forward`` is the cross-entropy on ``batch.extras["labels"]`` (in float32) with accuracy."""

    def logits(self, batch: Batch) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def export(self, out_dir: Path) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, batch: Batch) -> ObjectiveOutput:
        logits = self.logits(batch)
        labels = batch.extras["labels"]
        loss = F.cross_entropy(logits.float(), labels)
        return ObjectiveOutput(loss=loss, terms={"ce": loss},
                               logs={"accuracy": (logits.argmax(-1) == labels).float().mean().detach()})


class DownstreamDomain(Domain, Protocol):
    """The fine-tuning and evaluation half of a domain (used by ``mmssl finetune`` / ``mmssl evaluate``)."""

    def task_names(self) -> tuple[str, ...]:
        """The ``--task`` names this domain reads (registered tasks, and ``file`` / ``hub`` where supported)."""
        ...

    def task_data(self, task: Any) -> TaskData:
        """Load a task (a registered name, or the user's file / Hub dataset given by ``task.path``)."""
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
