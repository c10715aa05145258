"""The image domain: Fashion-MNIST and user images as patch units, ViT / ResNet encoders,
batched per-sample augmentations for multi-view objectives."""

from domains.image import builders  # noqa: F401  (registers `mmssl data prepare fashion-mnist`)
