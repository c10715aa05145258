"""S4L-Rotation (Zhai et al. 2019, "S4L: Self-Supervised Semi-Supervised Learning"), modality-agnostic.

A classifier trained on a few labelled samples jointly with RotNet's rotation prediction (Gidaris et al. 2018) on
every sample, labelled or not. Each step's batch holds the unlabelled minibatch and a labelled one, every sample in
all four rotations (``extras[Extra.PRETEXT_LABELS]``: the rotation of each row) and the class of each upright
labelled copy in ``extras[Extra.SUPERVISED_LABELS]`` (-100 at every other row); the image domain makes it with
``data.labels_per_class`` (``domains/image/labelled.py``). With ``h`` the encoder's pooled representation,

    loss = CE(classifier(h[upright labelled]), y) + w * CE(rotation_head(h[every row]), k)

the paper's ``L_l + w L_self`` with the self-supervised loss on the labelled images too (Sec. 3.1), ``w = 1``.
``w = 0`` is the supervised baseline of the same recipe: the encoder then sees the upright labelled samples only (no
unlabelled or rotated sample enters its batch-norm statistics), so it is the same network trained on the same
labelled minibatches alone. The classifier is a linear layer on ``h``, as the paper's ResNet's; it ships with the
export (``classifier_head.safetensors`` + ``classifier_head.json``) where the encoder's export saves attached modules.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmssl.domain import save_classifier_head
from mmssl.encoder import Encoder
from mmssl.objectives.base import Objective
from mmssl.types import Batch, Extra, ObjectiveOutput

ROTATIONS = 4  # 0, 90, 180, 270 degrees
IGNORE = -100  # rows without a supervised label (F.cross_entropy's ignore_index)


@dataclass(frozen=True)
class S4LConfig:
    """S4L-Rotation (Zhai et al. 2019)."""

    name: str = "s4l"
    num_labels: int = 10  # classes of the labelled samples; the image domain derives it from the labels
    rotation_weight: float = 1.0  # w in L_l + w * L_self (S4L: 1); 0 trains the classifier on the labels alone

    def __post_init__(self) -> None:
        if self.num_labels < 2:
            raise ValueError(f"objective.num_labels must be >= 2, got {self.num_labels}")
        if not self.rotation_weight >= 0:  # also refuses NaN
            raise ValueError(
                f"objective.rotation_weight must be >= 0 (1: S4L; 0: the supervised baseline), got {self.rotation_weight}"
            )


def s4l_loss(
    class_logits: Tensor, classes: Tensor, rotation_logits: Tensor | None, rotations: Tensor | None, weight: float
) -> tuple[Tensor, Tensor, Tensor | None]:
    """``CE(class_logits, classes) + weight * CE(rotation_logits, rotations)``, each cross-entropy a mean over rows.

    Args:
        class_logits: ``[L, K]`` classifier logits of the upright labelled rows.
        classes: ``int64 [L]`` their classes.
        rotation_logits: ``[N, 4]`` rotation logits of every row, or None when ``weight`` is 0.
        rotations: ``int64 [N]`` the rotation of every row, or None.
        weight: ``w >= 0``.

    Returns:
        ``(loss, supervised, rotation)``; ``rotation`` is None when no rotation logits were given.
    """
    supervised = F.cross_entropy(class_logits.float(), classes)
    if rotation_logits is None:
        return supervised, supervised, None
    rotation = F.cross_entropy(rotation_logits.float(), rotations)
    return supervised + weight * rotation, supervised, rotation


def select_rows(batch: Batch, rows: Tensor) -> Batch:
    """The samples ``rows`` (``[N]`` bool or indices) of ``batch``: units, masks and every per-sample extra."""
    n = batch.batch_size
    extras = {k: v[rows] for k, v in batch.extras.items() if v.ndim >= 1 and v.shape[0] == n}
    special = None if batch.special_mask is None else batch.special_mask[rows]
    return batch.replace(
        units=batch.units[rows], padding_mask=batch.padding_mask[rows], special_mask=special, extras=extras
    )


class ClassifierHead:
    """The S4L classifier as an export extra: ``classifier_head.*`` beside the backbone (:meth:`Encoder.attach_export`)."""

    def __init__(self, head: nn.Linear) -> None:
        self.head = head

    def save(self, out_dir: Path) -> None:
        save_classifier_head(self.head, [str(i) for i in range(self.head.out_features)], Path(out_dir))


class S4L(Objective):
    """S4L-Rotation: a linear classifier on the labelled rows plus ``w`` x rotation prediction on every row."""

    def __init__(self, config: S4LConfig, encoder: Encoder) -> None:
        super().__init__(config, encoder)
        self.classifier = nn.Linear(encoder.hidden_size, config.num_labels)
        self.rotation_head = nn.Linear(encoder.hidden_size, ROTATIONS)
        if encoder.saves_export_extras:
            encoder.attach_export("classifier_head", ClassifierHead(self.classifier))

    def targets(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """The checked ``(rotations [N], classes [N])`` of ``batch`` (classes -100 at unlabelled rows)."""
        rotations, classes = batch.extras.get(Extra.PRETEXT_LABELS), batch.extras.get(Extra.SUPERVISED_LABELS)
        if rotations is None or classes is None:
            raise ValueError(
                "the s4l objective needs batch.extras['pretext_labels'] and ['supervised_labels']: the image domain "
                "gives them with data.views=rotation and data.labels_per_class"
            )
        for key, values in (("pretext_labels", rotations), ("supervised_labels", classes)):
            if values.shape != (batch.batch_size,) or values.dtype != torch.long:
                raise ValueError(
                    f"batch.extras['{key}'] must be int64 of shape [{batch.batch_size}], "
                    f"got {values.dtype} {tuple(values.shape)}"
                )
        labelled = classes[classes != IGNORE]
        if labelled.numel() == 0:
            raise ValueError("batch.extras['supervised_labels'] marks no labelled row (all -100)")
        if bool(((labelled < 0) | (labelled >= self.config.num_labels)).any()):
            raise ValueError(f"supervised labels must be in [0, objective.num_labels={self.config.num_labels})")
        return rotations, classes

    def forward(self, encoder: Encoder, batch: Batch) -> ObjectiveOutput:
        rotations, classes = self.targets(batch)
        labelled = classes != IGNORE  # [N] bool: the upright labelled rows
        weight = self.config.rotation_weight
        if weight == 0:  # the supervised baseline: only the labelled rows are encoded
            class_logits = self.classifier(encoder.encode(select_rows(batch, labelled)).pooled())
            rotation_logits = None
        else:
            pooled = encoder.encode(batch).pooled()  # [N, D]
            class_logits, rotation_logits = self.classifier(pooled[labelled]), self.rotation_head(pooled)
        loss, supervised, rotation = s4l_loss(class_logits, classes[labelled], rotation_logits, rotations, weight)
        terms = {"supervised": supervised} | ({} if rotation is None else {"rotation": rotation})
        logs = {"supervised_accuracy": (class_logits.argmax(-1) == classes[labelled]).float().mean().detach()}
        if rotation_logits is not None:
            logs["rotation_accuracy"] = (rotation_logits.argmax(-1) == rotations).float().mean().detach()
        return ObjectiveOutput(loss=loss, terms=terms, logs=logs)

    @torch.no_grad()
    def classify(self, encoder: Encoder, batch: Batch) -> Tensor:
        """``[B, num_labels]`` classifier logits of the samples of ``batch`` as they are (no rotation)."""
        return self.classifier(encoder.encode(batch).pooled())
