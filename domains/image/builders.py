"""Offline image datasets for ``mmssl data prepare NAME``: Fashion-MNIST from Debian.

``fashion-mnist`` reads the original IDX files of the Debian package ``dataset-fashion-mnist``
(Xiao, Rasul & Vollgraf 2017, "Fashion-MNIST: a Novel Image Dataset for Benchmarking
Machine Learning Algorithms", arXiv:1708.07747; MIT licence): from
``/usr/share/datasets/fashion-mnist`` when the package is installed, otherwise from the
``.deb`` fetched and unpacked without installing it (:mod:`domains.packages`). It writes
``train/`` (60,000 images) and ``test/`` (10,000) with :func:`domains.image.data.save_arrays`:
``uint8 [N, 1, 28, 28]`` images, ``int64`` labels and the ten class names of the paper.
"""

from __future__ import annotations

import contextlib
import gzip
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from tqdm.auto import tqdm

from domains.image.data import ImageArrays, load_arrays, read_idx, save_arrays
from domains.packages import extracted_debs
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
