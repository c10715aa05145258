"""Image sets in memory (:class:`ImageArrays`), readers for common sources, and a fast cache format.

Every source becomes one :class:`ImageArrays` (``uint8 [N, C, H, W]`` + optional labels):

* :func:`read_idx` -- IDX files (MNIST, Fashion-MNIST), gzip-compressed or not;
* :func:`load_numpy` -- a ``.npy`` / ``.npz`` file or an array, channels-first or -last;
* :func:`load_imagefolder` -- ``root/<class>/<image>``, decoded with PIL;
* :func:`load_hf_image_dataset` -- a Hugging Face dataset (Hub name or ``save_to_disk`` folder).

:func:`save_arrays` writes one ``images.safetensors`` per split: the raw ``uint8`` images
and ``int64`` labels, with the source and class names in the safetensors header. It loads
in milliseconds (no decoding, no Arrow-to-tensor conversion), pickles nothing and keeps
tensors and metadata in one atomically written file. Fixed-size images are already small
uncompressed (Fashion-MNIST: 55 MB), so a compressed format would only slow loading down.
"""

from __future__ import annotations

import gzip
import json
import logging
import math
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import datasets
import numpy as np
import numpy.typing as npt
import torch
from PIL import Image
from safetensors import SafetensorError, safe_open
from safetensors.torch import save
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]
Size = int | tuple[int, int]
ARRAYS_FILE = "images.safetensors"
FORMAT_NAME = "mmssl.image_arrays"
FORMAT_VERSION = "1"
IDX_DTYPES = {  # IDX type byte -> big-endian numpy dtype (http://yann.lecun.com/exdb/mnist/)
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
GRAYSCALE_MODES = frozenset({"1", "L", "LA", "I", "I;16", "F"})  # PIL modes decoded to one channel
UNREADABLE_IMAGE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)  # PIL raises all four


@dataclass(frozen=True, eq=False, kw_only=True)
class ImageArrays:
    """An image set held in memory: the contract between image readers and the image pipeline.

    Attributes:
        images: ``uint8 [N, C, H, W]`` pixels, ``C`` = 1 (grayscale) or 3 (RGB).
        labels: ``int64 [N]`` class indices, or ``None`` for an unlabelled set.
        label_names: class names indexed by label (``label_names[labels[i]]``), or ``None``.
        source: where the images came from, for error messages and model cards.
        skipped: ``(file, reason)`` of every file the reader could not decode and left out
            (``len(skipped)`` is the count that goes into the run's data summary).

    Raises:
        ValueError: a field has the wrong type, dtype, shape or range (the message names it).
    """

    images: torch.Tensor
    labels: torch.Tensor | None = None
    label_names: list[str] | None = None
    source: str
    skipped: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.source, str) or not self.source:
            raise ValueError(f"ImageArrays.source must be a non-empty string, got {self.source!r}")
        where = f"ImageArrays({self.source})"
        images = self.images
        if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"{where}: images must be a uint8 tensor [N, C, H, W], got {_describe(images)}")
        if images.shape[0] == 0 or images.shape[1] not in (1, 3) or min(images.shape[2:]) == 0:
            raise ValueError(f"{where}: images must be [N>0, C=1|3, H>0, W>0], got {list(images.shape)}")
        if self.labels is not None:
            self._check_labels(where)
        elif self.label_names is not None:
            raise ValueError(f"{where}: label_names given without labels")

    def _check_labels(self, where: str) -> None:
        labels = self.labels
        if not isinstance(labels, torch.Tensor) or labels.dtype != torch.int64 or labels.ndim != 1:
            raise ValueError(f"{where}: labels must be an int64 tensor [N], got {_describe(labels)}")
        if len(labels) != len(self.images):
            raise ValueError(f"{where}: {len(labels)} labels for {len(self.images)} images")
        if int(labels.min()) < 0:
            raise ValueError(f"{where}: labels must be >= 0, found {int(labels.min())}")
        names = self.label_names
        if names is None:
            return
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names) or len(set(names)) != len(names):
            raise ValueError(f"{where}: label_names must be a list of distinct strings, got {names!r}")
        if int(labels.max()) >= len(names):
            raise ValueError(f"{where}: label {int(labels.max())} has no name (only {len(names)} label_names)")

    def __len__(self) -> int:
        return self.images.shape[0]


