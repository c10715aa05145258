"""The image domain: images -> patch units, augmented views made on the device, ViT / ResNet encoders.

Data flow: ``ImageArrays`` (uint8 ``[N, C, H, W]``) -> :class:`ImageRows` -> ``collate``
(a :class:`Batch` of normalised patch units, plus the ``[0, 1]`` pixels in
``extras[Extra.PIXELS]``) -> the per-step ``transform`` on the training device
(:func:`domains.image.augment_views.make_views` with per-sample random parameters, then each view
patchified into ``Batch.views``; or a pretext transform, rotation or jigsaw, with ``extras[Extra.PRETEXT_LABELS]``)
-> the objective.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from transformers import AutoConfig, AutoModelForImageClassification, ViTImageProcessor, ViTModel

from domains.image.baselines import pixel_baseline
from domains.image.builders import load_fashion_mnist, load_fashion_mnist_small
from domains.image.config import (
    PRETEXT_VIEWS,
    ImageDataConfig,
    check_crops_fit,
    crop_keys,
    prepared_image_channels,
    prepared_image_side,
)
from domains.image.data import (
    ImageArrays,
    load_arrays,
    load_hf_image_dataset,
    load_imagefolder,
    load_numpy,
)
from domains.image.encoders import ImageEncoderConfig, ResNetEncoder, ViTEncoder, build_image_encoder
from domains.image.imagegpt import (
    build_imagegpt_encoder,
    check_positions,
    is_imagegpt_export,
    is_palette_processor,
    load_imagegpt_encoder,
    load_palette_processor,
    palette_processor,
)
from domains.image.labelled import (
    LabelledRotations,
    check_labelled_need,
    check_labelled_source,
    check_num_labels,
    labelled_stream,
    needs_labelled,
    stored_labels,
    subset_fingerprint,
)
from domains.image.resnet import SmallResNet
from domains.image.transform import ViewTransform, normalise
from domains.image.units import grid_of, image_batch, unpatchify
from mmssl.domain import ClassifierModule, PretrainData, RawFeatures, TaskData, needs_overrides, save_classifier_head
from mmssl.encoder import Encoder
from mmssl.objectives.color_space import lightness
from mmssl.objectives.vae import with_posterior_mean
from mmssl.registry import DOMAINS, TASKS, TaskSpec, registered_tasks
from mmssl.types import Batch, Extra


class ImageRows(torch.utils.data.Dataset):
    """Map-style rows ``{"image": uint8 [C, H, W], "label": int, "index": int}`` over :class:`ImageArrays`."""

    def __init__(self, arrays: ImageArrays) -> None:
        self.arrays = arrays

    def __len__(self) -> int:
        return len(self.arrays)

    def __getitem__(self, i: int) -> dict[str, Any]:
        labels = self.arrays.labels
        return {"image": self.arrays.images[i], "label": -1 if labels is None else int(labels[i]), "index": i}


def load_images(cfg: ImageDataConfig) -> ImageArrays:
    """The configured pretraining images."""
    if cfg.source == "prepared":  # builders write one folder per split (fashion-mnist: train/, test/)
        from mmssl.datasets import prepare

        split_dir = prepare(cfg.name) / cfg.split
        if not split_dir.is_dir():
            raise FileNotFoundError(
                f"data.split: prepared dataset {cfg.name!r} has no split {cfg.split!r} ({split_dir})"
            )
        arrays = load_arrays(split_dir)
    elif cfg.source == "numpy":
        arrays = load_numpy(cfg.path)
    elif cfg.source == "imagefolder":
        arrays, _ = load_imagefolder(cfg.path, size=cfg.image_size, channels=cfg.channels)  # skips are logged there
    else:
        arrays = load_hf_image_dataset(
            cfg.name,
            cfg.split,
            image_column=cfg.image_column,
            label_column=None,
            size=cfg.image_size,
            channels=cfg.channels,
            limit=cfg.max_images,
        )
    if cfg.max_images is not None and len(arrays) > cfg.max_images:
        arrays = dataclasses.replace(
            arrays,
            images=arrays.images[: cfg.max_images],
            labels=None if arrays.labels is None else arrays.labels[: cfg.max_images],
        )
    return arrays


def channel_stats(images: Tensor, sample: int = 10000) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 images in ``[0, 1]`` units (from the first ``sample`` images)."""
    x = images[:sample].float().div_(255)
    return x.mean((0, 2, 3)).tolist(), x.std((0, 2, 3)).tolist()


