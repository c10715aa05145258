"""Masked unit prediction: BERT (Devlin et al. 2019), optionally with ALBERT's sentence order (Lan et al. 2020).

The vocabulary projection runs on the masked positions only, and the loss is normalised by
the global number of masked units (:func:`mmssl.objectives.losses.unit_classification_loss`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmssl.encoder import Encoder
from mmssl.masking import bert_mask
from mmssl.objectives.base import Objective
from mmssl.objectives.heads import vocab_head
from mmssl.objectives.losses import unit_classification_loss
from mmssl.types import Batch, Extra, ObjectiveOutput


@dataclass(frozen=True)
class MaskedLMConfig:
    """Masked unit prediction (BERT, Devlin et al. 2019), optionally with ALBERT's sentence order."""

    name: str = "mlm"
    mask_prob: float = 0.15  # BERT: 15% of tokens are prediction targets
    mask_token_frac: float = 0.8  # of those, 80% -> [MASK]
    random_token_frac: float = 0.1  # 10% -> random token, 10% unchanged
    sentence_order_weight: float = 0.0  # ALBERT SOP term (Lan et al. 2020); needs data.sentence_pairs=true

    def __post_init__(self) -> None:
        if not 0.0 < self.mask_prob < 1.0:
            raise ValueError(f"objective.mask_prob must be in (0, 1), got {self.mask_prob}")
        if self.sentence_order_weight < 0:
            raise ValueError("objective.sentence_order_weight must be >= 0")


class MaskedLM(Objective):
    """Predict the original ids of masked units; the vocabulary projection runs on masked positions only."""

    def __init__(self, config: MaskedLMConfig, encoder: Encoder) -> None:
        super().__init__(config, encoder)
        if encoder.mask_token_id is None:
            raise ValueError(f"{type(encoder).__name__} has no mask token: the mlm objective needs one")
        self.head = vocab_head(encoder)
        d = encoder.hidden_size
        # ALBERT's SOP classifier on the first unit ([CLS]): pooler (dense + tanh) then 2 classes.
        self.sop_head = (
            nn.Sequential(nn.Linear(d, d), nn.Tanh(), nn.Linear(d, 2)) if config.sentence_order_weight > 0 else None
        )

    def forward(self, encoder: Encoder, batch: Batch) -> ObjectiveOutput:
        cfg = self.config
        mask, corrupted = bert_mask(
            batch.units,
            batch.maskable,
            mask_token_id=encoder.mask_token_id,
            vocab_size=encoder.vocab_size,
            mask_prob=cfg.mask_prob,
            mask_token_frac=cfg.mask_token_frac,
            random_token_frac=cfg.random_token_frac,
        )
        # the encoder is read at the masked units (and [CLS] for SOP) only: its last layer
        # and the vocabulary projection run there, never over all [B, T] positions
        read = mask.clone()
        if self.sop_head is not None:
            read[:, 0] = True
        hidden = encoder.encode_at(batch.replace(units=corrupted), read)  # [N_read, D]
        head = self.head if self.head is not None else encoder.prediction_head()
        logits = head(hidden[mask[read]])  # [N_masked, V]
        mlm, acc = unit_classification_loss(logits, batch.units[mask])
        terms = {"mlm": mlm}
        logs = {"mlm_accuracy": acc, "masked_fraction": (mask.sum() / batch.maskable.sum().clamp(min=1)).detach()}
        if self.sop_head is not None:
            first = torch.zeros_like(read)
            first[:, 0] = True
            terms["sop"], logs["sop_accuracy"] = self.sentence_order_loss(hidden[first[read]], batch)
        loss = mlm + cfg.sentence_order_weight * terms.get("sop", 0.0)
        return ObjectiveOutput(loss=loss, terms=terms, logs=logs)

    def sentence_order_loss(self, first: Tensor, batch: Batch) -> tuple[Tensor, Tensor]:
        """Cross-entropy on whether the two segments were swapped; ``first`` is the ``[B, D]`` output at [CLS]."""
        labels = batch.extras.get(Extra.SOP_LABELS)
        if labels is None:
            raise ValueError("objective.sentence_order_weight > 0 needs sentence pairs: set data.sentence_pairs=true")
        logits = self.sop_head(first)
        return F.cross_entropy(logits.float(), labels), (logits.argmax(-1) == labels).float().mean().detach()