def _describe(value: object) -> str:
    if isinstance(value, torch.Tensor):
        return f"{value.dtype} tensor of shape {list(value.shape)}"
    return type(value).__name__


# --------------------------------------------------------------------------- IDX
def read_idx_array(path: PathLike) -> np.ndarray:
    """Read one IDX file (gzip-compressed or not) into a native-endian numpy array.

    IDX: a big-endian magic (two zero bytes, a dtype byte, the number of dimensions),
    then one big-endian ``uint32`` per dimension, then the data in row-major order.

    Raises:
        ValueError: bad magic, truncated header or data, trailing bytes, corrupt gzip
            stream (the message names the file).
    """
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise ValueError(f"{path}: truncated or corrupt gzip stream ({exc})") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_DTYPES or raw[3] == 0:
        codes = ", ".join(f"0x{code:02x}" for code in IDX_DTYPES)
        raise ValueError(
            f"{path}: bad IDX magic {raw[:4].hex() or '(empty file)'}: expected two zero bytes, "
            f"a type byte in ({codes}) and a dimension count > 0"
        )
    dtype, ndim = IDX_DTYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header: {ndim} dimensions need {header} bytes, file has {len(raw)}")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    expected, actual = math.prod(shape) * dtype.itemsize, len(raw) - header
    if actual != expected:
        problem = "truncated IDX data" if actual < expected else f"{actual - expected:,} bytes after the IDX data"
        raise ValueError(
            f"{path}: {problem}: header declares {' x '.join(map(str, shape))} {dtype.name} "
            f"= {expected:,} bytes, file holds {actual:,}"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def read_idx(
    images_path: PathLike,
    labels_path: PathLike | None = None,
    *,
    label_names: list[str] | None = None,
    source: str | None = None,
) -> ImageArrays:
    """Read an IDX image file (``uint8 [N, H, W]``) and optionally its IDX label file (``[N]``).

    Args:
        images_path: e.g. ``train-images-idx3-ubyte.gz``.
        labels_path: e.g. ``train-labels-idx1-ubyte.gz``; ``None`` for unlabelled images.
        label_names: class names indexed by label.
        source: provenance string; defaults to ``images_path``.

    Returns:
        Grayscale ``ImageArrays`` with images ``[N, 1, H, W]``.

    Raises:
        ValueError: a file is not valid IDX, holds the wrong kind of array, or the
            numbers of images and labels differ (the message names the file(s)).
    """
    pixels = read_idx_array(images_path)
    if pixels.dtype != np.uint8 or pixels.ndim != 3:
        raise ValueError(f"{images_path}: expected uint8 images [N, H, W], got {pixels.dtype} {list(pixels.shape)}")
    labels = None
    if labels_path is not None:
        values = read_idx_array(labels_path)
        if values.ndim != 1 or values.dtype.kind not in "iu":
            raise ValueError(f"{labels_path}: expected integer labels [N], got {values.dtype} {list(values.shape)}")
        if len(values) != len(pixels):
            raise ValueError(f"{labels_path} has {len(values):,} labels but {images_path} has {len(pixels):,} images")
        labels = torch.from_numpy(values.astype(np.int64))
    return ImageArrays(
        images=torch.from_numpy(pixels).unsqueeze(1),
        labels=labels,
        label_names=label_names,
        source=source or str(images_path),
    )


# --------------------------------------------------------------------------- numpy
def load_numpy(
    path_or_array: PathLike | np.ndarray,
    labels: npt.ArrayLike | None = None,
    *,
    layout: Literal["auto", "NCHW", "NHWC"] = "auto",
    label_names: list[str] | None = None,
    source: str | None = None,
) -> ImageArrays:
    """Load ``uint8`` images from an array, a ``.npy`` file or a ``.npz`` with ``images``/``labels``.

    Accepted image shapes: ``[N, H, W]`` (grayscale), ``[N, C, H, W]`` and ``[N, H, W, C]``
    with ``C`` = 1 or 3. ``layout="auto"`` tells the last two apart by where the 1 or 3 is.

    Args:
        path_or_array: the images, or a ``.npy`` / ``.npz`` file holding them.
        labels: integer labels ``[N]``; for a ``.npz`` they may come from its ``labels`` key instead.
        layout: ``"NCHW"`` / ``"NHWC"`` when ``"auto"`` cannot decide (e.g. 3x3x3 images).
        label_names: class names indexed by label.
        source: provenance string; defaults to the file name or ``"numpy array"``.

    Raises:
        ValueError: unsupported file type, missing ``images`` key, labels given twice,
            non-uint8 images, an unsupported or ambiguous shape, non-integer labels.
    """
    if isinstance(path_or_array, np.ndarray):
        array, where = path_or_array, source or "numpy array"
    else:
        path = Path(path_or_array)
        array, stored_labels = _read_numpy_file(path)
        where = source or str(path)
        if stored_labels is not None and labels is not None:
            raise ValueError(f"{path}: has a 'labels' array and labels= was passed too; pass only one")
        labels = stored_labels if labels is None else labels
    tensor_labels = None
    if labels is not None:
        values = np.asarray(labels)
        if values.ndim != 1 or values.dtype.kind not in "iu":
            raise ValueError(f"{where}: labels must be integers [N], got {values.dtype} {list(values.shape)}")
        tensor_labels = torch.from_numpy(values.astype(np.int64))
    images = torch.from_numpy(_to_nchw(array, layout, where))
    return ImageArrays(images=images, labels=tensor_labels, label_names=label_names, source=where)


def _read_numpy_file(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """Return ``(images, labels or None)`` from a ``.npy`` or ``.npz`` file."""
    if path.suffix == ".npy":
        return np.load(path, allow_pickle=False), None
    if path.suffix != ".npz":
        raise ValueError(f"{path}: expected a .npy or .npz file")
    with np.load(path, allow_pickle=False) as archive:
        if "images" not in archive.files:
            raise ValueError(f"{path}: no 'images' array; arrays in the file: {', '.join(archive.files) or 'none'}")
        return archive["images"], archive["labels"] if "labels" in archive.files else None


def _to_nchw(array: np.ndarray, layout: Literal["auto", "NCHW", "NHWC"], where: str) -> np.ndarray:
    """Return ``array`` as a contiguous ``uint8 [N, C, H, W]`` array (see :func:`load_numpy`)."""
    if array.dtype != np.uint8:
        raise ValueError(
            f"{where}: images must be uint8 (0-255), got {array.dtype}; "
            "convert floats in [0, 1] with (x * 255).round().astype(np.uint8)"
        )
    if array.ndim == 3:
        return np.ascontiguousarray(array[:, None])
    if array.ndim != 4:
        raise ValueError(f"{where}: images must be [N, H, W], [N, C, H, W] or [N, H, W, C], got {list(array.shape)}")
    if layout == "auto":
        first, last = array.shape[1] in (1, 3), array.shape[3] in (1, 3)
        if first == last:
            hint = "pass layout='NCHW' or 'NHWC'" if first else "channels must be 1 or 3"
            raise ValueError(f"{where}: cannot tell where the channels are in shape {list(array.shape)}: {hint}")
        layout = "NCHW" if first else "NHWC"
    if layout not in ("NCHW", "NHWC"):
        raise ValueError(f"{where}: unknown layout {layout!r}; use 'auto', 'NCHW' or 'NHWC'")
    if layout == "NHWC":
        array = array.transpose(0, 3, 1, 2)
    if array.shape[1] not in (1, 3):
        raise ValueError(f"{where}: images must have 1 or 3 channels, got {array.shape[1]} ({layout})")
    return np.ascontiguousarray(array)


# --------------------------------------------------------------------------- decoded images
def _pil_to_hwc(image: Image.Image, size: Size | None, channels: Literal[1, 3] | None) -> np.ndarray:
    """Convert a PIL image to ``uint8 [H, W, C]``: grayscale or RGB, resized if asked.

    Alpha is dropped; PIL clips 16-bit and float grayscale values to 0-255.
    """
    if channels is None:
        channels = 1 if image.mode in GRAYSCALE_MODES else 3
    image = image.convert("L" if channels == 1 else "RGB")
    if size is not None:
        height, width = (size, size) if isinstance(size, int) else size
        image = image.resize((width, height), Image.Resampling.BILINEAR)
    pixels = np.asarray(image, dtype=np.uint8)
    return pixels[:, :, None] if pixels.ndim == 2 else pixels


def _stack_hwc(pixels: list[np.ndarray], names: list[str], where: str) -> torch.Tensor:
    """Stack ``[H, W, C]`` images into ``[N, C, H, W]``; grayscale ones are repeated to RGB if any is RGB."""
    height, width = pixels[0].shape[:2]
    for array, name in zip(pixels, names):
        if array.shape[:2] != (height, width):
            raise ValueError(
                f"{where}: {names[0]} is {height}x{width} but {name} is {array.shape[0]}x{array.shape[1]}; "
                "resize every image to N x N pixels with --set data.image_size=N"
            )
    gray = sum(array.shape[2] == 1 for array in pixels)
    if 0 < gray < len(pixels):
        logger.info(
            "%s: %d of %d images are grayscale and the others RGB: converted the grayscale ones to RGB "
            "(gray copied to all three channels); --set data.channels=1 trains on grayscale instead",
            where,
            gray,
            len(pixels),
        )
        pixels = [np.repeat(array, 3, axis=2) if array.shape[2] == 1 else array for array in pixels]
    return torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2).contiguous()


def load_imagefolder(
    root: PathLike, *, size: Size | None = None, channels: Literal[1, 3] | None = None
) -> tuple[ImageArrays, dict[Path, str]]:
    """Load ``root/<class>/<image>`` (torchvision ``ImageFolder`` layout) with PIL.

    Classes are the sorted subfolder names; files are found recursively in each class
    folder by the extensions PIL knows. A file PIL cannot read is logged with its path,
    skipped, and returned in the second element.

    Args:
        root: the folder holding one subfolder per class.
        size: resize every image to ``size`` (int: square) or ``(H, W)``; ``None``
            requires all images to have the same size.
        channels: 1 (grayscale) or 3 (RGB); ``None`` keeps grayscale only if every image is.

    Returns:
        ``(arrays, skipped)``: the images with labels and class names, and
        ``{path: reason}`` for every unreadable file (``len(skipped)`` is the count).

    Raises:
        FileNotFoundError: ``root`` does not exist.
        ValueError: ``root`` is a file, no class subfolders, a class folder without image
            files, no readable image at all, or images of different sizes with ``size=None``.
    """
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"data.path={root}: no such folder (expected root/<class>/<image>)")
    if not root.is_dir():
        raise ValueError(f"data.path={root} is a file, not a folder (expected root/<class>/<image>)")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise ValueError(f"{root}: no class subfolders (expected root/<class>/<image>)")
    extensions = {ext.lower() for ext in Image.registered_extensions()}
    files: list[tuple[Path, int]] = []
    for label, name in enumerate(classes):
        found = sorted(
            p
            for p in (root / name).rglob("*")
            if p.is_file() and p.suffix.lower() in extensions and not p.name.startswith(".")
        )
        if not found:
            raise ValueError(f"{root / name}: class folder has no image files (.png, .jpg, ... any format PIL reads)")
        files += [(path, label) for path in found]
    pixels, labels, kept, skipped = [], [], [], {}
    for path, label in tqdm(files, desc=f"decoding {root.name}", unit="img", leave=False):
        try:
            with Image.open(path) as image:
                pixels.append(_pil_to_hwc(image, size, channels))
        except UNREADABLE_IMAGE_ERRORS as exc:
            skipped[path] = f"{type(exc).__name__}: {exc}"
            logger.warning("skipping unreadable image %s (%s)", path, skipped[path])
            continue
        labels.append(label)
        kept.append(str(path))
    if skipped:
        logger.warning("%s: skipped %d of %d image files (unreadable)", root, len(skipped), len(files))
    if not pixels:
        raise ValueError(f"{root}: none of the {len(files)} image files could be read")
    arrays = ImageArrays(
        images=_stack_hwc(pixels, kept, str(root)),
        labels=torch.tensor(labels, dtype=torch.int64),
        label_names=classes,
        source=str(root),
        skipped=tuple((str(path), why) for path, why in skipped.items()),
    )
    return arrays, skipped


