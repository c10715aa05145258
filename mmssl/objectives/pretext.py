"""Pretext classification: RotNet (Gidaris et al. 2018), jigsaw (Noroozi & Favaro 2016), ...

Modality-agnostic: the objective classifies whatever label the domain's transform puts in
``batch.extras[Extra.PRETEXT_LABELS]`` (e.g. the rotation index of each rotated image) from the
encoder's pooled representation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from mmssl.encoder import Encoder
from mmssl.objectives.base import Objective
from mmssl.objectives.heads import MLPHead
from mmssl.types import Batch, Extra, ObjectiveOutput


@dataclass(frozen=True)
class PretextConfig:
    """Pretext classification: RotNet (Gidaris et al. 2018), jigsaw (Noroozi & Favaro 2016), ..."""

    name: str = "pretext"
    num_classes: int = 4  # RotNet's four rotations; jigsaw: the size of the permutation set
    hidden_dim: int = 0  # 0: a linear head on the pooled representation; > 0: one Linear-BN-ReLU layer this wide

    def __post_init__(self) -> None:
        if self.num_classes < 2:
            raise ValueError(f"objective.num_classes must be >= 2, got {self.num_classes}")
        if self.hidden_dim < 0:
            raise ValueError(f"objective.hidden_dim must be >= 0, got {self.hidden_dim}")


class Pretext(Objective):
    """Cross-entropy of a head on ``encoder.encode(batch).pooled()`` against ``batch.extras[Extra.PRETEXT_LABELS]``.

    The labels (``[B]`` int64 in ``[0, num_classes)``) come from the domain's transform,
    e.g. the rotation index of each rotated image.
    """

    def __init__(self, config: PretextConfig, encoder: Encoder) -> None:
        super().__init__(config, encoder)
        hidden = config.hidden_dim or config.num_classes
        self.head = MLPHead(encoder.hidden_size, hidden, config.num_classes, num_layers=2 if config.hidden_dim else 1)

    def labels(self, batch: Batch) -> Tensor:
        """The checked ``[B]`` pretext labels of ``batch``."""
        labels = batch.extras.get(Extra.PRETEXT_LABELS)
        if labels is None:
            raise ValueError(
                "the pretext objective needs batch.extras['pretext_labels']; use a data transform "
                "that makes them, e.g. data.views=rotation"
            )
        if labels.shape != (batch.batch_size,) or labels.dtype != torch.long:
            raise ValueError(
                f"batch.extras['pretext_labels'] must be int64 of shape [{batch.batch_size}], "
                f"got {labels.dtype} {tuple(labels.shape)}"
            )
        if bool(((labels < 0) | (labels >= self.config.num_classes)).any()):
            raise ValueError(
                f"pretext labels must be in [0, objective.num_classes={self.config.num_classes}), "
                f"got values up to {int(labels.max())}"
            )
        return labels

    def forward(self, encoder: Encoder, batch: Batch) -> ObjectiveOutput:
        labels = self.labels(batch)
        logits = self.head(encoder.encode(batch).pooled())  # [B, num_classes]
        loss = F.cross_entropy(logits.float(), labels)
        accuracy = (logits.argmax(-1) == labels).float().mean().detach()
        return ObjectiveOutput(loss=loss, terms={"pretext": loss}, logs={"pretext_accuracy": accuracy})
