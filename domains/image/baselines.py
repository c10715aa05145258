"""The raw-feature baseline of image tasks: the pixels themselves, the floor every image probe must beat.

Each image becomes its ``C * H * W`` pixel values scaled to ``[0, 1]`` (784 numbers for Fashion-MNIST),
and ``mmssl evaluate RUN --protocol linear|knn --task TASK --init raw`` fits the same probe on them as on
an encoder's pooled features (:meth:`domains.image.domain.ImageDomain.raw_features`). The processor's
per-channel standardisation is left out: the linear probe standardises every feature anyway, and the
kNN on ``[0, 1]`` pixels is the raw-pixel floor ``experiments/image_recipes.py`` records.
"""

from __future__ import annotations

import torch
from torch import Tensor

from domains.image.data import ImageArrays
from mmssl.domain import RawFeatures


def pixel_features(arrays: ImageArrays) -> Tensor:
    """``[N, C * H * W]`` float32: each image's uint8 pixels ``[C, H, W]`` flattened and divided by 255."""
    return arrays.images.reshape(len(arrays.images), -1).float() / 255.0


def pixel_baseline(train: ImageArrays, test: ImageArrays) -> RawFeatures:
    """The ``pixels`` baseline of a labelled task's training and test images."""
    return RawFeatures(
        "pixels",
        (pixel_features(train), torch.as_tensor(train.labels, dtype=torch.long)),
        (pixel_features(test), torch.as_tensor(test.labels, dtype=torch.long)),
    )