def load_hf_image_dataset(
    name_or_path: PathLike,
    split: str,
    image_column: str = "image",
    label_column: str | None = "label",
    streaming: bool = False,
    *,
    size: Size | None = None,
    channels: Literal[1, 3] | None = None,
    limit: int | None = None,
) -> ImageArrays:
    """Load one split of a Hugging Face image dataset into memory.

    Args:
        name_or_path: a Hub dataset name (offline: from the local cache), a folder written by
            ``save_to_disk`` (a ``DatasetDict``, or one ``Dataset`` taken as the split), or a
            local data folder ``datasets.load_dataset`` understands.
        split: e.g. ``"train"``.
        image_column: column of ``datasets.Image`` values.
        label_column: column of ``ClassLabel`` or integer labels; ``None`` for no labels.
        streaming: iterate without materializing the whole dataset first (with ``limit``).
        size: resize to ``size`` (int: square) or ``(H, W)``; ``None`` needs equal sizes.
        channels: 1 or 3; ``None`` keeps grayscale only if every image is.
        limit: keep only the first ``limit`` examples.

    Raises:
        ValueError: missing split or column (the message lists the available ones), a
            label column that is not integer class ids, or a value that is not an image.
    """
    where = f"{name_or_path} (split {split!r})"
    dataset = _open_hf_split(name_or_path, split, streaming)
    columns = _hf_columns(dataset, where)
    for role, column in (("image", image_column), ("label", label_column)):
        if column is not None and column not in columns:
            raise ValueError(f"{where}: no {role} column {column!r}; available columns: {', '.join(columns)}")
    label_names = _hf_label_names(dataset.features, label_column, where)
    dataset = dataset.select_columns([c for c in (image_column, label_column) if c is not None])
    if limit is not None:
        dataset = dataset.take(limit)
    pixels, labels = [], []
    for row in tqdm(dataset, desc=f"decoding {where}", unit="img", leave=False):
        image = row[image_column]
        if not isinstance(image, Image.Image):
            raise ValueError(f"{where}: column {image_column!r} holds {type(image).__name__}, expected images")
        pixels.append(_pil_to_hwc(image, size, channels))
        if label_column is not None:
            labels.append(_hf_label(row[label_column], label_column, where))
    if not pixels:
        raise ValueError(f"{where}: no examples")
    return ImageArrays(
        images=_stack_hwc(pixels, [f"example {i}" for i in range(len(pixels))], where),
        labels=None if label_column is None else torch.tensor(labels, dtype=torch.int64),
        label_names=label_names,
        source=where,
    )


