"""vq-wav2vec (Baevski et al. 2020, "vq-wav2vec: Self-Supervised Learning of Discrete Speech Representations").

wav2vec (Schneider et al. 2019) with a quantised bottleneck: the conv encoder's frames ``z`` are replaced by
codewords ``z_hat`` of a Gumbel-softmax product quantizer (G = 2 groups of V = 320, straight-through, temperature
annealed linearly from 2 to 0.5 over the first 70% of updates, sec. 3.1 and 5.1), a causal context network reads
``z_hat``, and ``W_k c_t`` predicts ``z_hat_{t+k}``, ``k = 1..8``, against 10 negatives from the same utterance
with wav2vec's binary cross-entropy (eq. 1; ``objective.loss=infonce`` gives CPC's softmax form).

The quantizer and context network are the encoder's (the audio domain's ``encoder.arch=cpc`` with
``encoder.cpc_quantizer=gumbel``: transformers' ``Wav2Vec2GumbelVectorQuantizer``, reached through
:meth:`Encoder.quantizer_head`), so the export holds both; this objective anneals the quantizer's temperature and
computes the loss with CPC's :func:`mmssl.objectives.cpc.future_contrastive_loss` on the quantised frames that
:meth:`Encoder.encode_with_features` returns. On a causal encoder without a quantizer it is wav2vec itself
(``quantized`` is 0 in the logs).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from mmssl.encoder import CapabilityError, Encoder
from mmssl.objectives.base import Objective
from mmssl.objectives.cpc import (
    StepPredictors,
    check_contrastive_settings,
    check_rows,
    check_sequence_recipe,
    encoder_context,
    predictive_coding_output,
    require_causal_context,
)
from mmssl.types import Batch, ObjectiveOutput


def linear_temperature(step: int, max_steps: int, start: float, end: float, fraction: float) -> float:
    """vq-wav2vec's schedule: ``start`` -> ``end`` linearly over the first ``fraction`` of ``max_steps``, then
    ``end`` (``start`` while ``max_steps`` is unknown, before the first update)."""
    if max_steps <= 0:
        return start
    return start + (end - start) * min(1.0, step / max(1.0, fraction * max_steps))


@dataclass(frozen=True)
class VQWav2VecConfig:
    """vq-wav2vec with the Gumbel quantizer; defaults are the paper's (sec. 4.2, 5.1) and wav2vec's loss."""

    name: str = "vq_wav2vec"
    prediction_steps: int = 8  # K
    num_negatives: int = 10  # wav2vec: 10 negatives from the same audio sequence
    negatives: Literal["sequence", "batch"] = "sequence"
    loss: Literal["infonce", "binary"] = "binary"  # wav2vec eq. 1 (lambda = 1 per negative)
    gumbel_start: float = 2.0
    gumbel_end: float = 0.5
    gumbel_anneal_fraction: float = 0.7  # of train.max_steps

    def __post_init__(self) -> None:
        check_contrastive_settings(self)
        if not 0 < self.gumbel_end <= self.gumbel_start or not 0 < self.gumbel_anneal_fraction <= 1:
            raise ValueError("objective: 0 < gumbel_end <= gumbel_start and 0 < gumbel_anneal_fraction <= 1 required")

    def check_recipe(self, recipe: Any) -> None:
        check_sequence_recipe(self, recipe)


class VQWav2Vec(Objective):
    """wav2vec's future prediction on the encoder's quantised frames, annealing its Gumbel temperature.

    State in the checkpoint: ``step`` and ``max_steps`` (the temperature's place in its schedule).
    """

    def __init__(self, config: VQWav2VecConfig, encoder: Encoder) -> None:
        super().__init__(config, encoder)
        require_causal_context(encoder, "vq_wav2vec")
        self.predictors = StepPredictors(encoder.hidden_size, encoder.feature_dim, config.prediction_steps)
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self.register_buffer("max_steps", torch.zeros((), dtype=torch.long))

    def quantizer(self, encoder: Encoder) -> nn.Module | None:
        """The encoder's Gumbel quantizer (``temperature``, ``num_groups``, ``num_vars``), or None."""
        try:
            return encoder.quantizer_head().quantizer
        except CapabilityError:
            return None

    def temperature(self) -> float:
        cfg = self.config
        return linear_temperature(
            int(self.step), int(self.max_steps), cfg.gumbel_start, cfg.gumbel_end, cfg.gumbel_anneal_fraction
        )

    def forward(self, encoder: Encoder, batch: Batch) -> ObjectiveOutput:
        quantizer = self.quantizer(encoder)
        if quantizer is not None:
            quantizer.temperature = self.temperature()
        context, features, valid = encoder_context(encoder, batch)
        check_rows(valid, self.config, "vq_wav2vec")
        out = predictive_coding_output(self.predictors, context, features, valid, self.config)
        logs: dict[str, Tensor] = {**out.logs, "quantized": torch.tensor(float(quantizer is not None))}
        if quantizer is not None:
            logs["gumbel_temperature"] = torch.tensor(quantizer.temperature)
            logs["codewords_used"] = codewords_used(features.detach(), valid)
        return ObjectiveOutput(loss=out.loss, terms=out.terms, logs=logs)

    def after_optimizer_step(self, encoder: Encoder, step: int, max_steps: int) -> None:
        self.step.fill_(step)
        self.max_steps.fill_(max_steps)


def codewords_used(frames: Tensor, valid: Tensor) -> Tensor:
    """Distinct quantised frames (combinations of one codeword per group) among the real frames of a batch: the
    codebook usage vq-wav2vec reports (a collapsed quantizer uses few)."""
    return torch.tensor(float(torch.unique(frames[valid].float(), dim=0).shape[0]))
