"""Augmented views of a batch, their representations, and the diagnostics of joint-embedding objectives.

The domain's per-step transform puts the augmented views of the batch's samples in
``Batch.views``, a tuple of :class:`Batch`; a view's representation is
``encoder.encode(view).pooled()`` (``[B, encoder.hidden_size]``). The first two views are the
global views; SimCLR, BYOL, SwAV, DINO, iBOT and SIGReg also take multi-crop local views (Caron et al.
2020, sec. 3.3); the other methods use exactly two views and say so when given more. Views are encoded
one at a time, so batch norm (in a ResNet or a projector) normalises over the samples of one view, except
where an objective encodes runs of same-size crops together (:func:`encode_crops`, DINO's multi-crop wrapper).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmssl.encoder import Encoder
from mmssl.types import Batch, EncoderOutput


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
            f"{objective} uses exactly two views, got {len(views)}: set data.local_crops=0 (multi-crop local views "
            "are for simclr, byol, swav, dino, ibot and sigreg)"
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


# ---------------------------------------------------------------- multi-crop encoding


def _stackable(a: Batch, b: Batch) -> bool:
    """Whether two views can share one batch: one grid and unit shape, nothing beyond units and padding (graph
    edges, special units, pairs would need re-indexing)."""
    plain = all(not v.extras and v.special_mask is None and v.pair is None and v.layout is None for v in (a, b))
    return plain and a.grid == b.grid and a.units.shape[1:] == b.units.shape[1:]


def stack_views(views: Sequence[Batch]) -> Batch | None:
    """The views as one batch (``[n B, T, C]``, view ``i`` at rows ``i B : (i + 1) B``), or None when they cannot
    share one."""
    first = views[0]
    if not all(_stackable(first, v) for v in views):
        return None
    if len(views) == 1:
        return first
    units = torch.cat([v.units for v in views])
    return Batch(units=units, padding_mask=torch.cat([v.padding_mask for v in views]), grid=first.grid)


def _runs(views: Sequence[Batch]) -> list[list[int]]:
    """Indices of consecutive views of one resolution (multi-crop: the global crops, then the local ones)."""
    runs: list[list[int]] = []
    for i, view in enumerate(views):
        if runs and _stackable(views[runs[-1][0]], view):
            runs[-1].append(i)
        else:
            runs.append([i])
    return runs


def encode_crops(
    encoder: Encoder, views: Sequence[Batch], masks: Sequence[Tensor | None] | None = None
) -> list[EncoderOutput]:
    """Encode the views, each run of consecutive views of one resolution in one call (DINO's ``MultiCropWrapper``).

    Args:
        encoder: the student (or the teacher's copy).
        views: ``V`` views of ``B`` samples each.
        masks: per view a ``[B, T]`` bool mask for :meth:`Encoder.encode` (True: replaced by the mask
            token), or None.

    Returns:
        One :class:`EncoderOutput` per view, ``hidden`` ``[B, T, D]`` and ``summary`` ``[B, D]`` (or None).
    """
    masks = list(masks) if masks is not None else [None] * len(views)
    outputs: list[EncoderOutput] = []
    for run in _runs(views):
        group = [views[i] for i in run]
        batch = stack_views(group) if len(group) > 1 else group[0]
        given = [masks[i] for i in run]
        mask = None
        if any(m is not None for m in given):
            mask = torch.cat([m if m is not None else torch.zeros_like(v.padding_mask) for m, v in zip(given, group)])
        out = encoder.encode(batch, mask)
        sizes = [v.batch_size for v in group]
        summaries = out.summary.split(sizes) if out.summary is not None else [None] * len(group)
        outputs += [
            EncoderOutput(hidden=h, padding_mask=p, summary=s)
            for h, p, s in zip(out.hidden.split(sizes), out.padding_mask.split(sizes), summaries)
        ]
    return outputs
