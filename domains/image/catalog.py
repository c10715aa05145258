"""The image domain's offline datasets (``mmssl data list``); the builder is imported when it runs."""

from mmssl.registry import DATASETS, DatasetBuilder

DATASETS.add(
    "fashion-mnist",
    DatasetBuilder(
        "fashion-mnist",
        "Fashion-MNIST, 28x28 grayscale, 10 classes, 60k/10k (Debian dataset-fashion-mnist)",
        "domains.image.builders:build_fashion_mnist",
        "image",
    ),
)
