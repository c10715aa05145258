"""Labelled images in pretraining batches (S4L, Zhai et al. 2019): a fixed labelled subset and its minibatches.

With ``data.labels_per_class=N`` the image domain draws N images of every class from the pretraining split
(``data.split``, never the test split) with ``train.seed``, by the same stratified draw as a fine-tuning label budget
(:func:`mmssl.tasks.label_subset`), so ``mmssl finetune --set task.labels_per_class=N`` at that seed on the same
training split trains on the same rows. :class:`LabelledStream` yields minibatches of that subset, epoch after epoch
in a new order per epoch; its position is trainer state (saved with every checkpoint, so a resumed run draws the
batches it would have drawn). :class:`LabelledRotations` is the per-step transform: the unlabelled batch and one
labelled minibatch, every image in all four rotations, with the class of each upright labelled copy in
``extras[Extra.SUPERVISED_LABELS]`` (-100 elsewhere).

The labels are checked twice: when the recipe loads, from the stored labels alone (a prepared dataset's header
file, an ``.npz``'s ``labels`` array), and again on the loaded images.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor
from transformers import ViTImageProcessor

from domains.image.config import ImageDataConfig
from domains.image.data import ARRAYS_FILE, ImageArrays
from domains.image.pretext import rotate_all
from domains.image.transform import normalise
from domains.image.units import image_batch
from mmssl.tasks import TaskConfig, budget_record, label_subset
from mmssl.types import Batch, Extra

IGNORE = -100  # F.cross_entropy's ignore_index: rows without a supervised label


def where(data: ImageDataConfig) -> str:
    """The images' source in words, for error messages."""
    return f"data.path={data.path}" if data.path else f"data.name={data.name} (data.split={data.split})"


def stored_labels(data: ImageDataConfig) -> np.ndarray | None:
    """``int64 [N]`` labels of the pretraining images, read without decoding any image (``data.max_images``
    applied); None where they cannot be read before loading (a prepared dataset not prepared yet, an image folder).

    Raises:
        ValueError: the source has no labels (a ``.npy`` file, an ``.npz`` without ``labels``, a prepared file
            without them, a Hub dataset: pretraining reads its images only), naming ``data.labels_per_class``.
    """
    labels = None
    if data.source == "hub":
        raise ValueError(no_labels(data, "data.source=hub loads the images only"))
    if data.source == "numpy":
        labels = _numpy_labels(Path(data.path), data)
    elif data.source == "prepared":
        labels = _prepared_labels(data)
    return None if labels is None else labels[: data.max_images]


def no_labels(data: ImageDataConfig, why: str) -> str:
    return (
        f"data.labels_per_class={data.labels_per_class} draws labelled images, and {where(data)} has no labels "
        f"({why}): use a labelled source (a prepared dataset, an .npz with a 'labels' array, an image folder)"
    )


def _numpy_labels(path: Path, data: ImageDataConfig) -> np.ndarray | None:
    if not path.is_file():
        return None  # the loader names the missing file
    if path.suffix != ".npz":
        raise ValueError(no_labels(data, "a .npy file holds images only"))
    with np.load(path, allow_pickle=False) as archive:
        if "labels" not in archive.files:
            raise ValueError(no_labels(data, "the .npz has no 'labels' array"))
        return np.asarray(archive["labels"], dtype=np.int64)


def _prepared_labels(data: ImageDataConfig) -> np.ndarray | None:
    from mmssl.datasets import dataset_dir, is_prepared

    if not is_prepared(data.name):
        return None
    try:
        with safe_open(str(dataset_dir(data.name) / data.split / ARRAYS_FILE), framework="np") as handle:
            if "labels" not in handle.keys():
                raise ValueError(no_labels(data, "its file holds no labels"))
            return handle.get_tensor("labels").astype(np.int64)
    except (OSError, SafetensorError):  # the data loader reports an unreadable file or a missing split
        return None