def make_processor(arrays: ImageArrays, patch_size: int, lightness_input: bool = False) -> ViTImageProcessor:
    """transformers' ``ViTImageProcessor`` with the data's size and channel statistics (and mmssl's patch size).

    It is what the export ships: ``AutoImageProcessor.from_pretrained(export)`` prepares
    ``pixel_values`` exactly as the training batches were normalised. With ``lightness_input`` it has one
    channel, the statistics of ``L*/100`` of the RGB images (``data.encoder_input=lightness``).
    """
    _, c, h, w = arrays.images.shape
    mean, std = lightness_stats(arrays.images) if lightness_input else channel_stats(arrays.images)
    return ViTImageProcessor(size={"height": h, "width": w}, image_mean=mean, image_std=std, patch_size=patch_size)


def lightness_stats(images: Tensor, sample: int = 10000) -> tuple[list[float], list[float]]:
    """Mean and std of ``L*/100`` of uint8 RGB images ``[N, 3, H, W]`` (from the first ``sample`` images)."""
    x = lightness(images[:sample].float().div_(255))
    return x.mean((0, 2, 3)).tolist(), x.std((0, 2, 3)).tolist()


def encoder_pixels(pixels: Tensor, processor: ViTImageProcessor) -> Tensor:
    """What the encoder reads of ``[B, C, H, W]`` pixels in [0, 1]: the pixels, or ``L*/100`` of RGB pixels when the
    processor has one channel (an encoder trained on ``data.encoder_input=lightness`` or on grey images)."""
    return lightness(pixels) if pixels.shape[1] == 3 and len(processor.image_mean) == 1 else pixels


def image_collate(processor: ViTImageProcessor, with_labels: bool) -> Callable[[list[dict[str, Any]]], Batch]:
    """Rows -> a Batch of normalised patch units; ``[0, 1]`` pixels in ``extras[Extra.PIXELS]`` for the transform,
    each row's position in the data in ``extras[Extra.SAMPLE_INDEX]``."""
    patch = int(processor.patch_size)

    def collate(rows: list[dict[str, Any]]) -> Batch:
        pixels = torch.stack([r["image"] for r in rows]).float().div_(255)
        index = torch.tensor([r["index"] for r in rows], dtype=torch.long)
        extras: dict[str, Any] = {Extra.PIXELS: pixels, Extra.SAMPLE_INDEX: index}
        if with_labels:
            extras[Extra.LABELS] = torch.tensor([r["label"] for r in rows], dtype=torch.long)
        return image_batch(normalise(encoder_pixels(pixels, processor), processor), patch, **extras)

    return collate


# ---------------------------------------------------------------------------- downstream
class ImageClassifier(ClassifierModule):
    """A classifier on patch-unit batches: ``AutoModelForImageClassification`` (ViT) or SmallResNet + linear head."""

    def __init__(
        self, model: nn.Module, patch_size: int, head: nn.Linear | None = None, label_names: list[str] | None = None
    ) -> None:
        super().__init__()
        self.model = model
        self.head = head
        self.patch_size = patch_size
        self.label_names = list(label_names or [])  # the head's classes (a ViT keeps them in its config)

    def logits(self, batch: Batch) -> Tensor:
        pixels = unpatchify(batch.units, grid_of(batch), self.patch_size)
        if self.head is None:
            return self.model(pixel_values=pixels).logits
        return self.head(self.model(pixels).mean((2, 3)))

    def export(self, out_dir: Path) -> None:
        self.model.save_pretrained(str(out_dir))
        if self.head is not None:
            save_classifier_head(self.head, self.label_names, out_dir)


def lightness_needs_colour(problem: str) -> str:
    """The error of ``data.encoder_input=lightness`` (colorization) on grey images: what to prepare instead."""
    return (
        f"data.encoder_input=lightness needs colour (RGB) images, but {problem}: prepare colour photographs with "
        "`mmssl data prepare skimage-photos` and set data.name=skimage-photos (or give an RGB imagefolder/hub set)"
    )


def _json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def _is_vit(export_dir: Path) -> bool:
    """A transformers export (``model_type`` in its config) rather than a SmallResNet Hub-mixin one."""
    return "model_type" in _json(Path(export_dir) / "config.json")


def _fashion_mnist_task() -> tuple[ImageArrays, ImageArrays]:
    return load_fashion_mnist("train"), load_fashion_mnist("test")


