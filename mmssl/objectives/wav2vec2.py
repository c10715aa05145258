"""wav2vec 2.0: contrast masked context vectors with quantized targets among sampled distractors.

Baevski et al. 2020 ("wav2vec 2.0: A Framework for Self-Supervised Learning of Speech
Representations", sec. 3): spans of the encoder's local features are masked (p=0.065,
L=10, :func:`mmssl.masking.span_mask`), the context network sees the masked sequence, and
at every masked unit its output ``c_t`` must pick the quantized local feature ``q_t`` out of
``K`` distractors quantized at other masked units of the same utterance (eq. 3), plus a
codebook diversity term (eq. 4). The Gumbel-softmax temperature anneals from 2 to 0.5 by
0.999995 per update.

Modality-agnostic: the objective reads the encoder through three capabilities of the
:class:`mmssl.encoder.Encoder` protocol:

* :meth:`Encoder.output_padding_mask` maps a batch to its output grid ``[B, T]`` (conv frames
  of a waveform, or the units themselves);
* :meth:`Encoder.encode_with_features` returns the local features ``[B, T, C]`` beside the
  output, with the mask on the output grid;
* :meth:`Encoder.quantizer_head` holds the quantizer and projections (so they export with the
  backbone): ``quantizer(features, mask_time_indices) -> (codes [B, T, Dq], perplexity)`` with
  ``.temperature``, ``.num_groups``, ``.num_vars``; ``project_hid``, ``project_q`` and
  ``dropout_features`` modules. transformers' ``Wav2Vec2ForPreTraining`` is one such head, so
  the loss can be checked against it on the same weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from mmssl.distributed import global_mean_normalizer
from mmssl.encoder import Encoder
from mmssl.masking import span_mask
from mmssl.objectives.base import Objective
from mmssl.objectives.checks import check_span_fits
from mmssl.types import Batch, ObjectiveOutput


def sample_distractors(mask: Tensor, num_negatives: int, generator: torch.Generator | None = None) -> Tensor:
    """Distractor indices for every masked unit: other masked units of the same row, uniformly.

    The sampling of wav2vec 2.0 (and transformers' ``_sample_negative_indices``): for a row
    with ``m`` masked units, each masked unit draws ``num_negatives`` of the other ``m - 1``
    with replacement. A row with a single masked unit gets itself (its logits are then
    dropped as identical to the positive).

    Args:
        mask: ``[B, T]`` bool.

    Returns:
        ``[B, T, K]`` int64 indices into the flattened ``[B * T]`` grid (0 at unmasked units).
    """
    b, t = mask.shape
    dev = mask.device
    counts = mask.sum(1)  # [B]
    order = torch.argsort((~mask).to(torch.uint8), dim=1, stable=True)  # masked positions first, ascending
    rank = torch.cumsum(mask.long(), 1) - 1  # rank of each masked unit within its row
    others = (counts - 1).clamp(min=1)[:, None, None].float()
    draw = (torch.rand(b, t, num_negatives, device=dev, generator=generator) * others).long()
    draw = draw + (draw >= rank[..., None]).long()  # skip the unit itself, keeping the draw uniform
    draw = torch.minimum(draw, (counts - 1).clamp(min=0)[:, None, None])
    positions = order.gather(1, draw.reshape(b, -1)).reshape(b, t, num_negatives)
    flat = positions + torch.arange(b, device=dev)[:, None, None] * t
    return flat.masked_fill(~mask[..., None], 0)


def _masked_rows(x: Tensor, order: Tensor) -> Tensor:
    """``[B, T, D]`` -> ``[B, M, D]``: each row's units at ``order`` (``[B, M]`` positions)."""
    return x.gather(1, order.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


@torch.no_grad()
def _identical(q: Tensor, valid: Tensor, max_elements: int = 1 << 26) -> Tensor:
    """``[B, M, M]`` bool: the masked units' quantized vectors are bitwise equal (exact comparison).

    Vectorised over the batch with no host sync (a per-row loop costs a sync and a sort per
    row on a GPU); query rows are compared in chunks so that at most ``max_elements``
    ``[B, chunk, M, D]`` comparisons exist at once.
    """
    b, m, d = q.shape
    chunk = max(1, max_elements // max(1, b * m * d))
    out = (
        torch.cat([(q[:, i : i + chunk, None, :] == q[:, None, :, :]).all(-1) for i in range(0, m, chunk)], dim=1)
        if m
        else torch.zeros(b, 0, 0, dtype=torch.bool, device=q.device)
    )
    return out & valid[:, :, None] & valid[:, None, :]


def quantized_contrastive_loss(
    context: Tensor, quantized: Tensor, mask: Tensor, distractors: Tensor, temperature: float = 0.1
) -> tuple[Tensor, Tensor]:
    """wav2vec 2.0's contrastive loss ``L_m`` (eq. 3), summed over the masked units.

    ``-log( exp(sim(c_t, q_t)/k) / sum_{q in Q_t} exp(sim(c_t, q)/k) )`` with cosine ``sim``
    and ``Q_t = {q_t} + K distractors``; a distractor equal to ``q_t`` (a collapsed codebook)
    is left out of the denominator, as in fairseq and transformers.

    Distractors come from the masked units of the same row, so all the similarities a row
    needs are one ``[M, M]`` matrix of its ``M`` masked units: it is computed with a batched
    matmul and the ``K`` distractor logits are gathered from it, instead of gathering ``K``
    copies of the ``D``-dim targets for every unit (``[N, K, D]``, as fairseq and transformers do).

    Args:
        context: ``[B, T, D]`` projected context vectors ``c``.
        quantized: ``[B, T, D]`` projected quantized targets ``q`` (gradient flows to both).
        mask: ``[B, T]`` bool, the masked units (the only ones with a loss).
        distractors: ``[B, T, K]`` indices into ``[B * T]`` of masked units of the same row
            (:func:`sample_distractors`, transformers' ``_sample_negative_indices``).
        temperature: ``kappa`` (0.1 in the paper).

    Returns:
        ``(loss_sum, accuracy)``: the summed loss (divide by the masked count) and the
        fraction of masked units whose positive scores highest (detached).

    Raises:
        ValueError: On mismatched shapes, or distractors outside their unit's row.
    """
    if context.shape != quantized.shape or mask.shape != context.shape[:2] or distractors.shape[:2] != mask.shape:
        raise ValueError(
            f"context {tuple(context.shape)}, quantized {tuple(quantized.shape)}, mask "
            f"{tuple(mask.shape)} and distractors {tuple(distractors.shape)} must share the [B, T] grid"
        )
    b, t, _ = quantized.shape
    rows = torch.arange(b, device=mask.device)[:, None, None]
    if bool(((distractors // t != rows) & mask[..., None]).any()):
        raise ValueError("distractors must be masked units of the same row (indices into the flattened [B * T] grid)")
    counts = mask.sum(1)
    m = int(counts.max()) if mask.numel() else 0
    order = torch.argsort((~mask).to(torch.uint8), dim=1, stable=True)[:, :m]  # [B, M] masked positions
    valid = torch.arange(m, device=mask.device) < counts[:, None]  # [B, M]
    rank = torch.cumsum(mask.long(), 1) - 1  # [B, T]: rank of a masked unit among its row's masked units
    neg = rank.gather(1, (distractors % t).reshape(b, -1)).reshape(distractors.shape)  # [B, T, K] ranks
    neg = _masked_rows(neg, order).clamp(min=0)  # [B, M, K]
    q_rows = _masked_rows(quantized, order)
    c = F.normalize(_masked_rows(context, order).float(), dim=-1, eps=1e-8)
    q = F.normalize(q_rows.float(), dim=-1, eps=1e-8)
    sim = torch.bmm(c, q.transpose(1, 2)) / temperature  # [B, M, M]
    positive = sim.diagonal(dim1=1, dim2=2).unsqueeze(-1)  # [B, M, 1]
    negative = sim.gather(2, neg).masked_fill(_identical(q_rows.detach(), valid).gather(2, neg), float("-inf"))
    logits = torch.cat([positive, negative], dim=-1)[valid]  # [N, 1 + K], rows in the order of context[mask]
    target = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    loss = F.cross_entropy(logits, target, reduction="sum")
    accuracy = (logits.argmax(-1) == 0).float().mean() if len(target) else torch.zeros((), device=logits.device)
    return loss, accuracy.detach()


def codebook_diversity(perplexity: Tensor, num_codevectors: int) -> Tensor:
    """wav2vec 2.0's diversity loss ``L_d`` (eq. 4): ``(G V - sum_g exp(H(p_g))) / (G V)``, where
    ``perplexity`` is the summed per-group perplexity of the batch-averaged soft assignments."""
    return (num_codevectors - perplexity) / num_codevectors


def gumbel_temperature(step: int, start: float, end: float, decay: float) -> float:
    """``max(start * decay^step, end)``: the paper's 2 -> 0.5 annealing with decay 0.999995."""
    return max(start * decay**step, end)


@dataclass(frozen=True)
class Wav2Vec2Config:
    """wav2vec 2.0 (Baevski et al. 2020); defaults are the paper's BASE settings."""

    name: str = "wav2vec2"
    mask_prob: float = 0.065  # span starts per unit (transformers' mask_time_prob = 0.065 * 10 = 0.65)
    mask_length: int = 10
    min_masks: int = 2  # spans per row at least (transformers' run_wav2vec2_pretraining_no_trainer)
    num_negatives: int = 100  # K distractors
    logit_temperature: float = 0.1  # kappa
    diversity_weight: float = 0.1  # alpha
    gumbel_start: float = 2.0
    gumbel_end: float = 0.5
    gumbel_decay: float = 0.999995

    def __post_init__(self) -> None:
        if not 0.0 < self.mask_prob < 1.0 or self.mask_length < 1:
            raise ValueError("objective.mask_prob must be in (0, 1) and objective.mask_length >= 1")
        if self.num_negatives < 1 or self.logit_temperature <= 0 or self.diversity_weight < 0:
            raise ValueError("objective.num_negatives >= 1, logit_temperature > 0, diversity_weight >= 0 are required")
        if not 0 < self.gumbel_end <= self.gumbel_start or not 0 < self.gumbel_decay <= 1:
            raise ValueError("objective: 0 < gumbel_end <= gumbel_start and 0 < gumbel_decay <= 1 are required")


class Wav2Vec2Objective(Objective):
    """Masked contrastive prediction of quantized local features (the wav2vec 2.0 loss ``L_m + a L_d``).

    The loss is normalised by the global number of masked units; transformers'
    ``Wav2Vec2ForPreTraining.loss`` is the same quantity before that division.
    """

    def __init__(self, config: Wav2Vec2Config, encoder: Encoder) -> None:
        super().__init__(config, encoder)
        encoder.quantizer_head()  # fails now, naming the setting, for an encoder without one
        self.register_buffer("step", torch.zeros((), dtype=torch.long))  # for the temperature, saved with the state

    def make_mask(self, padding: Tensor) -> Tensor:
        cfg = self.config
        check_span_fits(~padding, cfg.mask_length, "mask_length")
        return span_mask(~padding, start_prob=cfg.mask_prob, span_length=cfg.mask_length, min_spans=cfg.min_masks)

    def forward(self, encoder: Encoder, batch: Batch) -> ObjectiveOutput:
        mask = self.make_mask(encoder.output_padding_mask(batch))
        return self.loss(encoder, batch, mask, sample_distractors(mask, self.config.num_negatives))

    def loss(self, encoder: Encoder, batch: Batch, mask: Tensor, distractors: Tensor) -> ObjectiveOutput:
        """The loss for a given mask ``[B, T]`` and distractors ``[B, T, K]`` (also used by the parity test)."""
        cfg, head = self.config, encoder.quantizer_head()
        quantizer = head.quantizer
        quantizer.temperature = gumbel_temperature(int(self.step), cfg.gumbel_start, cfg.gumbel_end, cfg.gumbel_decay)
        out, features = encoder.encode_with_features(batch, mask)
        context = head.project_hid(out.hidden)  # [B, T, P]
        codes, perplexity = quantizer(head.dropout_features(features), mask_time_indices=mask)
        quantized = head.project_q(codes.to(head.project_q.weight.dtype))  # [B, T, P]
        contrastive_sum, accuracy = quantized_contrastive_loss(
            context, quantized, mask, distractors, cfg.logit_temperature
        )
        n = global_mean_normalizer(mask.sum())
        diversity = codebook_diversity(perplexity, quantizer.num_groups * quantizer.num_vars)
        contrastive = contrastive_sum / n
        # transformers weighs the diversity term by the local masked count: sum-loss / count = the same mean
        loss = contrastive + cfg.diversity_weight * diversity * (mask.sum() / n)
        logs = {
            "contrastive_accuracy": accuracy,
            "codebook_perplexity": perplexity.detach(),
            "gumbel_temperature": torch.tensor(quantizer.temperature),
            "masked_fraction": (mask.sum() / (~out.padding_mask).sum().clamp(min=1)).detach(),
        }
        return ObjectiveOutput(loss=loss, terms={"contrastive": contrastive, "diversity": diversity}, logs=logs)

    def after_optimizer_step(self, encoder: Encoder, step: int, max_steps: int) -> None:
        self.step.fill_(step)
