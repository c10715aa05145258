"""HuBERT (Hsu et al. 2021, "HuBERT: Self-Supervised Speech Representation Learning by Masked Prediction of Hidden Units").

Spans are masked (p=0.08, L=10, sec. IV-C) and the encoder predicts, at the masked units,
targets computed offline by the domain (first iteration: k-means of MFCC frames) and given in
``batch.extras[Extra.TARGETS]`` (``[B, T]`` int64, -100 at padding). Logits are cosine similarities
between a projection of the output and learned code embeddings, over a temperature of 0.1
(eq. 5). Modality-agnostic: it reads ``Batch.units`` / ``Batch.extras`` on the encoder's unit grid.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmssl.encoder import Encoder
from mmssl.masking import span_mask
from mmssl.objectives.base import Objective
from mmssl.objectives.checks import check_span_fits, check_span_mask
from mmssl.objectives.losses import unit_classification_loss
from mmssl.types import Batch, Extra, ObjectiveOutput


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
        check_span_mask(self.mask_prob, self.mask_length)
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
        codes = F.normalize(self.codes.float(), dim=-1)
        return F.normalize(self.proj(hidden).float(), dim=-1) @ codes.T / self.temperature


class HuBERT(Objective):
    """Cross-entropy of cluster ids at masked units (plus ``unmasked_weight`` x the unmasked ones)."""

    def __init__(self, config: HuBERTConfig, encoder: Encoder) -> None:
        super().__init__(config, encoder)
        self.logits = CosineCodeLogits(
            encoder.hidden_size, config.embed_dim, config.num_classes, config.logit_temperature
        )

    def targets(self, batch: Batch) -> Tensor:
        """The checked ``[B, T]`` cluster ids of ``batch``."""
        targets = batch.extras.get(Extra.TARGETS)
        if targets is None:
            raise ValueError(
                "hubert needs per-unit targets in batch.extras['targets'] (audio: data.targets=mfcc-kmeans)"
            )
        if targets.shape != batch.padding_mask.shape:
            raise ValueError(
                f"targets {tuple(targets.shape)} are not on the unit grid {tuple(batch.padding_mask.shape)}"
            )
        if int(targets.max()) >= self.config.num_classes:
            raise ValueError(
                f"a target id {int(targets.max())} >= objective.num_classes={self.config.num_classes} "
                "(set it to data.num_clusters)"
            )
        return targets

    def forward(self, encoder: Encoder, batch: Batch) -> ObjectiveOutput:
        cfg = self.config
        targets = self.targets(batch)
        check_span_fits(batch.maskable, cfg.mask_length, "mask_length")
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
