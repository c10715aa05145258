"""The image domain: Fashion-MNIST and user images as patch units, ViT / ResNet encoders,
batched per-sample augmentations for multi-view objectives.

Registered through the ``mmssl.domains`` (:mod:`domains.image.domain`) and ``mmssl.datasets``
(:mod:`domains.image.catalog`) entry points; this file imports nothing.
"""
