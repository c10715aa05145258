"""Next-unit prediction: GPT (Radford et al. 2018).

The vocabulary projection runs on the positions that have a target (every real unit but the
last of its row), and the loss is normalised by the global number of predicted units
(:func:`mmssl.objectives.losses.unit_classification_loss`).
"""

from __future__ import annotations

from dataclasses import dataclass

from mmssl.encoder import Encoder
from mmssl.objectives.base import Objective
from mmssl.objectives.heads import vocab_head
from mmssl.objectives.losses import unit_classification_loss
from mmssl.types import Batch, ObjectiveOutput


@dataclass(frozen=True)
class CausalLMConfig:
    """Next-unit prediction (GPT, Radford et al. 2018)."""

    name: str = "clm"


class CausalLM(Objective):
    """Predict unit ``t+1`` from units ``<= t`` (the encoder must be causal, e.g. GPT-2)."""

    def __init__(self, config: CausalLMConfig, encoder: Encoder) -> None:
        super().__init__(config, encoder)
        if not encoder.causal:  # a bidirectional encoder sees the unit it is asked to predict
            raise ValueError(
                f"clm predicts each unit from the ones before it and needs a causal encoder "
                f"(e.g. encoder.arch=gpt2), got {type(encoder).__name__}, which sees both sides"
            )
        self.head = vocab_head(encoder)

    def forward(self, encoder: Encoder, batch: Batch) -> ObjectiveOutput:
        out = encoder.encode(batch)
        # a target exists where both the position and its successor are real units
        valid = ~batch.padding_mask[:, 1:] & ~batch.padding_mask[:, :-1]
        head = self.head if self.head is not None else encoder.prediction_head()
        logits = head(out.hidden[:, :-1][valid])  # [N, V]
        loss, acc = unit_classification_loss(logits, batch.units[:, 1:][valid])
        return ObjectiveOutput(loss=loss, terms={"clm": loss}, logs={"clm_accuracy": acc})
