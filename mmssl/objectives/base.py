"""Base class of every objective (``forward(encoder, batch) -> ObjectiveOutput``) and its registry entry."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from mmssl.encoder import Encoder
from mmssl.types import Batch, ObjectiveOutput


@dataclass(frozen=True)
class Adversary:
    """A module an objective trains against its own loss, with its own AdamW (:meth:`Objective.adversary`).

    Its parameters leave the main optimizer; the trainer minimises ``ObjectiveOutput.adversary_loss`` over them
    alone, with AdamW at peak ``lr`` on the run's warmup + cosine schedule (``train.warmup_steps``,
    ``train.max_steps``). GANs train their discriminator so (Goodfellow et al. 2014; DCGAN: Adam, lr 2e-4,
    betas (0.5, 0.999)).

    Attributes:
        module: the adversary, a submodule of the objective (saved, moved and DDP-wrapped with the model).
        lr: its peak learning rate.
        betas: its Adam betas.
        weight_decay: its decoupled weight decay (never on biases and norm weights, as the main optimizer's).
        eps: its Adam epsilon.
    """

    module: nn.Module
    lr: float
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    eps: float = 1e-8

    def __post_init__(self) -> None:
        if self.lr <= 0 or self.weight_decay < 0 or self.eps <= 0 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(
                f"Adversary needs lr > 0, weight_decay >= 0, eps > 0 and betas in [0, 1), got lr={self.lr}, "
                f"weight_decay={self.weight_decay}, eps={self.eps}, betas={tuple(self.betas)}"
            )


class Objective(nn.Module):
    """A self-supervised objective, knowing no modality.

    An objective owns its heads (projectors, predictors, decoders, teachers) and reads
    the encoder only through :class:`mmssl.encoder.Encoder`. The trainer calls
    :meth:`after_optimizer_step` right after each optimizer step; objectives with an EMA
    teacher update it there (:class:`mmssl.teacher.MomentumTeacher`), visibly, never inside
    ``forward``.
    """

    def __init__(self, config: object, encoder: Encoder) -> None:
        super().__init__()
        self.config = config

    def forward(self, encoder: Encoder, batch: Batch) -> ObjectiveOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def after_optimizer_step(self, encoder: Encoder, step: int, max_steps: int) -> None:
        """Hook for momentum/EMA updates and schedules, given the (unwrapped) student ``encoder``;
        ``step`` counts completed optimizer steps (1 after the first)."""

    artifact_samples: int = 0  # training samples write_artifacts reads after pretraining; 0: it writes nothing

    def write_artifacts(self, encoder: Encoder, batch: Batch, run_dir: Path) -> list[Path]:
        """Hook for files of the objective's own, written into ``run_dir`` after pretraining (the VAE's sample grid)
        from a batch of the first ``artifact_samples`` training samples, in eval mode; returns their paths."""
        return []

    def adversary(self) -> Adversary | None:
        """The submodule trained against this objective by its own optimizer (a GAN's discriminator), or None.

        The trainer leaves its parameters out of the main optimizer and minimises the output's
        ``adversary_loss`` over them alone (:mod:`mmssl.adversary`).
        """
        return None


class SSLModel(nn.Module):
    """The trained module: an encoder composed with an objective (one module for Accelerate/DDP)."""

    def __init__(self, encoder: Encoder, objective: Objective) -> None:
        super().__init__()
        self.encoder = encoder
        self.objective = objective

    def forward(self, batch: Batch) -> ObjectiveOutput:
        return self.objective(self.encoder, batch)

    def after_optimizer_step(self, step: int, max_steps: int) -> None:
        self.objective.after_optimizer_step(self.encoder, step, max_steps)


# The kinds of units an objective can read (ObjectiveSpec.units); each domain gives one (Domain.unit_kind).
UNIT_KINDS: dict[str, str] = {
    "ids": "[B, T] int64 unit ids from a vocabulary (text tokens)",
    "features": "[B, T, C] float unit features in a sequence (fbank units of speech)",
    "grid": "[B, T, C] float unit features on a 2-D (rows, cols) grid in Batch.grid (image patches)",
    "graph": "[B, T, C] float node features, linked by extras[Extra.EDGE_INDEX] (graph nodes)",
}

# What an objective needs beyond units (ObjectiveSpec.needs): what the batch carries, named for its
# Batch field or Extra key, and the optional encoder capabilities, named for their Encoder attribute.
# A domain maps each to the settings that give it (Domain.contract_overrides).
BATCH_NEEDS: dict[str, str] = {
    "views": "Batch.views: two or more augmented views of each sample",
    "pretext_labels": "extras[Extra.PRETEXT_LABELS]: the transformation applied to each sample (rotation)",
    "targets": "extras[Extra.TARGETS]: a class target per unit (HuBERT's cluster ids)",
    "generation": "extras[Extra.GEN_ATTR] and extras[Extra.GEN_PAIRS]: units and links to regenerate (GPT-GNN)",
    "pair": "Batch.pair: the paired input of another modality, for a TwoTowerEncoder",
    "sample_index": "extras[Extra.SAMPLE_INDEX]: each sample's position in the training data (DeepCluster's memory)",
    "lightness": "units of the lightness L* of colour images, their sRGB pixels in extras[Extra.PIXELS] (colorization)",
    "supervised_labels": "extras[Extra.SUPERVISED_LABELS]: class ids of the labelled samples, -100 at the others (S4L)",
}
ENCODER_NEEDS: dict[str, str] = {
    "causal": "Encoder.causal: the output at unit t sees units <= t only",
    "encode_visible": "Encoder.encode_visible: the encoder runs on a subset of the units (MAE)",
    "mask_token": "Encoder.encode(batch, mask): masked units replaced by a learned mask embedding (iBOT)",
    "quantizer_head": "Encoder.quantizer_head and Encoder.encode_with_features (wav2vec 2.0)",
    "mlm_generator": "Encoder.mlm_generator and Encoder.replaced_token_head (ELECTRA's generator and discriminator)",
    "seq2seq": "Encoder.decode, Encoder.sentinel_ids and eos_token_id: a sequence-to-sequence model (T5)",
    "start_token": "Encoder.encode_from_start: units read as ids behind a start token (ImageGPT)",
    "unit_counts": "Encoder.unit_counts: the pretraining corpus count of every unit id (word2vec)",
    "feature_map": "EncoderOutput.grid: outputs on a 2-D grid, a feature map a convolutional decoder upsamples (DAE)",
}
NEEDS: dict[str, str] = {**BATCH_NEEDS, **ENCODER_NEEDS}


@dataclass(frozen=True)
class ObjectiveSpec:
    """An objective module class, the dataclass that configures it, and what it reads (an entry of ``OBJECTIVES``).

    ``units`` and ``needs`` are a contract, checked for every entry by ``tests/contracts``: the
    objective is built on a tiny encoder of each unit kind it declares, from the real data pipeline
    of a domain that gives that kind and every need (:meth:`mmssl.domain.Domain.contract_overrides`),
    and must give a finite loss whose gradients reach the encoder and which falls on a fixed batch.

    Attributes:
        cls: the :class:`Objective` subclass, built as ``cls(config, encoder)``.
        config_cls: the frozen dataclass that validates the recipe's ``objective`` section.
        description: one line for listings.
        units: the unit kinds it reads (keys of :data:`UNIT_KINDS`), at least one.
        needs: what it needs beyond units (keys of :data:`NEEDS`): batch contents and encoder capabilities.
        smoke_overrides: ``objective.*`` ``--set`` strings that shrink its heads to test size (the
            published 8192-wide projectors) or fit it to a tiny encoder (two layers to average).
    """

    cls: type
    config_cls: type
    description: str = ""
    units: tuple[str, ...] = field(kw_only=True)
    needs: tuple[str, ...] = field(default=(), kw_only=True)
    smoke_overrides: tuple[str, ...] = field(default=(), kw_only=True)

    def __post_init__(self) -> None:
        name = getattr(self.cls, "__name__", repr(self.cls))
        if not self.units:
            raise ValueError(f"ObjectiveSpec of {name}: units must name at least one of {', '.join(UNIT_KINDS)}")
        for values, known, what in ((self.units, UNIT_KINDS, "units"), (self.needs, NEEDS, "needs")):
            unknown = [v for v in values if v not in known]
            if unknown:
                raise ValueError(f"ObjectiveSpec of {name}: unknown {what} {unknown[0]!r}; known: {', '.join(known)}")
        bad = [o for o in self.smoke_overrides if not o.startswith("objective.")]
        if bad:
            raise ValueError(f"ObjectiveSpec of {name}: smoke_overrides set objective.* keys only, got {bad[0]!r}")
