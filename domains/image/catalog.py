"""The image domain's offline datasets (``mmssl data list``); the builder is imported when it runs."""

from mmssl.registry import DATASETS, DatasetBuilder

BUILDERS = "domains.image.builders"

for _builder in (
    DatasetBuilder(
        "fashion-mnist",
        "Fashion-MNIST, 28x28 grayscale, 10 classes, 60k/10k (Debian dataset-fashion-mnist)",
        f"{BUILDERS}:build_fashion_mnist",
        "image",
    ),
    DatasetBuilder(
        "fashion-mnist-small",
        "Fashion-MNIST subset, 10 classes, 10k/2k balanced (1,000/200 per class; shipped with mmssl)",
        f"{BUILDERS}:build_fashion_mnist_small",
        "image",
        embedded=True,
    ),
    DatasetBuilder(
        "skimage-photos",
        "32x32 RGB crops of 7 CC0/public-domain colour photographs, split by photograph (scikit-image wheel)",
        f"{BUILDERS}:build_skimage_photos",
        "image",
    ),
):
    DATASETS.add(_builder.name, _builder)
