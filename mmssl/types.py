"""The three contracts between pipeline stages: ``Batch`` -> ``EncoderOutput`` -> ``ObjectiveOutput``.

Every domain turns samples into *units* on a ``[B, T]`` grid (text tokens, image patches,
spectrogram frames, graph nodes). Masking generators, encoders and objectives speak only
in terms of that grid, which is what lets one objective layer serve every modality.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from enum import StrEnum
from typing import Any

import torch
from torch import Tensor


def _to(value: Any, device: torch.device | str, non_blocking: bool) -> Any:
    if isinstance(value, Tensor):
        return value.to(device, non_blocking=non_blocking)
    if isinstance(value, Mapping):
        return {k: _to(v, device, non_blocking) for k, v in value.items()}
    if isinstance(value, Batch):  # a paired batch (Batch.pair)
        return value.to(device, non_blocking)
    if isinstance(value, (tuple, list)) and any(isinstance(v, (Tensor, Batch)) for v in value):
        return type(value)(_to(v, device, non_blocking) for v in value)
    return value  # plain metadata, e.g. an image batch's (rows, cols) grid


class Extra(StrEnum):
    """The keys of :attr:`Batch.extras`: per-unit or per-sample tensors one domain (or a few) gives.

    A ``StrEnum``, so ``batch.extras[Extra.LABELS]`` and ``batch.extras["labels"]`` are the same
    entry. What every domain may give has a typed field on :class:`Batch` instead (``views``,
    ``grid``, ``pair``, ``layout``).
    """

    LABELS = "labels"  # [B] int64 class ids of a fine-tuning or probe batch (every domain's tasks)
    PRETEXT_LABELS = "pretext_labels"  # [B] int64 id of the transformation applied (rotation, jigsaw)
    TARGETS = "targets"  # [B, T] int64 per-unit targets, -100 at padding (HuBERT's cluster ids)
    TOKEN_TYPE_IDS = "token_type_ids"  # [B, T] int64 segment ids (text)
    SOP_LABELS = "sop_labels"  # [B] int64, 1 where the two segments were swapped (text, ALBERT's SOP)
    PIXELS = "pixels"  # [B, C, H, W] images before the per-step transform (image)
    SAMPLE_INDEX = "sample_index"  # [B] int64 position of each sample in the training data (DeepCluster's memory)
    EDGE_INDEX = "edge_index"  # [2, E] int64 edges in flat grid coordinates b * T + t (graph)
    NODE_ID = "node_id"  # [B, T] int64 node of each unit in its source graph, -1 at padding (graph)
    GEN_ATTR = "gen_attr"  # [B, T] bool: units whose attributes GPT-GNN regenerates (graph)
    GEN_PAIRS = "gen_pairs"  # [2, P] flat unit indices of the removed links GPT-GNN regenerates (graph)
    # [B] int64 class id of each labelled sample of a semi-supervised batch, -100 (ignored) at the others (S4L)
    SUPERVISED_LABELS = "supervised_labels"
    WAVES = "waves"  # [B, S] float raw samples in [-1, 1], 0 at padding, before the per-step views (audio)
    WAVE_LENGTHS = "wave_lengths"  # [B] int64 samples of each clip in extras["waves"] (audio)


@dataclass(frozen=True)
class Batch:
    """A collated batch of units on a ``[B, T]`` grid.

    Attributes:
        units: ``[B, T]`` integer ids (tokens, codes), ``[B, T, C]`` unit features
            (patch pixels, frames, node features), or ``[B, S]`` float samples of a waveform for an
            encoder that maps them onto its own grid of frames (:meth:`Encoder.output_padding_mask`).
        padding_mask: ``[B, T]`` bool, True at padding positions (never masked, never in a loss).
        special_mask: ``[B, T]`` bool or None, True at units that may not be masked
            (e.g. ``[CLS]``/``[SEP]``); padding is excluded separately.
        extras: named tensors the encoder or objective needs besides the units, keyed by
            :class:`Extra` (``token_type_ids``, ``edge_index``, ``labels``, ...).
        views: augmented views of the same samples, each a :class:`Batch` of its own (joint-embedding
            objectives: SimCLR, BYOL, BGRL, ...); None when the data gives no views.
        grid: ``(rows, cols)`` when the units are a row-major 2-D grid (image patches), for
            block masking and unpatchifying; None otherwise.
        pair: the paired input of another modality (the sentence a clip reads), for two-tower
            encoders and cross-modal objectives (CLIP); None otherwise.
        layout: how graph units sit on the ``[B, T]`` grid (``"ego"``, ``"full"``, ``"graphs"``;
            see ``domains/graph/units.py``); None for every other domain.
    """

    units: Tensor
    padding_mask: Tensor
    special_mask: Tensor | None = None
    extras: Mapping[str, Tensor] = field(default_factory=dict)
    views: tuple[Batch, ...] | None = None
    grid: tuple[int, int] | None = None
    pair: Batch | None = None
    layout: str | None = None

    def __post_init__(self) -> None:
        if self.padding_mask.shape != self.units.shape[:2]:
            raise ValueError(
                f"Batch.padding_mask has shape {tuple(self.padding_mask.shape)}, "
                f"expected the unit grid {tuple(self.units.shape[:2])}"
            )
        typed = sorted({"views", "grid", "pair", "layout"} & set(self.extras))
        if typed:
            raise ValueError(f"Batch.extras[{typed[0]!r}]: {typed[0]} is a field of Batch; pass {typed[0]}=... instead")
        if self.views is not None and not all(isinstance(v, Batch) for v in self.views):
            raise ValueError(f"Batch.views must be a tuple of Batch, got {[type(v).__name__ for v in self.views]}")
        if self.pair is not None and not isinstance(self.pair, Batch):
            raise ValueError(f"Batch.pair must be a Batch, got {type(self.pair).__name__}")
        if self.grid is not None and (len(self.grid) != 2 or not all(isinstance(n, int) for n in self.grid)):
            raise ValueError(f"Batch.grid must be (rows, cols) of two ints, got {self.grid!r}")

    @property
    def batch_size(self) -> int:
        return self.units.shape[0]

    @property
    def num_units(self) -> int:
        """Real (non-padding) units in the batch: the throughput unit (tokens, patches, ...)."""
        return int((~self.padding_mask).sum())

    @property
    def maskable(self) -> Tensor:
        """``[B, T]`` bool: units a masking generator may choose."""
        keep_out = self.padding_mask if self.special_mask is None else self.padding_mask | self.special_mask
        return ~keep_out

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """Move every tensor to ``device`` (Accelerate calls this through ``send_to_device``)."""
        return Batch(**{f.name: _to(getattr(self, f.name), device, non_blocking) for f in fields(self)})

    def replace(self, **changes: Any) -> Batch:
        return replace(self, **changes)


@dataclass(frozen=True)
class EncoderOutput:
    """What every encoder returns.

    Attributes:
        hidden: ``[B, T, D]`` last-layer unit representations.
        layers: per-layer ``[B, T, D]`` outputs (embedding output first) when the encoder
            was called with ``all_layers=True``; otherwise None. data2vec builds targets from these.
        padding_mask: ``[B, T]`` bool, True at padding (same grid as ``hidden``).
        summary: ``[B, D]`` the backbone's own whole-input representation when it has one
            (ViT's ``[CLS]`` token, a ResNet's global average pool), else None.
        grid: ``(rows, cols)`` when ``hidden``'s units lie on a 2-D grid in row-major order (ViT patch
            tokens, a ResNet's final feature map), else None.
    """

    hidden: Tensor
    padding_mask: Tensor
    layers: tuple[Tensor, ...] | None = None
    summary: Tensor | None = None
    grid: tuple[int, int] | None = None

    def pooled(self) -> Tensor:
        """``[B, D]``: :attr:`summary` if the encoder gives one, else the mean over non-padding units."""
        if self.summary is not None:
            return self.summary
        keep = (~self.padding_mask).unsqueeze(-1).to(self.hidden.dtype)
        return (self.hidden * keep).sum(1) / keep.sum(1).clamp(min=1.0)

    def pooled_statistics(self) -> Tensor:
        """``[B, 2D]``: mean and standard deviation over each sample's non-padding units.

        Statistics pooling (the x-vector's, Snyder et al. 2018): the spread over time keeps
        what a mean of frames averages away; the standard deviation is the population one
        (0 for a single unit).
        """
        keep = (~self.padding_mask).unsqueeze(-1).to(self.hidden.dtype)
        count = keep.sum(1).clamp(min=1.0)
        mean = (self.hidden * keep).sum(1) / count
        var = (((self.hidden - mean.unsqueeze(1)) ** 2) * keep).sum(1) / count
        return torch.cat([mean, var.clamp(min=0.0).sqrt()], dim=-1)

    def pooled_grid(self, cells: int) -> Tensor:
        """``[B, cells * cells * D]``: the unit grid average-pooled to ``cells x cells`` regions, concatenated.

        The convnet linear-probe protocol of Zhang et al. 2016 (colorization), Noroozi & Favaro 2016 and
        Goyal et al. 2019: a feature map is average-pooled to a few spatial cells rather than one, so the probe
        sees where a feature fired (``cells=1`` is the global mean). Regions are torch's adaptive pooling bins.

        Raises:
            ValueError: If the encoder gave no :attr:`grid`, or padded units (a grid has none).
        """
        if self.grid is None:
            raise ValueError(
                "grid pooling needs an encoder whose units lie on a 2-D grid (image encoders); "
                "use probe.pooling=auto, mean or mean_std"
            )
        if bool(self.padding_mask.any()):
            raise ValueError("grid pooling cannot pool padded units")
        rows, cols = self.grid
        fmap = self.hidden.transpose(1, 2).reshape(self.hidden.shape[0], -1, rows, cols)
        return torch.nn.functional.adaptive_avg_pool2d(fmap, cells).flatten(1)


@dataclass(frozen=True)
class ObjectiveOutput:
    """What every objective returns; the trainer only ever reads these fields.

    Attributes:
        loss: scalar tensor to back-propagate (the weighted sum of ``terms``).
        terms: named scalar loss terms (detached copies are logged), e.g. ``{"mlm": ..., "sop": ...}``.
        logs: extra scalar diagnostics (accuracy, masked fraction, temperature, ...); return
            detached tensors rather than floats, so the step needs no device-to-host sync (the
            trainer converts them when it logs).
        adversary_loss: scalar loss of the objective's adversary (:meth:`mmssl.objectives.base.Objective.adversary`,
            a GAN's discriminator), which its own optimizer minimises over the adversary's parameters only; None
            for objectives without one. Compute it on detached encoder/generator outputs.
    """

    loss: Tensor
    terms: Mapping[str, Tensor] = field(default_factory=dict)
    logs: Mapping[str, float | Tensor] = field(default_factory=dict)
    adversary_loss: Tensor | None = None