def check_labelled_source(data: ImageDataConfig) -> None:
    """Refuse, at recipe load, a labelled subset from the test split, from images without labels, or of more
    images per class than a class has (where the labels can be read before loading: :func:`stored_labels`)."""
    if data.labels_per_class is None:
        return
    if data.source == "prepared" and data.split != "train":
        raise ValueError(
            f"data.labels_per_class draws labelled images from data.split={data.split}; a prepared dataset's "
            "accuracy is measured on its test split, so draw them from data.split=train"
        )
    labels = stored_labels(data)
    if labels is not None:
        check_budget(labels, data)


def check_budget(labels: np.ndarray, data: ImageDataConfig) -> None:
    """Every class of ``labels [N]`` has at least ``data.labels_per_class`` images."""
    classes, counts = np.unique(labels, return_counts=True)
    smallest = int(counts.argmin())
    if counts[smallest] < data.labels_per_class:
        raise ValueError(
            f"data.labels_per_class={data.labels_per_class} is more than class {int(classes[smallest])} of "
            f"{where(data)} holds ({counts[smallest]} images): choose at most {counts[smallest]}"
        )


def labelled_rows(arrays: ImageArrays, data: ImageDataConfig, seed: int) -> np.ndarray:
    """Sorted indices ``[n]`` into ``arrays`` of the labelled subset: ``data.labels_per_class`` of every class,
    drawn with ``seed`` (:func:`mmssl.tasks.label_subset`)."""
    if arrays.labels is None:
        raise ValueError(no_labels(data, f"{arrays.source} was loaded without labels"))
    labels = arrays.labels.numpy()
    check_budget(labels, data)
    return label_subset(labels, TaskConfig(labels_per_class=data.labels_per_class), seed)


def needs_labelled(objective: str) -> bool:
    """Whether the objective named ``objective`` reads ``extras[Extra.SUPERVISED_LABELS]`` (an unknown name: no)."""
    from mmssl.objectives import OBJECTIVES

    spec = OBJECTIVES.get(objective)
    return spec is not None and "supervised_labels" in spec.needs


def check_labelled_need(recipe: Any) -> None:
    """An objective that reads labelled images (S4L) gets them from ``data.labels_per_class``, and only it does."""
    needs, per_class = needs_labelled(recipe.objective.name), recipe.data.labels_per_class
    if needs and per_class is None:
        raise ValueError(
            f"objective.name={recipe.objective.name} trains a classifier on labelled images: set "
            "data.labels_per_class (labelled images of every class, e.g. 60 for 1% of Fashion-MNIST's labels)"
        )
    if per_class is not None and not needs:
        raise ValueError(
            f"data.labels_per_class={per_class} adds labelled images, and objective.name={recipe.objective.name} "
            "reads none: remove data.labels_per_class, or use objective.name=s4l"
        )


def check_num_labels(recipe: Any, labels: Tensor) -> None:
    """The loaded labels fit the objective's classifier (``objective.num_labels``, when the recipe could not
    read them before loading)."""
    num_labels = getattr(recipe.objective, "num_labels", None)
    if num_labels is not None and int(labels.max()) >= num_labels:
        raise ValueError(
            f"objective.num_labels={num_labels}, and the labelled images have classes up to {int(labels.max())}: "
            f"set objective.num_labels={int(labels.max()) + 1}"
        )


