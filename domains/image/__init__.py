"""The image domain: Fashion-MNIST and user images as patch units, ViT / ResNet encoders,
batched per-sample augmentations for multi-view objectives."""

from domains.image import builders, domain  # noqa: F401  (register fashion-mnist, the image domain and its task)
