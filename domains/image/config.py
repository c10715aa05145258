"""The image domain's ``data:`` section: sources, view presets, multi-crop sizes, and the checks that need the
image size (a prepared dataset's header) before any data is loaded."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from safetensors import SafetensorError, safe_open

from domains.image.data import ARRAYS_FILE

VIEW_PRESETS = ("none", "crop", "fashion-mnist", "simclr", "mocov2", "byol", "dino", "rotation", "jigsaw")
PRETEXT_VIEWS = ("rotation", "jigsaw")
NO_VIEWS = ("none", *PRETEXT_VIEWS)  # presets that make no augmented views, so no multi-crop local views either


@dataclass(frozen=True)
class ImageDataConfig:
    """A recipe's ``data:`` section for images.

    ``views`` picks the per-step transform: ``none`` (no transform: the collated images as they are), ``crop``
    (random resized crop 20-100% + flip: MAE, SimMIM), ``fashion-mnist`` / ``simclr`` /
    ``mocov2`` / ``byol`` / ``dino`` (two augmented views, :mod:`domains.image.views` presets) or
    ``rotation`` (RotNet: each image rotated by 0/90/180/270 degrees) or ``jigsaw`` (a
    ``jigsaw_grid`` x ``jigsaw_grid`` puzzle shuffled by one of ``jigsaw_permutations``
    maximal-Hamming permutations); the pretext views put their labels in
    ``extras[Extra.PRETEXT_LABELS]`` (:mod:`domains.image.pretext`).

    Multi-crop (Caron et al. 2020): the global views are crops at the image's size, or ``global_size`` pixels
    (``crop_scale`` overrides their area range); ``local_crops`` adds that many ``local_size`` x ``local_size`` crops of
    ``local_scale`` of the area, augmented as the preset's local view (``dino``: DINO's) or its second view.

    ``encoder_input=lightness`` (colorization, Zhang et al. 2016): the units and the processor are the CIE
    lightness ``L*/100`` of RGB images (one channel), while ``extras[Extra.PIXELS]`` keeps the sRGB pixels.
    """

    source: Literal["prepared", "numpy", "imagefolder", "hub"] = "prepared"
    name: str = "fashion-mnist"  # source=prepared: a `mmssl data prepare` name; source=hub: dataset name or folder
    path: str | None = None  # source=numpy: .npy/.npz file; source=imagefolder: root with one folder per class
    split: str = "train"
    image_column: str = "image"
    image_size: int | None = None  # resize on load (imagefolder, hub); None keeps the stored size
    channels: int | None = None  # 1 or 3; None keeps the stored channels
    max_images: int | None = None  # use only the first N images (quick experiments)
    views: str = "fashion-mnist"
    num_views: int = 2  # views per image for the two-view presets (more: extra copies of the second view's config)
    local_crops: int = 0  # multi-crop: extra small views (Caron et al. 2020; DINO: 8 or 10)
    local_size: int = 12  # side of the local crops in pixels (a multiple of encoder.patch_size; DINO: 96 of 224)
    local_scale: tuple[float, float] = (0.05, 0.4)  # area range of the local crops (DINO: 0.05-0.4)
    crop_scale: tuple[float, float] | None = None  # override the preset's crop area range (DINO's globals: 0.4-1)
    global_size: int | None = None  # side of the augmented views in pixels (None: the image's; FixRes: train smaller)
    jigsaw_grid: int = 2  # views=jigsaw: tiles per side
    jigsaw_permutations: int = 24  # size of the permutation set (= objective.num_classes); 2x2 has 24
    jigsaw_gap: int = 2  # pixels trimmed from each tile at a random offset (no edge shortcuts)
    encoder_input: Literal["image", "lightness"] = "image"  # lightness: the encoder reads L*/100 of RGB images
    # S4L (Zhai et al. 2019): a fixed, class-balanced subset of N images of every class of data.split, drawn with
    # train.seed (mmssl.tasks.label_subset); with views=rotation every step adds labelled_batch_size of them, and
    # every unlabelled and labelled image is rotated all four ways (extras[Extra.SUPERVISED_LABELS] on the upright
    # labelled copies). Fashion-MNIST: 60 per class is 1% of the labels, 600 is 10%
    labels_per_class: int | None = None
    labelled_batch_size: int | None = None  # None: train.batch_size (S4L: equal labelled and unlabelled minibatches)

    def __post_init__(self) -> None:
        if self.views not in VIEW_PRESETS:
            raise ValueError(f"data.views must be one of {', '.join(VIEW_PRESETS)}, got {self.views!r}")
        if self.source in ("numpy", "imagefolder") and not self.path:
            raise ValueError(f"data.path is required when data.source={self.source}")
        if self.num_views < 1 or self.local_crops < 0:
            raise ValueError("data.num_views must be >= 1 and data.local_crops >= 0")
        self._check_multi_crop()
        if self.channels not in (None, 1, 3):
            raise ValueError(f"data.channels must be 1 or 3, got {self.channels}")
        if self.jigsaw_grid < 2:
            raise ValueError(f"data.jigsaw_grid must be >= 2, got {self.jigsaw_grid}")
        if self.encoder_input == "lightness" and (self.views != "none" or self.channels == 1):
            raise ValueError(
                "data.encoder_input=lightness feeds the L* channel of the collated colour images to the encoder "
                f"(colorization): set data.views=none (got {self.views}) and leave data.channels unset or 3"
            )
        self._check_labelled()

    def _check_multi_crop(self) -> None:
        for key in ("crop_scale", "local_scale"):
            scale = getattr(self, key)
            if scale is not None and (len(scale) != 2 or not 0 < scale[0] <= scale[1] <= 1):
                raise ValueError(f"data.{key} must be [min, max] with 0 < min <= max <= 1, got {list(scale)}")
        for key in ("local_size", "global_size"):
            side = getattr(self, key)
            if side is not None and side < 1:
                raise ValueError(f"data.{key} must be >= 1, got {side}")
        if self.global_size is not None and self.views in (*NO_VIEWS, "crop"):
            raise ValueError(
                f"data.global_size={self.global_size} resizes augmented views, and data.views={self.views} makes "
                "none at another size: set data.views to a view preset (fashion-mnist, simclr, byol, dino, ...) or "
                "remove data.global_size"
            )
        if self.local_crops and self.views in NO_VIEWS:
            raise ValueError(
                f"data.local_crops={self.local_crops} adds local views to augmented views, and data.views={self.views} "
                "makes none: set data.views to a view preset (fashion-mnist, simclr, byol, dino, ...) or local_crops=0"
            )

    def _check_labelled(self) -> None:
        """A labelled subset is drawn for rotation batches (S4L-Rotation) only, of at least one image per class."""
        for key in ("labels_per_class", "labelled_batch_size"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ValueError(f"data.{key} must be 1 or more, got {value}")
        if self.labels_per_class is not None and self.views != "rotation":
            raise ValueError(
                f"data.labels_per_class={self.labels_per_class} adds labelled images to rotation batches "
                f"(S4L-Rotation), and data.views={self.views}: set data.views=rotation"
            )
        if self.labelled_batch_size is not None and self.labels_per_class is None:
            raise ValueError("data.labelled_batch_size is set without data.labels_per_class: set both or neither")


def crop_keys(data: ImageDataConfig) -> tuple[str, ...]:
    """The crop sides a recipe sets: ``local_size`` with multi-crop, ``global_size`` when given."""
    return ("local_size",) * bool(data.local_crops) + ("global_size",) * (data.global_size is not None)


def check_crops_fit(data: ImageDataConfig, height: int, width: int, images: str) -> None:
    """Local crops and resized global views are no larger than the images."""
    for key in crop_keys(data):
        if getattr(data, key) > min(height, width):
            raise ValueError(
                f"data.{key}={getattr(data, key)} is larger than the {images}: crops are cut from the image "
                f"(DINO's local crops: 96 of 224 pixels); lower data.{key}"
            )


def prepared_image_side(data: ImageDataConfig) -> int | None:
    """The side of a prepared dataset's square images, read from its file's header (None: not prepared yet,
    another source, or not square)."""
    from mmssl.datasets import dataset_dir, is_prepared

    if data.source != "prepared" or not is_prepared(data.name):
        return None
    path = dataset_dir(data.name) / data.split / ARRAYS_FILE
    try:
        with safe_open(str(path), framework="pt") as handle:
            *_, h, w = handle.get_slice("images").get_shape()
    except (OSError, KeyError, SafetensorError):  # the data loader reports an unreadable file
        return None
    return h if h == w else None


def prepared_image_channels(data: ImageDataConfig) -> int | None:
    """The channels of a prepared dataset's images, read from its file's header (None: not prepared yet, another
    source, or unreadable)."""
    from mmssl.datasets import dataset_dir, is_prepared

    if data.source != "prepared" or not is_prepared(data.name):
        return None
    path = dataset_dir(data.name) / data.split / ARRAYS_FILE
    try:
        with safe_open(str(path), framework="pt") as handle:
            return handle.get_slice("images").get_shape()[1]
    except (OSError, KeyError, SafetensorError, IndexError):  # the data loader reports an unreadable file
        return None
