"""Offline image datasets for ``mmssl data prepare NAME``: Fashion-MNIST from Debian.

``fashion-mnist`` reads the original IDX files of the Debian package ``dataset-fashion-mnist``
(Xiao, Rasul & Vollgraf 2017, "Fashion-MNIST: a Novel Image Dataset for Benchmarking
Machine Learning Algorithms", arXiv:1708.07747; MIT licence): from
``/usr/share/datasets/fashion-mnist`` when the package is installed, otherwise from the
``.deb`` fetched and unpacked without installing it (:mod:`domains.packages`). It writes
``train/`` (60,000 images) and ``test/`` (10,000) with :func:`domains.image.data.save_arrays`:
``uint8 [N, 1, 28, 28]`` images, ``int64`` labels and the ten class names of the paper.

``fashion-mnist-small`` ships inside the package (``domains/image/data/fashion-mnist-small.npz``, see the
README there), so the first run needs no system package and no download: a class-balanced, seeded subset of
1,000 training images per class (10,000) and 200 test images per class (2,000), read by
:func:`load_fashion_mnist_small`. Regenerate it with ``python -m domains.image.builders --write-embedded``.

``skimage-photos`` (colour images, for colorization) cuts the seven colour photographs that ship inside the
scikit-image wheel (``skimage/data``: CC0 or public domain, see :data:`SKIMAGE_PHOTOS_FILES`; the wheel is read with
``pip download --no-deps``, nothing is installed) into ``32 x 32`` RGB crops at three scales. The split is by
photograph: the test crops come from :data:`SKIMAGE_TEST_PHOTOS`, never trained on. Labels are the photograph.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import io
import os
import re
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from domains.image.data import ImageArrays, load_arrays, read_idx, read_idx_array, save_arrays
from domains.packages import extracted_debs, read_wheel_members
from mmssl.datasets import prepare

FASHION_MNIST = "fashion-mnist"
FASHION_MNIST_PACKAGE = "dataset-fashion-mnist"
FASHION_MNIST_DIR = "usr/share/datasets/fashion-mnist"  # relative to the file-system (or unpacked .deb) root
FASHION_MNIST_CHANGELOG = f"usr/share/doc/{FASHION_MNIST_PACKAGE}/changelog.Debian.gz"
FASHION_MNIST_CLASSES = (  # label order of the paper's Table 1
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
FASHION_MNIST_SPLITS = {"train": ("train", 60_000), "test": ("t10k", 10_000)}  # split -> (file prefix, images)
FASHION_MNIST_SMALL = "fashion-mnist-small"
FASHION_MNIST_SMALL_FILE: Path = Path(__file__).resolve().parent / "data" / "fashion-mnist-small.npz"
FASHION_MNIST_SMALL_PER_CLASS = {"train": 1_000, "test": 200}  # images per class drawn from each official split
FASHION_MNIST_SMALL_SEED = 0
SKIMAGE_PHOTOS = "skimage-photos"
SKIMAGE_REQUIREMENT = "scikit-image==0.26.0"
SKIMAGE_PHOTOS_FILES = {  # photograph -> file in the wheel; licences from skimage/data/_fetchers.py
    "astronaut": "skimage/data/astronaut.png",  # NASA, public domain
    "chelsea": "skimage/data/chelsea.png",  # Stefan van der Walt, CC0
    "coffee": "skimage/data/coffee.png",  # Rachel Michetti, CC0
    "rocket": "skimage/data/rocket.jpg",  # SpaceX, public domain
    "hubble_deep_field": "skimage/data/hubble_deep_field.jpg",  # NASA, public domain
    "retina": "skimage/data/retina.jpg",  # Mikael Häggström, CC0
    "immunohistochemistry": "skimage/data/ihc.png",  # CMMI, "no known copyright restrictions"
}
SKIMAGE_TEST_PHOTOS = ("chelsea",)  # held out: test crops come from photographs never trained on
CROP_SIDE = 32  # pixels per crop side
CROP_BASE_SIDE = 384  # each photograph's shorter side is first resized to this
CROP_SCALES = (1.0, 0.5, 0.25)  # then cut at these scales of the base size (finer to coarser views)
CROP_STRIDE = 16  # crops overlap by half
CROP_MIN_STD = 4.0  # crops flatter than this (std of the grey value, uint8 units) are dropped: black borders, sky


def fashion_mnist_idx_files(prefix: str) -> tuple[str, str]:
    """File names of the IDX images and labels for a prefix (``train`` or ``t10k``)."""
    return f"{prefix}-images-idx3-ubyte.gz", f"{prefix}-labels-idx1-ubyte.gz"


def _debian_version(root: Path) -> str:
    """The package version from the first line of its Debian changelog, e.g. ``0.0~git20200523.55506a9-1``."""
    try:
        with gzip.open(root / FASHION_MNIST_CHANGELOG, "rt", encoding="utf-8") as handle:
            first_line = handle.readline()
    except OSError:
        return "version unknown"
    match = re.match(r"\S+ \(([^)]+)\)", first_line)
    return match.group(1) if match else "version unknown"


@contextlib.contextmanager
def fashion_mnist_files() -> Iterator[tuple[Path, str]]:
    """Yield the folder holding the four Fashion-MNIST IDX files and the package version.

    Uses the installed package when all four files are there, otherwise downloads and
    unpacks the ``.deb`` into a temporary folder that is deleted when the context exits.

    Raises:
        RuntimeError: apt-get/dpkg failed, or the package no longer ships the files.
    """
    names = [name for prefix, _ in FASHION_MNIST_SPLITS.values() for name in fashion_mnist_idx_files(prefix)]
    installed = Path("/") / FASHION_MNIST_DIR
    if all((installed / name).is_file() for name in names):
        yield installed, _debian_version(Path("/"))
        return
    with extracted_debs([FASHION_MNIST_PACKAGE]) as root:
        folder = root / FASHION_MNIST_DIR
        missing = [name for name in names if not (folder / name).is_file()]
        if missing:
            raise RuntimeError(
                f"Debian package {FASHION_MNIST_PACKAGE!r} has no {', '.join(missing)} in /{FASHION_MNIST_DIR}; "
                "its layout changed: adapt domains/image/builders.py"
            )
        yield folder, _debian_version(root)


def build_fashion_mnist(out_dir: Path) -> None:
    """Write the Fashion-MNIST ``train`` and ``test`` splits into ``out_dir/<split>``.

    Raises:
        RuntimeError: the source could not be fetched or a split has the wrong size.
        ValueError: an IDX file is corrupt (the message names it).
    """
    with fashion_mnist_files() as (folder, version):
        for split, (prefix, expected) in tqdm(FASHION_MNIST_SPLITS.items(), desc=FASHION_MNIST, unit="split"):
            images_file, labels_file = (folder / name for name in fashion_mnist_idx_files(prefix))
            arrays = read_idx(
                images_file,
                labels_file,
                label_names=list(FASHION_MNIST_CLASSES),
                source=f"Fashion-MNIST {split} split (Debian {FASHION_MNIST_PACKAGE} {version}, {images_file.name})",
            )
            if len(arrays) != expected:
                raise RuntimeError(
                    f"{images_file}: {len(arrays):,} images instead of {expected:,}; the package changed"
                )
            save_arrays(arrays, out_dir / split)


def load_fashion_mnist(split: Literal["train", "test"]) -> ImageArrays:
    """Load a prepared Fashion-MNIST split, preparing it on first use (``mmssl data prepare fashion-mnist``).

    Returns:
        ``images`` ``uint8 [N, 1, 28, 28]`` (N = 60,000 train / 10,000 test), ``labels``
        ``int64 [N]`` and ``label_names`` = :data:`FASHION_MNIST_CLASSES`.

    Raises:
        ValueError: ``split`` is neither ``"train"`` nor ``"test"``.
    """
    if split not in FASHION_MNIST_SPLITS:
        raise ValueError(f"unknown Fashion-MNIST split {split!r}; known: {', '.join(FASHION_MNIST_SPLITS)}")
    return load_arrays(prepare(FASHION_MNIST) / split)


# --------------------------------------------------------------------------- the embedded subset
def balanced_subset(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """Draw ``per_class`` rows of every class without replacement.

    Args:
        labels: ``[N]`` integer class ids.
        per_class: rows to draw from each class.
        rng: the generator that draws them (one ``choice`` per class, classes in ascending order).

    Returns:
        ``int64 [per_class * num_classes]`` row indices into ``labels``, ascending (the source's order is kept).

    Raises:
        ValueError: a class has fewer than ``per_class`` rows.
    """
    picks = []
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        if len(rows) < per_class:
            raise ValueError(f"class {label} has {len(rows):,} rows, fewer than the {per_class:,} asked for")
        picks.append(rng.choice(rows, per_class, replace=False))
    return np.sort(np.concatenate(picks))


def fashion_mnist_small_arrays(folder: Path, seed: int = FASHION_MNIST_SMALL_SEED) -> dict[str, np.ndarray]:
    """Draw the embedded subset from the official IDX files in ``folder`` (train first, then test, one generator).

    Returns:
        ``label_names`` (the ten class names) and, for each split ``train`` / ``test``: ``{split}_images``
        ``uint8 [n, 28, 28]``, ``{split}_labels`` ``uint8 [n]`` and ``{split}_index`` ``uint16 [n]``, the row of
        each image in the official split (n = :data:`FASHION_MNIST_SMALL_PER_CLASS` x 10).
    """
    rng = np.random.default_rng(seed)
    arrays = {"label_names": np.array(FASHION_MNIST_CLASSES)}
    for split, (prefix, _) in FASHION_MNIST_SPLITS.items():
        images_file, labels_file = fashion_mnist_idx_files(prefix)
        labels = read_idx_array(folder / labels_file)
        index = balanced_subset(labels, FASHION_MNIST_SMALL_PER_CLASS[split], rng)
        arrays[f"{split}_images"] = read_idx_array(folder / images_file)[index]
        arrays[f"{split}_labels"] = labels[index].astype(np.uint8)
        arrays[f"{split}_index"] = index.astype(np.uint16)
    return arrays


def write_fashion_mnist_small(path: Path = FASHION_MNIST_SMALL_FILE, seed: int = FASHION_MNIST_SMALL_SEED) -> Path:
    """Write the embedded subset to ``path`` with ``np.savez_compressed`` (atomically) and return ``path``.

    The arrays are those of :func:`fashion_mnist_small_arrays` plus ``source`` (the Debian package and version).

    Raises:
        RuntimeError: the Debian package could not be fetched (:func:`fashion_mnist_files`).
    """
    with fashion_mnist_files() as (folder, version):
        arrays = fashion_mnist_small_arrays(folder, seed)
    arrays["source"] = np.array(f"Debian {FASHION_MNIST_PACKAGE} {version}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:  # a file object: np.savez would append ".npz" to a path
        np.savez_compressed(handle, **arrays)
    os.replace(tmp, path)
    return path


def load_fashion_mnist_small(split: Literal["train", "test"]) -> ImageArrays:
    """Load a split of the Fashion-MNIST subset shipped inside the package (no download, no system package).

    Returns:
        ``images`` ``uint8 [N, 1, 28, 28]`` (N = 10,000 train / 2,000 test, balanced over the ten classes),
        ``labels`` ``int64 [N]`` and ``label_names`` = :data:`FASHION_MNIST_CLASSES`.

    Raises:
        ValueError: ``split`` is neither ``"train"`` nor ``"test"``, or the file is unreadable.
        FileNotFoundError: the installation lacks the file.
    """
    if split not in FASHION_MNIST_SMALL_PER_CLASS:
        raise ValueError(
            f"unknown {FASHION_MNIST_SMALL} split {split!r}; known: {', '.join(FASHION_MNIST_SMALL_PER_CLASS)}"
        )
    path = FASHION_MNIST_SMALL_FILE
    rebuild = "reinstall mmssl, or rebuild it with `python -m domains.image.builders --write-embedded`"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from this installation: {rebuild}")
    try:
        with np.load(path, allow_pickle=False) as archive:
            images, labels = archive[f"{split}_images"], archive[f"{split}_labels"]
            names = [str(name) for name in archive["label_names"]]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise ValueError(f"{path} is unreadable ({exc}): {rebuild}") from exc
    per_class = FASHION_MNIST_SMALL_PER_CLASS[split]
    return ImageArrays(
        images=torch.from_numpy(images).unsqueeze(1),
        labels=torch.from_numpy(labels.astype(np.int64)),
        label_names=names,
        source=f"Fashion-MNIST {split} split, {per_class:,} images per class (embedded {path.name})",
    )


def build_fashion_mnist_small(out_dir: Path) -> None:
    """Copy the embedded subset into ``out_dir/train`` and ``out_dir/test``, the folders that
    ``data.source=prepared`` reads (``--set data.name=fashion-mnist-small``); nothing is downloaded."""
    for split in FASHION_MNIST_SMALL_PER_CLASS:
        save_arrays(load_fashion_mnist_small(split), out_dir / split)


# --------------------------------------------------------------------------- colour photograph crops
def photo_crops(photo: np.ndarray) -> np.ndarray:
    """Cut one photograph into overlapping ``CROP_SIDE`` crops at every scale of :data:`CROP_SCALES`.

    Args:
        photo: ``uint8 [H, W, 3]`` RGB pixels.

    Returns:
        ``uint8 [n, 3, CROP_SIDE, CROP_SIDE]``, scale by scale, row-major within a scale; crops with a grey-value
        std below :data:`CROP_MIN_STD` are left out.
    """
    image = Image.fromarray(photo)
    base = CROP_BASE_SIDE / min(image.size)
    crops = []
    for scale in CROP_SCALES:
        size = (round(image.width * base * scale), round(image.height * base * scale))
        pixels = np.asarray(image.resize(size, Image.Resampling.LANCZOS))
        for top in range(0, size[1] - CROP_SIDE + 1, CROP_STRIDE):
            for left in range(0, size[0] - CROP_SIDE + 1, CROP_STRIDE):
                crop = pixels[top : top + CROP_SIDE, left : left + CROP_SIDE]
                if crop.mean(axis=2).std() >= CROP_MIN_STD:
                    crops.append(crop.transpose(2, 0, 1))
    return np.stack(crops) if crops else np.zeros((0, 3, CROP_SIDE, CROP_SIDE), np.uint8)


def crop_splits(photos: Mapping[str, np.ndarray], test_photos: Iterable[str], source: str) -> dict[str, ImageArrays]:
    """The ``train`` and ``test`` crops of ``photos``, split by photograph; each crop's label is its photograph.

    Args:
        photos: name -> ``uint8 [H, W, 3]`` RGB photograph.
        test_photos: the names whose crops make the test split (all the others: train).
        source: provenance for the splits' ``source`` strings.

    Raises:
        ValueError: a test photograph is not in ``photos``, or a split has no crop.
    """
    test = set(test_photos)
    if not test <= set(photos) or not test:
        raise ValueError(f"test photographs {sorted(test)} must be a non-empty subset of {sorted(photos)}")
    names = list(photos)
    splits = {}
    for split, members in (("train", [n for n in names if n not in test]), ("test", [n for n in names if n in test])):
        crops = [photo_crops(photos[name]) for name in members]
        if sum(len(c) for c in crops) == 0:
            raise ValueError(f"{source}: no {split} crop survived (photographs {members})")
        labels = [names.index(name) for name, c in zip(members, crops) for _ in range(len(c))]
        splits[split] = ImageArrays(
            images=torch.from_numpy(np.concatenate(crops)),
            labels=torch.tensor(labels, dtype=torch.int64),
            label_names=names,
            source=f"{source}, {split} crops of {', '.join(members)}",
        )
    return splits


def build_photo_crops(photos: Mapping[str, np.ndarray], out_dir: Path, test_photos: Iterable[str], source: str) -> None:
    """Write the crops of :func:`crop_splits` into ``out_dir/train`` and ``out_dir/test``."""
    for split, arrays in crop_splits(photos, test_photos, source).items():
        save_arrays(arrays, out_dir / split)


def skimage_photos(requirement: str = SKIMAGE_REQUIREMENT) -> dict[str, np.ndarray]:
    """Download the scikit-image wheel (``pip download --no-deps``) and decode :data:`SKIMAGE_PHOTOS_FILES` from it.

    Returns:
        name -> ``uint8 [H, W, 3]`` RGB photograph.

    Raises:
        RuntimeError: pip failed (no access to PyPI) or the wheel lacks a photograph.
    """
    files = read_wheel_members(requirement, SKIMAGE_PHOTOS_FILES.values())
    return {
        name: np.asarray(Image.open(io.BytesIO(files[member])).convert("RGB"))
        for name, member in SKIMAGE_PHOTOS_FILES.items()
    }


def build_skimage_photos(out_dir: Path) -> None:
    """Write the crops of the scikit-image photographs: ``train`` (six photographs), ``test`` (chelsea)."""
    source = f"colour photographs of the {SKIMAGE_REQUIREMENT} wheel (skimage/data)"
    build_photo_crops(skimage_photos(), out_dir, SKIMAGE_TEST_PHOTOS, source)


def main(argv: Iterable[str] | None = None) -> None:
    """Command line: ``python -m domains.image.builders --write-embedded [--path FILE]``."""
    parser = argparse.ArgumentParser(description="Regenerate the Fashion-MNIST subset that ships inside mmssl.")
    parser.add_argument("--write-embedded", action="store_true", help=f"write {FASHION_MNIST_SMALL_FILE.name}")
    parser.add_argument("--path", type=Path, default=FASHION_MNIST_SMALL_FILE, help="where to write it")
    args = parser.parse_args(None if argv is None else list(argv))
    if not args.write_embedded:
        parser.error("nothing to do: pass --write-embedded")
    path = write_fashion_mnist_small(args.path)
    print(f"{path}: {path.stat().st_size:,} bytes")


if __name__ == "__main__":
    main()
