"""Masked prediction of discrete unit targets: HuBERT (offline cluster ids) and BEST-RQ (random-projection codes).

* HuBERT (Hsu et al. 2021, "HuBERT: Self-Supervised Speech Representation Learning by Masked
  Prediction of Hidden Units"): spans are masked (p=0.08, L=10, sec. IV-C) and the encoder
  predicts, at the masked units, targets computed offline by the domain (first iteration:
  k-means of MFCC frames) and given in ``batch.extras["targets"]`` (``[B, T]`` int64, -100 at
  padding). Logits are cosine similarities between a projection of the output and learned
  code embeddings, over a temperature of 0.1 (eq. 5).
* BEST-RQ (Chiu et al. 2022, "Self-supervised Learning with Random-projection Quantizer for
  Speech Recognition"): the targets come from the units themselves: a frozen random
  projection and a frozen random codebook, nearest code by cosine (sec. 2.1); masking with
  p=0.01 of units starting a span of 400 ms; a softmax layer predicts the code.

Modality-agnostic: both read ``Batch.units`` / ``Batch.extras`` on the encoder's unit grid.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmssl.encoder import Encoder
from mmssl.masking import span_mask
from mmssl.objectives.base import Objective
from mmssl.objectives.language_modeling import unit_classification_loss
from mmssl.registry import OBJECTIVES, ObjectiveSpec
from mmssl.types import Batch, ObjectiveOutput


def _check_mask(mask_prob: float, mask_length: int) -> None:
    if not 0.0 < mask_prob < 1.0 or mask_length < 1:
        raise ValueError("objective.mask_prob must be in (0, 1) and objective.mask_length >= 1")


@dataclass(frozen=True)
class HuBERTConfig:
    """HuBERT, one iteration of masked cluster prediction."""

    name: str = "hubert"
    mask_prob: float = 0.08  # span starts per unit; L = 10 (sec. IV-C)
    mask_length: int = 10
    num_classes: int = 100  # clusters of the targets (iteration 1: 100 MFCC clusters)
    embed_dim: int = 256  # code embedding size (the paper's final projection: 256)
    logit_temperature: float = 0.1
    unmasked_weight: float = 0.0  # alpha of eq. 4 for unmasked units (the paper's best: 0)

    def __post_init__(self) -> None:
        _check_mask(self.mask_prob, self.mask_length)
        if self.num_classes < 2 or self.embed_dim < 1 or self.logit_temperature <= 0 or self.unmasked_weight < 0:
            raise ValueError("objective: num_classes >= 2, embed_dim >= 1, logit_temperature > 0, unmasked_weight >= 0")


class CosineCodeLogits(nn.Module):
    """``cos(W h, e_c) / tau`` for every code ``c`` (HuBERT eq. 5)."""

    def __init__(self, in_dim: int, embed_dim: int, num_codes: int, temperature: float) -> None:
        super().__init__()
        self.proj = nn.Linear(in_dim, embed_dim)
        self.codes = nn.Parameter(torch.randn(num_codes, embed_dim) * embed_dim**-0.5)
        self.temperature = temperature

    def forward(self, hidden: Tensor) -> Tensor:
        return F.normalize(self.proj(hidden).float(), dim=-1) @ F.normalize(self.codes.float(), dim=-1).T / self.temperature


class HuBERT(Objective):
    """Cross-entropy of cluster ids at masked units (plus ``unmasked_weight`` x the unmasked ones)."""

    def __init__(self, config: HuBERTConfig, encoder: Encoder) -> None:
        super().__init__(config, encoder)
        self.logits = CosineCodeLogits(encoder.hidden_size, config.embed_dim, config.num_classes,
                                       config.logit_temperature)

    def forward(self, encoder: Encoder, batch: Batch) -> ObjectiveOutput:
        cfg = self.config
        targets = batch.extras.get("targets")
        if targets is None:
            raise ValueError("hubert needs per-unit targets in batch.extras['targets'] (audio: data.targets=mfcc-kmeans)")
        if targets.shape != batch.padding_mask.shape:
            raise ValueError(f"targets {tuple(targets.shape)} are not on the unit grid {tuple(batch.padding_mask.shape)}")
        if int(targets.max()) >= cfg.num_classes:
            raise ValueError(f"a target id {int(targets.max())} >= objective.num_classes={cfg.num_classes} "
                             "(set it to data.num_clusters)")
        mask = span_mask(batch.maskable, start_prob=cfg.mask_prob, span_length=cfg.mask_length)
        hidden = encoder.encode(batch, mask=mask).hidden
        masked, acc = unit_classification_loss(self.logits(hidden[mask]), targets[mask])
        terms = {"masked": masked}
        loss = masked
        if cfg.unmasked_weight > 0:
            rest = ~mask & batch.maskable
            terms["unmasked"], _ = unit_classification_loss(self.logits(hidden[rest]), targets[rest])
            loss = loss + cfg.unmasked_weight * terms["unmasked"]
        logs = {"masked_accuracy": acc, "masked_fraction": (mask.sum() / batch.maskable.sum().clamp(min=1)).detach()}
        return ObjectiveOutput(loss=loss, terms=terms, logs=logs)


@dataclass(frozen=True)
class BestRQConfig:
    """BEST-RQ with one random-projection quantizer."""

    name: str = "best-rq"
    mask_prob: float = 0.01  # span starts per unit (sec. 3.3)
    mask_length: int = 20  # 400 ms of 20 ms units
    codebook_size: int = 8192  # paper: 8192 codes of dimension 16
    codebook_dim: int = 16
    seed: int = 0  # the frozen projection and codebook come from this seed (saved with the model too)

    def __post_init__(self) -> None:
        _check_mask(self.mask_prob, self.mask_length)
        if self.codebook_size < 2 or self.codebook_dim < 1:
            raise ValueError("objective.codebook_size >= 2 and objective.codebook_dim >= 1 are required")


class RandomProjectionQuantizer(nn.Module):
    """Frozen ``x -> argmin_c || normalize(x P) - normalize(e_c) ||`` (BEST-RQ sec. 2.1).

    ``P`` is Xavier-initialised and the codebook standard normal; both are buffers (never
    trained, saved with the model so a resumed run keeps its targets).
    """

    def __init__(self, in_dim: int, codebook_size: int, codebook_dim: int, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        bound = (6.0 / (in_dim + codebook_dim)) ** 0.5
        self.register_buffer("projection", (torch.rand(in_dim, codebook_dim, generator=g) * 2 - 1) * bound)
        self.register_buffer("codebook", F.normalize(torch.randn(codebook_size, codebook_dim, generator=g), dim=-1))

    @torch.no_grad()
    def forward(self, units: Tensor) -> Tensor:
        """``[*, C]`` -> ``[*]`` int64 code ids (nearest normalised code = largest cosine)."""
        z = F.normalize(units.float() @ self.projection, dim=-1)
        return (z @ self.codebook.T).argmax(-1)


class BestRQ(Objective):
    """Predict the frozen random-projection code of every masked unit with a softmax layer."""

    def __init__(self, config: BestRQConfig, encoder: Encoder) -> None:
        super().__init__(config, encoder)
        if encoder.unit_dim is None:
            raise ValueError(f"best-rq quantizes feature units, but {type(encoder).__name__} has no unit_dim")
        self.quantizer = RandomProjectionQuantizer(encoder.unit_dim, config.codebook_size, config.codebook_dim,
                                                   config.seed)
        self.head = nn.Linear(encoder.hidden_size, config.codebook_size)

    def forward(self, encoder: Encoder, batch: Batch) -> ObjectiveOutput:
        cfg = self.config
        if batch.units.ndim != 3:
            raise ValueError(f"best-rq reads feature units [B, T, C], got {tuple(batch.units.shape)}")
        mask = span_mask(batch.maskable, start_prob=cfg.mask_prob, span_length=cfg.mask_length, min_spans=1)
        targets = self.quantizer(batch.units[mask])  # [N]
        hidden = encoder.encode(batch, mask=mask).hidden
        loss, acc = unit_classification_loss(self.head(hidden[mask]), targets)
        used = torch.unique(targets).numel() / cfg.codebook_size
        logs = {"masked_accuracy": acc, "codes_used": torch.tensor(used),
                "masked_fraction": (mask.sum() / batch.maskable.sum().clamp(min=1)).detach()}
        return ObjectiveOutput(loss=loss, terms={"best_rq": loss}, logs=logs)


OBJECTIVES.add("hubert", ObjectiveSpec(HuBERT, HuBERTConfig, "masked prediction of offline cluster ids (HuBERT)"))
OBJECTIVES.add("best-rq", ObjectiveSpec(BestRQ, BestRQConfig, "masked prediction of random-projection codes (BEST-RQ)"))