class LabelledStream:
    """Minibatches of a fixed labelled subset: each epoch a new order, drawn from ``(seed, epoch)`` alone.

    Every process draws the same global minibatch of ``batch_size * world_size`` images and keeps its own slice,
    so the position (``epoch``, ``cursor``) is the same on every process; a minibatch larger than the subset runs
    on into the next epoch's order. The position is trainer state (:meth:`state_dict`).

    Args:
        images: ``uint8 [n, C, H, W]`` the labelled images.
        labels: ``int64 [n]`` their classes.
        index: ``int64 [n]`` their rows in the training data (``extras[Extra.SAMPLE_INDEX]``).
        batch_size: labelled images per process and step.
    """

    def __init__(
        self, images: Tensor, labels: Tensor, index: Tensor, batch_size: int, seed: int, rank: int = 0, world: int = 1
    ) -> None:
        self.images, self.labels, self.index = images, labels, index
        self.batch_size, self.seed, self.rank, self.world = batch_size, seed, rank, world
        self.epoch, self.cursor = 0, 0
        self._order: tuple[int, Tensor] | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def order(self, epoch: int) -> Tensor:
        """``int64 [n]``: the subset's order in ``epoch``, a permutation drawn from ``(seed, epoch)``."""
        if self._order is None or self._order[0] != epoch:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._order = (epoch, torch.randperm(len(self), generator=generator))
        return self._order[1]

    def positions(self, count: int) -> Tensor:
        """The next ``count`` positions into the subset, advancing the stream."""
        taken = []
        while count:
            take = min(count, len(self) - self.cursor)
            taken.append(self.order(self.epoch)[self.cursor : self.cursor + take])
            self.cursor, count = self.cursor + take, count - take
            if self.cursor == len(self):
                self.epoch, self.cursor = self.epoch + 1, 0
        return torch.cat(taken)

    def next(self) -> tuple[Tensor, Tensor, Tensor]:
        """This process's next minibatch: ``(uint8 images [b, C, H, W], labels [b], index [b])``."""
        rows = self.positions(self.batch_size * self.world).view(self.world, -1)[self.rank]
        return self.images[rows], self.labels[rows], self.index[rows]

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "cursor": self.cursor, "size": len(self)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["size"] != len(self):
            raise ValueError(f"the checkpoint's labelled subset has {state['size']} images, this run's {len(self)}")
        self.epoch, self.cursor = int(state["epoch"]), int(state["cursor"])


def labelled_stream(arrays: ImageArrays, data: ImageDataConfig, batch_size: int, seed: int, rank: int, world: int):
    """The :class:`LabelledStream` of ``arrays``' labelled subset (``data.labelled_batch_size`` or ``batch_size``
    images per process and step, the subset drawn with ``seed``)."""
    rows = torch.from_numpy(labelled_rows(arrays, data, seed))
    size = data.labelled_batch_size or batch_size
    return LabelledStream(arrays.images[rows], arrays.labels[rows], rows, size, seed, rank, world)


def subset_fingerprint(stream: LabelledStream) -> str:
    """A fingerprint of the labelled rows (equal fingerprints: the same subset), as a fine-tuning result records
    its label budget's (:func:`mmssl.tasks.budget_record`)."""
    return budget_record(TaskConfig(labels_per_class=1), stream.seed, stream.index.numpy(), 0)["train_subset"]


class LabelledRotations:
    """The per-step S4L-Rotation transform: the unlabelled batch plus one labelled minibatch, all four rotations.

    Rows are rotation-major (:func:`domains.image.pretext.rotate_all`) over ``[unlabelled B ; labelled L]``;
    ``extras``: ``PRETEXT_LABELS`` (the rotation of every row), ``SUPERVISED_LABELS`` (the class at the ``L``
    upright labelled rows ``B .. B + L - 1``, -100 elsewhere) and ``SAMPLE_INDEX`` (each row's image).
    """

    def __init__(self, processor: ViTImageProcessor, stream: LabelledStream) -> None:
        self.processor, self.stream = processor, stream
        self.patch = int(processor.patch_size)

    def __call__(self, batch: Batch) -> Batch:
        pixels = batch.extras[Extra.PIXELS]  # [B, C, H, W] in [0, 1]
        images, labels, index = self.stream.next()
        device = pixels.device
        both = torch.cat([pixels, images.to(device).float().div_(255)])  # [B + L, C, H, W]
        rotated, k = rotate_all(both)  # [4 (B + L), C, H, W]
        supervised = torch.full((len(rotated),), IGNORE, dtype=torch.long, device=device)
        supervised[len(pixels) : len(both)] = labels.to(device)  # the upright (r = 0) labelled copies
        rows = torch.cat([batch.extras[Extra.SAMPLE_INDEX], index.to(device)]).repeat(4)
        extras = {Extra.PRETEXT_LABELS: k, Extra.SUPERVISED_LABELS: supervised, Extra.SAMPLE_INDEX: rows}
        return image_batch(normalise(rotated, self.processor), self.patch, **extras)
