"""The image domain's per-step transform: augmented views (multi-crop included) or a pretext task, made on the
training device from the collated ``[0, 1]`` pixels."""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor
from transformers import ViTImageProcessor

from domains.image import pretext
from domains.image import views as augment_views
from domains.image.config import PRETEXT_VIEWS, ImageDataConfig
from domains.image.units import image_batch
from mmssl.types import Batch, Extra


def normalise(pixels: Tensor, processor: ViTImageProcessor) -> Tensor:
    """``[B, C, H, W]`` pixels in [0, 1] normalised by the processor's per-channel mean and std."""
    mean = torch.tensor(processor.image_mean, device=pixels.device, dtype=pixels.dtype).view(1, -1, 1, 1)
    std = torch.tensor(processor.image_std, device=pixels.device, dtype=pixels.dtype).view(1, -1, 1, 1)
    return (pixels - mean) / std


class ViewTransform:
    """The per-step transform: augmented views of ``extras[Extra.PIXELS]``, each a Batch of patch units.

    Runs on the batch's device with torch's global RNG (seeded per step by the trainer).
    """

    def __init__(self, cfg: ImageDataConfig, processor: ViTImageProcessor) -> None:
        self.processor = processor
        self.patch = int(processor.patch_size)
        self.cfg = cfg
        self.configs = () if cfg.views in PRETEXT_VIEWS else view_configs(cfg, processor)
        if cfg.views == "jigsaw":
            try:
                self.permutations = pretext.hamming_permutations(cfg.jigsaw_grid**2, cfg.jigsaw_permutations)
            except ValueError as e:
                raise ValueError(f"data.jigsaw_permutations: {e}") from None

    def __call__(self, batch: Batch) -> Batch:
        pixels = batch.extras[Extra.PIXELS]
        kept = {k: v for k, v in batch.extras.items() if k == Extra.SAMPLE_INDEX}  # DeepCluster's memory rows
        if self.cfg.views == "rotation":
            rotated, k = pretext.rotate(pixels)
            return image_batch(normalise(rotated, self.processor), self.patch, pretext_labels=k, **kept)
        if self.cfg.views == "jigsaw":  # on normalised pixels: the gaps are the mean
            puzzles, k = pretext.jigsaw(
                normalise(pixels, self.processor), self.permutations, self.cfg.jigsaw_grid, self.cfg.jigsaw_gap
            )
            return image_batch(puzzles, self.patch, pretext_labels=k, **kept)
        views = tuple(image_batch(v, self.patch) for v in augment_views.make_views(pixels, self.configs))
        first = views[0]
        return first.replace(views=views, extras=kept)


def view_configs(cfg: ImageDataConfig, processor: ViTImageProcessor) -> tuple[augment_views.ViewConfig, ...]:
    """The global views at the image's size (or ``data.global_size``), then ``data.local_crops`` local views
    (multi-crop), all normalised."""
    size = cfg.global_size or int(processor.size["height"])
    norm = {"mean": tuple(processor.image_mean), "std": tuple(processor.image_std)}
    if cfg.views == "crop":  # MAE (He et al. 2022): random resized crop 20-100% and flip, nothing else
        preset: tuple[augment_views.ViewConfig, ...] = (
            augment_views.ViewConfig(size=size, scale=(0.2, 1.0), jitter_p=0.0, grayscale_p=0.0, blur_p=0.0),
        )
        base = preset
    else:  # two views, or dino's two global views then its local view (dino_views(n_local=1))
        preset = augment_views.VIEW_PRESETS[cfg.views](size=size, **({"n_local": 1} if cfg.views == "dino" else {}))
        base = tuple(preset[min(i, 1)] for i in range(cfg.num_views))
    if cfg.crop_scale is not None:
        base = tuple(dataclasses.replace(v, scale=tuple(cfg.crop_scale)) for v in base)
    # ImageDomain.check_recipe: local_size is a multiple of the patch size and fits in the image
    local = preset[2] if len(preset) > 2 else base[-1]
    local = dataclasses.replace(local, size=cfg.local_size, scale=tuple(cfg.local_scale), **norm)
    return augment_views.multi_crop_views([dataclasses.replace(v, **norm) for v in base], local, cfg.local_crops)