TASKS.add("fashion-mnist", TaskSpec(_fashion_mnist_task, domain="image"))  # Xiao et al. (2017): 60k/10k, 10 classes


def _fashion_mnist_small_task() -> tuple[ImageArrays, ImageArrays]:
    return load_fashion_mnist_small("train"), load_fashion_mnist_small("test")


TASKS.add("fashion-mnist-small", TaskSpec(_fashion_mnist_small_task, domain="image"))  # embedded: 10k/2k, balanced


class ImageDomain:
    """Images as patch units (registered as ``image``)."""

    name = "image"
    unit_name = "patches"
    unit_kind = "grid"
    data_config = ImageDataConfig
    encoder_config = ImageEncoderConfig

    def smoke_overrides(self, data: ImageDataConfig) -> tuple[str, ...]:
        """``--set`` strings that make an image recipe a seconds-long run (the recipe smoke test, ``tests/recipes``):
        the 32 random 28x28 images of the test fixture ``tiny_images`` (``{tiny_images}`` is its path), a 32-wide
        ViT of the recipe's depth or a ResNet of width 4, no kNN monitor; with ``data.encoder_input=lightness``,
        the 32 random 32x32 RGB images of ``tiny_colour_images``."""
        return (
            "data.source=numpy",
            "data.path={tiny_colour_images}" if data.encoder_input == "lightness" else "data.path={tiny_images}",
            "encoder.hidden_size=32",
            "encoder.num_heads=2",
            "encoder.intermediate_size=64",
            "encoder.resnet_width=4",
            "train.batch_size=8",
            "train.warmup_steps=2",
            "train.log_every=1",
            "monitor.every=0",
        ) + (self.labelled_smoke_overrides() if data.labels_per_class is not None else ())

    def labelled_smoke_overrides(self) -> tuple[str, ...]:
        """A labelled recipe (S4L) cannot read the unlabelled ``tiny_images``: the first 64 images of the shipped
        ``fashion-mnist-small`` (prepared in seconds, no download), 2 labelled images per class, 4 per step."""
        return (
            "data.source=prepared",
            "data.name=fashion-mnist-small",
            "data.path=null",
            "data.split=train",
            "data.max_images=64",
            "data.labels_per_class=2",
            "data.labelled_batch_size=4",
        )

    def contract_overrides(self, needs: tuple[str, ...]) -> tuple[str, ...] | None:
        """Patches of the collated images read by a ViT; ``views``: two Fashion-MNIST views, ``pretext_labels``:
        RotNet's rotations, ``encode_visible``: a ViT (a ResNet cannot drop patches)."""
        given = {
            "views": ("data.views=fashion-mnist",),
            "pretext_labels": ("data.views=rotation",),
            "encode_visible": ("encoder.arch=vit",),
            "mask_token": ("encoder.arch=vit",),
            "sample_index": (),  # every collated batch carries it
            "supervised_labels": ("data.views=rotation", "data.labels_per_class=2", "data.labelled_batch_size=4"),
            "lightness": ("data.encoder_input=lightness",),  # smoke_overrides then give colour images
            "start_token": ("encoder.arch=imagegpt", "encoder.patch_size=4", "encoder.palette_size=8"),  # 7x7 tokens
            "feature_map": ("encoder.arch=resnet",),  # the DAE, VAE and context encoder recipes' encoder
        }
        return needs_overrides(needs, given, base=("data.views=none", "encoder.arch=vit"))

    def derived_objective_settings(self, data: ImageDataConfig, objective: str) -> dict[str, tuple[Any, str]]:
        """A pretext head classifies the transformations the data applies: RotNet's four rotations, or the
        jigsaw permutation set (``objective.num_classes``); a classifier on a labelled subset (S4L) the classes
        of the stored labels (``objective.num_labels``), where they can be read before loading."""
        if data.labels_per_class is not None and needs_labelled(objective):
            try:
                labels = stored_labels(data)
            except ValueError:  # no labels: check_recipe says so, naming data.labels_per_class
                return {}
            return {} if labels is None else {"num_labels": (int(labels.max()) + 1, "the labels of the images")}
        if objective != "pretext" or data.views not in PRETEXT_VIEWS:
            return {}
        if data.views == "rotation":
            return {"num_classes": (4, "data.views=rotation (four rotations)")}
        return {"num_classes": (data.jigsaw_permutations, f"data.jigsaw_permutations={data.jigsaw_permutations}")}

    def check_recipe(self, recipe: Any) -> None:
        """A labelled subset (S4L) is drawn for an objective that reads one, from labelled images of the training
        split, no more per class than a class holds (:func:`domains.image.labelled.check_labelled_source`).
        Multi-crop local views are cut into whole patches and fit in the image, and an objective that masks blocks
        of the patch grid (``check_grid`` of its config: I-JEPA) can mask that grid, where the image size is known
        without loading it (``data.image_size`` of a resized source, or the header of a prepared dataset);
        :meth:`pretrain_data` checks the loaded images."""
        data, enc = recipe.data, recipe.encoder
        check_labelled_need(recipe)
        check_labelled_source(data)
        if data.encoder_input == "lightness" and prepared_image_channels(data) == 1:
            raise ValueError(lightness_needs_colour(f"prepared dataset {data.name!r} is grayscale"))
        for key in crop_keys(data):
            if getattr(data, key) % enc.patch_size:
                raise ValueError(
                    f"data.{key}={getattr(data, key)} is not a multiple of encoder.patch_size={enc.patch_size}"
                )
        if enc.arch == "imagegpt":  # its tokens fit in its context (pretrain_data checks the loaded images)
            known = data.image_size if data.source in ("imagefolder", "hub") else prepared_image_side(data)
            if known is not None:
                check_positions(enc, known, known, f"{known}x{known} images")
        check_grid = getattr(recipe.objective, "check_grid", None)
        if not crop_keys(data) and check_grid is None:
            return
        resized = data.image_size if data.source in ("imagefolder", "hub") else None  # resized on load
        side = resized or prepared_image_side(data)
        if side is None:
            return
        check_crops_fit(data, side, side, f"{side}x{side}")
        if check_grid is not None:
            check_grid(side // enc.patch_size, side // enc.patch_size)

    def pretrain_data(self, recipe: Any, run_dir: Path, rank: int, world_size: int) -> PretrainData:
        data, enc = recipe.data, recipe.encoder
        arrays = load_images(data)
        _, c, h, w = arrays.images.shape
        if h % enc.patch_size or w % enc.patch_size:
            raise ValueError(
                f"encoder.patch_size={enc.patch_size} does not divide the {h}x{w} images of {arrays.source}"
            )
        check_crops_fit(data, h, w, f"{h}x{w} images of {arrays.source}")
        if data.encoder_input == "lightness" and c != 3:
            raise ValueError(lightness_needs_colour(f"{arrays.source} has {c}-channel images"))
        if getattr(enc, "arch", None) == "imagegpt":  # the palette: k-means of the training pixels (RUN/processor's)
            processor = palette_processor(arrays, enc, run_dir, recipe.train.seed)
        else:
            processor = make_processor(arrays, enc.patch_size, lightness_input=data.encoder_input == "lightness")
        if rank == 0:
            processor.save_pretrained(str(Path(run_dir) / "processor"))
        summary = {
            "data_source": data.source,
            "data_name": data.path or data.name,
            "images": len(arrays),
            "skipped_images": len(arrays.skipped),  # unreadable files, logged by the reader
            "image_shape": [c, h, w],
            "patch_size": enc.patch_size,
            "views": data.views,
        }
        transform = None if data.views == "none" else ViewTransform(data, processor)
        states = {}
        if data.labels_per_class is not None:  # S4L: every step adds a labelled minibatch
            stream = labelled_stream(arrays, data, recipe.train.batch_size, recipe.train.seed, rank, world_size)
            check_num_labels(recipe, stream.labels)
            transform, states["labelled"] = LabelledRotations(processor, stream), stream
            summary.update(
                labels_per_class=data.labels_per_class,
                labelled_images=len(stream),
                labelled_subset=subset_fingerprint(stream),
            )
        return PretrainData(
            ImageRows(arrays), image_collate(processor, with_labels=False), processor, transform, summary, states
        )

    def load_processor(self, path: Path) -> ViTImageProcessor:
        path = Path(path)
        folder = path / "processor" if (path / "processor").is_dir() else path
        if is_palette_processor(folder):  # encoder.arch=imagegpt: transformers' ImageGPTImageProcessor
            return load_palette_processor(folder)
        return ViTImageProcessor.from_pretrained(str(folder))

    def build_encoder(self, encoder_config: ImageEncoderConfig, processor: ViTImageProcessor) -> Encoder:
        if encoder_config.arch == "imagegpt":
            return build_imagegpt_encoder(encoder_config, processor)
        size = (int(processor.size["height"]), int(processor.size["width"]))
        return build_image_encoder(encoder_config, size, channels=len(processor.image_mean))

    # ------------------------------------------------------------------ downstream
    def task_names(self) -> tuple[str, ...]:
        """The ``--task`` names an image export takes: the image tasks, then ``hub`` (a Hub dataset or a saved
        one, with task.path)."""
        return (*registered_tasks(self.name), "hub")

    def task_data(self, task: Any) -> TaskData:
        if task.name == "hub":
            if not task.path:
                raise ValueError("task.path is required with --task hub")
            column = task.input_column or "image"
            train = load_hf_image_dataset(task.path, "train", image_column=column, label_column=task.label_column)
            test = load_hf_image_dataset(
                task.path, task.test_split or "test", image_column=column, label_column=task.label_column
            )
        else:
            train, test = TASKS.get(task.name)()
        if train.labels is None or test.labels is None:
            raise ValueError(f"task {task.name}: the images have no labels")
        if task.max_train_samples:
            n = min(task.max_train_samples, len(train))
            train = dataclasses.replace(train, images=train.images[:n], labels=train.labels[:n])
        names = train.label_names or [str(i) for i in range(int(train.labels.max()) + 1)]
        return TaskData(ImageRows(train), ImageRows(test), list(names))

    def task_labels(self, rows: ImageRows) -> np.ndarray:
        """The label tensor the rows' :class:`ImageArrays` hold (no image is read)."""
        if rows.arrays.labels is None:
            raise ValueError("the images have no labels")
        return rows.arrays.labels.numpy().astype(np.int64)

    def task_collate(self, processor: ViTImageProcessor, task: Any) -> Callable[[list[Any]], Batch]:
        return image_collate(processor, with_labels=True)

    def classifier(self, export_dir: Path, label_names: list[str], init: str) -> ImageClassifier:
        processor = self.load_processor(export_dir)
        if is_imagegpt_export(export_dir):
            raise ValueError(
                "mmssl finetune does not fine-tune an imagegpt export (it reads palette ids, not pixel_values): "
                "probe it with mmssl evaluate --protocol linear or knn"
            )
        if _is_vit(export_dir):
            config = AutoConfig.from_pretrained(
                str(export_dir),
                id2label=dict(enumerate(label_names)),
                label2id={name: i for i, name in enumerate(label_names)},
            )
            model = (
                AutoModelForImageClassification.from_config(config)
                if init == "random"
                else AutoModelForImageClassification.from_pretrained(str(export_dir), config=config)
            )
            return ImageClassifier(model, int(processor.patch_size))
        backbone = _fresh_resnet(export_dir) if init == "random" else SmallResNet.from_pretrained(str(export_dir))
        return ImageClassifier(
            backbone, int(processor.patch_size), nn.Linear(backbone.out_dim, len(label_names)), label_names
        )

    def load_encoder(self, export_dir: Path, random_init: bool = False) -> Encoder:
        processor = self.load_processor(export_dir)
        if is_imagegpt_export(export_dir):
            return load_imagegpt_encoder(export_dir, processor, random_init)
        if _is_vit(export_dir):
            if random_init:
                model = ViTModel(
                    AutoConfig.from_pretrained(str(export_dir)), add_pooling_layer=False, use_mask_token=True
                )
            else:
                model = ViTModel.from_pretrained(str(export_dir), add_pooling_layer=False, use_mask_token=True)
            return with_posterior_mean(ViTEncoder(model), export_dir, random_init)  # a VAE's: mu as the summary
        model = _fresh_resnet(export_dir) if random_init else SmallResNet.from_pretrained(str(export_dir))
        return with_posterior_mean(ResNetEncoder(model, int(processor.patch_size)), export_dir, random_init)

    def raw_features(self, data: TaskData, task: Any) -> RawFeatures:
        """The ``pixels`` baseline: each image's pixels scaled to [0, 1], flattened (:mod:`domains.image.baselines`)."""
        return pixel_baseline(data.train.arrays, data.test.arrays)


def _fresh_resnet(export_dir: Path) -> SmallResNet:
    return SmallResNet(**_json(Path(export_dir) / "config.json"))


DOMAINS.add("image", ImageDomain())