def _open_hf_split(name_or_path: PathLike, split: str, streaming: bool) -> datasets.Dataset | datasets.IterableDataset:
    path = Path(name_or_path)
    if not ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file()):
        return datasets.load_dataset(str(name_or_path), split=split, streaming=streaming)
    loaded = datasets.load_from_disk(str(path))
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise ValueError(f"{path}: no split {split!r}; available splits: {', '.join(loaded)}")
        loaded = loaded[split]
    elif loaded.split is not None and str(loaded.split) != split:
        raise ValueError(f"{path}: holds the {str(loaded.split)!r} split, not {split!r}")
    return loaded.to_iterable_dataset() if streaming else loaded


def _hf_columns(dataset: datasets.Dataset | datasets.IterableDataset, where: str) -> list[str]:
    """Column names; a stream without declared features is asked for its first example."""
    if dataset.column_names is not None:
        return list(dataset.column_names)
    first = next(iter(dataset), None)
    if first is None:
        raise ValueError(f"{where}: no examples")
    return list(first)


def _hf_label_names(features: datasets.Features | None, column: str | None, where: str) -> list[str] | None:
    """Class names of a ``ClassLabel`` column; ``None`` for plain integers (or no labels)."""
    if column is None or features is None:
        return None
    feature = features[column]
    if isinstance(feature, datasets.ClassLabel):
        return list(feature.names)
    if isinstance(feature, datasets.Value) and feature.dtype.startswith(("int", "uint")):
        return None
    raise ValueError(
        f"{where}: label column {column!r} is {feature}, expected integer class ids; "
        f"encode strings with dataset.class_encode_column({column!r})"
    )


