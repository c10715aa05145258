"""SSL views: :class:`ViewConfig` (one view's settings), :func:`augment` / :func:`make_views`
(SimCLR/BYOL's op order on a batch, per-sample random parameters) and the papers' presets.

The ops themselves are in :mod:`domains.image.augment`.

Example::

    views = make_views(images, byol_views(size=96))  # 2 x [B, 3, 96, 96]
    crops = make_views(images, dino_views(n_local=6))  # 2 x [B, 3, 224, 224] + 6 x [B, 3, 96, 96]
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from domains.image.augment import (
    check_images,
    color_jitter,
    gaussian_blur,
    normalize,
    random_grayscale,
    resized_crop,
    sample_bernoulli,
    sample_blur_sigma,
    sample_crop_boxes,
    sample_jitter,
    solarize,
)

_UPPER_BOUNDS = {  # ViewConfig's scalar fields: each must lie in [0, bound]
    **dict.fromkeys(("flip_p", "jitter_p", "grayscale_p", "blur_p", "solarize_p"), 1.0),
    **dict.fromkeys(("brightness", "contrast", "saturation"), math.inf),
    "hue": 0.5,
}


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _float_tuple(name: str, value: Sequence[float] | None) -> tuple[float, ...] | None:
    if value is None and name in ("mean", "std"):
        return None
    if not isinstance(value, (tuple, list)) or not all(_is_number(v) for v in value):
        raise ValueError(f"ViewConfig.{name} must be a tuple of numbers, got {value!r}")
    return tuple(float(v) for v in value)


def _check_interval(name: str, value: tuple[float, ...], high: float) -> None:
    if len(value) != 2 or not 0 < value[0] <= value[1] <= high:
        raise ValueError(f"ViewConfig.{name} must be (min, max) with 0 < min <= max <= {high}, got {value}")


@dataclasses.dataclass(frozen=True)
class ViewConfig:
    """The augmentation of one view. The defaults are SimCLR's ImageNet view (Chen et al. 2020, appendix A).

    Attributes:
        size: side of the output crop in pixels.
        scale: range of the crop's area as a fraction of the image.
        ratio: range of the crop's aspect ratio (width / height), sampled log-uniformly.
        flip_p: probability of a horizontal flip.
        brightness, contrast, saturation: jitter strength s, factor uniform in ``[max(0, 1 - s), 1 + s]``.
        hue: hue shift uniform in ``[-hue, hue]``, at most 0.5.
        jitter_p: probability that a sample is colour-jittered at all.
        grayscale_p: probability of converting to grayscale (RGB only).
        blur_p: probability of a Gaussian blur; the kernel is :func:`blur_kernel_size` of the crop side.
        blur_sigma: range of the blur's sigma in pixels.
        solarize_p: probability of solarizing at :data:`SOLARIZE_THRESHOLD`.
        mean, std: per-channel normalisation applied last, or None for none.
    """

    size: int = 224
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    brightness: float = 0.8  # SimCLR colour-jitter strength 1: 0.8 s, 0.8 s, 0.8 s, 0.2 s
    contrast: float = 0.8
    saturation: float = 0.8
    hue: float = 0.2
    jitter_p: float = 0.8
    grayscale_p: float = 0.2
    blur_p: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_p: float = 0.0
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        for name in ("scale", "ratio", "blur_sigma", "mean", "std"):  # lists (YAML) -> hashable tuples
            object.__setattr__(self, name, _float_tuple(name, getattr(self, name)))
        if not _is_number(self.size) or not isinstance(self.size, int) or self.size < 1:
            raise ValueError(f"ViewConfig.size must be a positive int, got {self.size!r}")
        _check_interval("scale", self.scale, 1.0)
        _check_interval("ratio", self.ratio, math.inf)
        _check_interval("blur_sigma", self.blur_sigma, math.inf)
        for name, high in _UPPER_BOUNDS.items():
            value = getattr(self, name)
            if not _is_number(value) or not 0 <= value <= high:
                raise ValueError(f"ViewConfig.{name} must be a number in [0, {high}], got {value!r}")
        if (self.mean is None) != (self.std is None) or (self.mean is not None and len(self.mean) != len(self.std)):
            raise ValueError(
                f"ViewConfig.mean and ViewConfig.std must be given together, one value per channel, "
                f"got mean={self.mean}, std={self.std}"
            )
        if self.std is not None and min(self.std) <= 0:
            raise ValueError(f"ViewConfig.std must be > 0, got {self.std}")

    @property
    def jitters(self) -> bool:
        """Whether colour jitter can change anything."""
        return self.jitter_p > 0 and max(self.brightness, self.contrast, self.saturation, self.hue) > 0


def augment(images: Tensor, config: ViewConfig, generator: torch.Generator | None = None) -> Tensor:
    """One view of every image: crop + flip, jitter, grayscale, blur, solarize, normalise (BYOL's order).

    Ops whose probability or strength is 0 are skipped (and draw no random numbers).

    Args:
        images: ``[B, C, H, W]`` float in ``[0, 1]``, C = 1 or 3, on any device.
        config: the view's settings.
        generator: source of randomness on ``images.device``; torch's global RNG when None.

    Returns:
        ``[B, C, config.size, config.size]`` in the dtype of ``images``.
    """
    check_images(images)
    B, C, H, W = images.shape
    device = images.device
    boxes = sample_crop_boxes(B, H, W, config.scale, config.ratio, device, generator)
    x = resized_crop(images, boxes, config.size, sample_bernoulli(B, config.flip_p, device, generator))
    if config.jitters:
        x = color_jitter(
            x,
            sample_jitter(
                B, config.brightness, config.contrast, config.saturation, config.hue, config.jitter_p, device, generator
            ),
        )
    if config.grayscale_p > 0 and C == 3:
        x = random_grayscale(x, sample_bernoulli(B, config.grayscale_p, device, generator))
    if config.blur_p > 0:
        x = gaussian_blur(x, sample_blur_sigma(B, config.blur_p, config.blur_sigma, device, generator))
    if config.solarize_p > 0:
        x = solarize(x, sample_bernoulli(B, config.solarize_p, device, generator))
    if config.mean is not None:
        x = normalize(x, config.mean, config.std)
    return x


def make_views(images: Tensor, configs: Sequence[ViewConfig], generator: torch.Generator | None = None) -> list[Tensor]:
    """One independently augmented view of the batch per config, in the order of ``configs``.

    Consecutive equal configs (SimCLR's pair, multi-crop's local crops) are augmented as one
    batch of ``n * B`` images, which saves per-op overhead; every sample still gets its own draws.

    Returns:
        ``len(configs)`` tensors ``[B, C, size, size]``; sizes may differ between configs (multi-crop).
    """
    if not configs:
        raise ValueError("make_views needs at least one ViewConfig")
    views: list[Tensor] = []
    for config, group in itertools.groupby(configs):
        n = len(list(group))
        batch = images if n == 1 else images.repeat(n, 1, 1, 1)
        views.extend(augment(batch, config, generator).split(images.shape[0]))
    return views


# --------------------------------------------------------------------------- presets
def simclr_views(size: int = 224, strength: float = 1.0) -> tuple[ViewConfig, ViewConfig]:
    """SimCLR (Chen et al. 2020, appendix A): two views from one distribution, colour strength ``s``."""
    view = ViewConfig(
        size=size,
        brightness=0.8 * strength,
        contrast=0.8 * strength,
        saturation=0.8 * strength,
        hue=min(0.2 * strength, 0.5),
    )
    return view, view


def mocov2_views(size: int = 224) -> tuple[ViewConfig, ViewConfig]:
    """MoCo v2 (Chen et al. 2020b), also used by SimSiam (Chen & He 2021): crops of 20-100%, milder jitter."""
    view = ViewConfig(size=size, scale=(0.2, 1.0), brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1)
    return view, view


def byol_views(size: int = 224, scale: tuple[float, float] = (0.08, 1.0)) -> tuple[ViewConfig, ViewConfig]:
    """BYOL (Grill et al. 2020, table 6): asymmetric blur (p 1.0 / 0.1) and solarize (p 0.0 / 0.2).

    Barlow Twins (Zbontar et al. 2021), VICReg (Bardes et al. 2022) and DINO's global crops use the same pair.
    """
    first = ViewConfig(
        size=size, scale=scale, brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1, blur_p=1.0, solarize_p=0.0
    )
    return first, dataclasses.replace(first, blur_p=0.1, solarize_p=0.2)


def multi_crop_views(
    global_views: Sequence[ViewConfig], local_view: ViewConfig, n_local: int
) -> tuple[ViewConfig, ...]:
    """Multi-crop (Caron et al. 2020, SwAV): the global views, then ``n_local`` small crops from ``local_view``."""
    if n_local < 0:
        raise ValueError(f"n_local must be >= 0, got {n_local}")
    return (*global_views, *([local_view] * n_local))


def dino_views(
    n_local: int = 8,
    size: int = 224,
    local_size: int = 96,
    global_scale: tuple[float, float] = (0.4, 1.0),
    local_scale: tuple[float, float] = (0.05, 0.4),
) -> tuple[ViewConfig, ...]:
    """DINO (Caron et al. 2021, ``main_dino.py`` defaults): BYOL's pair on 40-100% crops plus 5-40% local crops.

    The local crops are flipped, colour-jittered (p 0.8), made grey (p 0.2) and blurred (p 0.5), never solarized.
    """
    local = ViewConfig(size=local_size, scale=local_scale, brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1)
    return multi_crop_views(byol_views(size, scale=global_scale), local, n_local)


def fashion_mnist_views(size: int = 28) -> tuple[ViewConfig, ViewConfig]:
    """Two views for 28x28 grayscale Fashion-MNIST, SimCLR's recipe adapted to small gray images.

    * crops of 20-100% of the area (MoCo v2's range, and SimSiam's on CIFAR-10): an 8% crop of a
      28x28 image is about 8x8 pixels, too small a piece of a garment to tell its class;
    * flips kept: every class (shirts, shoes, bags...) is a class of its mirror image too;
    * brightness and contrast 0.4 with p 0.8 (SimCLR's CIFAR-10 colour strength 0.5); saturation,
      hue and grayscale would be no-ops on one channel, so they are off;
    * no blur: SimCLR leaves it out for 32x32 CIFAR-10 (Chen et al. 2020, appendix), and the 3-tap
      kernel of a 28-pixel image would wipe out the little texture there is;
    * no solarize: on a black background it inverts the garment and keeps the background, so
      the silhouette itself changes.

    No normalisation; ``dataclasses.replace(view, mean=FASHION_MNIST_MEAN, std=FASHION_MNIST_STD)`` adds it.
    """
    view = ViewConfig(
        size=size, scale=(0.2, 1.0), brightness=0.4, contrast=0.4, saturation=0.0, hue=0.0, grayscale_p=0.0, blur_p=0.0
    )
    return view, view


VIEW_PRESETS: dict[str, Callable[..., tuple[ViewConfig, ...]]] = {
    "simclr": simclr_views,
    "mocov2": mocov2_views,
    "byol": byol_views,
    "dino": dino_views,
    "fashion-mnist": fashion_mnist_views,
}
