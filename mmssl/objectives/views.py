"""Augmented views of a batch, their representations, and the diagnostics of joint-embedding objectives.

The domain's per-step transform puts the augmented views of the batch's samples in
``Batch.views``, a tuple of :class:`Batch`; a view's representation is
``encoder.encode(view).pooled()`` (``[B, encoder.hidden_size]``). The first two views are the
global views; SimCLR and BYOL also take multi-crop local views (Caron et al. 2020, sec. 3.3),
each paired with both global views; the other methods use exactly two views and say so when
given more. Views are encoded one at a time, so batch norm (in a ResNet or a projector)
normalises over the samples of one view.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmssl.encoder import Encoder
from mmssl.types import Batch


def views_of(batch: Batch, objective: str, exactly_two: bool = False) -> tuple[Batch, ...]:
    """The augmented views in ``batch.views``, checked.

    Raises:
        ValueError: If there are fewer than two views, or more than two when ``exactly_two``.
    """
    views = batch.views
    if views is None or len(views) < 2:
        got = "none" if views is None else len(views)
        raise ValueError(
            f"{objective} needs 2 augmented views in Batch.views (got {got}); set data.views in the recipe"
        )
    if exactly_two and len(views) != 2:
        raise ValueError(
            f"{objective} uses exactly two views, got {len(views)} (only simclr and byol take "
            "multi-crop local views); set data.views to a two-view pipeline"
        )
    return tuple(views)


def represent(encoder: Encoder, view: Batch) -> Tensor:
    """``[B, D]``: the encoder's whole-input representation of one view."""
    return encoder.encode(view).pooled()


def global_pairs(num_views: int) -> list[tuple[int, int]]:
    """Unordered view pairs of multi-crop: the two global views, then each local view with each global one."""
    return [(0, 1)] + [(g, v) for v in range(2, num_views) for g in (0, 1)]


class Branch(nn.Module):
    """Encoder then projector: ``view -> [B, P]``, the branch a MoCo or BYOL teacher copies."""

    def __init__(self, encoder: Encoder, projector: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.projector = projector

    def forward(self, view: Batch) -> Tensor:
        return self.projector(represent(self.encoder, view))


@torch.no_grad()
def contrastive_accuracy(query: Tensor, key: Tensor, negatives: Tensor | None = None) -> Tensor:
    """Fraction of queries whose most similar candidate (cosine) is their own key.

    Candidates are the keys of this process's batch, or with ``negatives`` (``[K, D]``, a
    MoCo queue) the own key and the queue, as in MoCo's logits.
    """
    q, k = F.normalize(query.float(), dim=1), F.normalize(key.float(), dim=1)
    if negatives is None:
        return ((q @ k.T).argmax(1) == torch.arange(q.shape[0], device=q.device)).float().mean()
    hardest = (q @ F.normalize(negatives.float(), dim=1).T).max(1).values
    return ((q * k).sum(1) > hardest).float().mean()


@torch.no_grad()
def embedding_std(z: Tensor) -> Tensor:
    """Mean per-feature std of the L2-normalised embeddings ``[B, D]``.

    About ``1 / sqrt(D)`` for well-spread embeddings, 0 at collapse (Chen & He 2021, sec. 4.1).
    """
    return F.normalize(z.float(), dim=1).std(dim=0).mean()