def _hf_label(value: object, column: str, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ValueError(f"{where}: label column {column!r} holds {value!r}, expected an integer class id")
    return int(value)


# --------------------------------------------------------------------------- cache format
def save_arrays(arrays: ImageArrays, out_dir: PathLike) -> Path:
    """Write ``arrays`` to ``out_dir/images.safetensors`` (atomically) and return that path.

    The file holds ``images`` (``uint8 [N, C, H, W]``), ``labels`` (``int64 [N]``, if any)
    and, in its header, ``source`` and ``label_names`` (JSON).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {"images": arrays.images.contiguous()}
    if arrays.labels is not None:
        tensors["labels"] = arrays.labels.contiguous()
    metadata = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "source": arrays.source,
        "label_names": json.dumps(arrays.label_names),
    }
    path = out / ARRAYS_FILE
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(save(tensors, metadata=metadata))  # not save_file: it creates files mode 0600
    os.replace(tmp, path)
    return path


def load_arrays(directory: PathLike) -> ImageArrays:
    """Load what :func:`save_arrays` wrote into ``directory``.

    Raises:
        FileNotFoundError: ``directory/images.safetensors`` does not exist.
        ValueError: the file is not a readable safetensors file written by :func:`save_arrays`.
    """
    path = Path(directory) / ARRAYS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: {directory} was not written by save_arrays")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata, keys = handle.metadata() or {}, set(handle.keys())
            tensors = {key: handle.get_tensor(key) for key in keys & {"images", "labels"}}
    except SafetensorError as exc:
        raise ValueError(f"{path}: not a readable safetensors file ({exc})") from exc
    if metadata.get("format") != FORMAT_NAME or metadata.get("version") != FORMAT_VERSION:
        found = f"{metadata.get('format')!r} version {metadata.get('version')!r}"
        raise ValueError(f"{path}: header says {found}, expected {FORMAT_NAME!r} version {FORMAT_VERSION!r}")
    if "images" not in tensors:
        raise ValueError(f"{path}: no 'images' tensor; tensors in the file: {', '.join(sorted(keys)) or 'none'}")
    return ImageArrays(
        images=tensors["images"],
        labels=tensors.get("labels"),
        label_names=json.loads(metadata.get("label_names", "null")),
        source=metadata.get("source", str(path)),
    )
