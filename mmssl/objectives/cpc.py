"""CPC (van den Oord et al. 2018, "Representation Learning with Contrastive Predictive Coding").

A causal context ``c_t`` predicts the local features ``z_{t+k}`` of ``k = 1..K`` future units through a separate
linear map ``W_k`` per step (the log-bilinear score ``f_k = exp(z_{t+k}^T W_k c_t)``, eq. 3), trained with InfoNCE
(eq. 4): ``z_{t+k}`` must score highest among ``N`` negatives drawn from the same sequence or from the whole batch
(Table 2 compares both). A negative that is the positive itself is left out of the denominator.

Where the context network lives: CPC probes ``c_t`` (sec. 3.1), so it is part of the exported encoder. The
objective reads the encoder through :meth:`Encoder.encode_with_features` (``c`` as ``hidden``, ``z`` as the local
features) and needs :attr:`Encoder.causal`: the audio domain's ``encoder.arch=cpc`` (conv encoder + GRU) or a
causal conformer on fbank units. It owns only the predictors. CPC v2 on image grids, whose context network is
discarded after pretraining, is :mod:`mmssl.objectives.cpc_v2`; vq-wav2vec is :mod:`mmssl.objectives.vq_wav2vec`.
Both reuse :func:`sample_negatives` and :func:`future_contrastive_loss`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmssl.distributed import global_mean_normalizer
from mmssl.encoder import Encoder
from mmssl.objectives.base import Objective
from mmssl.objectives.losses import f32, full_precision
from mmssl.types import Batch, ObjectiveOutput

NEGATIVE_POOLS = ("sequence", "batch")
LOSSES = ("infonce", "binary")


def sample_negatives(valid: Tensor, num: int, pool: str, generator: torch.Generator | None = None) -> Tensor:
    """``num`` negatives for every unit, uniformly with replacement among the real units of its pool.

    Args:
        valid: ``[B, T]`` bool, the real units.
        num: negatives per unit.
        pool: ``sequence`` (the unit's own row) or ``batch`` (any row, its own included).

    Returns:
        ``[B, T, num]`` int64 indices into the flattened ``[B * T]`` grid. The positive is not excluded here (the
        same negatives serve every step ``k``); :func:`future_contrastive_loss` masks it out per step.
    """
    b, t = valid.shape
    if pool == "sequence":
        counts = valid.sum(1)[:, None, None]  # [B, 1, 1]
        order = torch.argsort((~valid).to(torch.uint8), dim=1, stable=True)  # real positions first
        draw = (torch.rand(b, t, num, device=valid.device, generator=generator) * counts).long()
        draw = torch.minimum(draw, (counts - 1).clamp(min=0))
        rows = torch.arange(b, device=valid.device)[:, None, None] * t
        return order.gather(1, draw.reshape(b, -1)).reshape(b, t, num) + rows
    flat = valid.reshape(-1)
    order = torch.argsort((~flat).to(torch.uint8), stable=True)
    draw = (torch.rand(b, t, num, device=valid.device, generator=generator) * flat.sum()).long()
    return order[torch.minimum(draw, (flat.sum() - 1).clamp(min=0))]


def _step_logits(
    predictions: Tensor, targets: Tensor, negative_scores: Tensor, negatives: Tensor, shift: int
) -> Tensor:
    """Positive and negative scores of one step, ``[B, T - shift, 1 + N]``.

    A negative whose index is the positive's (``b * T + t + shift``) scores ``-inf``: it drops out of the softmax.
    """
    b, t, _ = targets.shape
    n = t - shift
    positive = (predictions[:, :n] * targets[:, shift:]).sum(-1, keepdim=True)  # [B, n, 1]
    target_index = torch.arange(b, device=targets.device)[:, None] * t + torch.arange(shift, t, device=targets.device)
    is_positive = negatives[:, :n] == target_index[..., None]  # [B, n, N]
    return torch.cat([positive, negative_scores[:, :n].masked_fill(is_positive, float("-inf"))], dim=-1)


@full_precision
def future_contrastive_loss(
    predictions: Tensor, targets: Tensor, valid: Tensor, negatives: Tensor, step: int = 1, loss: str = "infonce"
) -> tuple[Tensor, Tensor, Tensor]:
    """Contrastive prediction of ``K`` future units, summed per step.

    With ``p_k(t) = W_k c_t`` and ``s(x) = p_k(t)^T x``, for every unit ``t`` whose target ``t + k * step`` is
    real (``step`` is 1 on a sequence, the row length on a row-major grid: "k rows below")::

        infonce: -log( exp s(z_{t+k}) / (exp s(z_{t+k}) + sum_{n in N_t, n != t+k} exp s(z_n)) )   (CPC, eq. 4)
        binary:  -log sigmoid(s(z_{t+k})) - sum_{n in N_t, n != t+k} log sigmoid(-s(z_n))        (wav2vec, eq. 1)

    Args:
        predictions: ``[B, T, K, D]`` ``W_k c_t`` for every unit and step.
        targets: ``[B, T, D]`` local features ``z``.
        valid: ``[B, T]`` bool, the real units (neither context nor target elsewhere).
        negatives: ``[B, T, N]`` indices into ``[B * T]`` (:func:`sample_negatives`).
        step: grid distance of one step ahead.
        loss: ``infonce`` or ``binary``.

    Returns:
        ``(loss_sum [K], count [K], correct [K])``: per step, the summed loss, the number of predictions and how
        many score their positive above every negative (detached).
    """
    b, t, k_steps, d = predictions.shape
    predictions, targets = f32(predictions), f32(targets)
    negative_scores = torch.einsum("btkd,btnd->btkn", predictions, targets.reshape(b * t, d)[negatives])
    sums, counts, correct = [], [], []
    for k in range(1, k_steps + 1):
        shift = k * step
        if shift >= t:  # no unit has a target this far ahead
            zero = predictions.new_zeros(())
            sums, counts, correct = [*sums, zero], [*counts, zero], [*correct, zero]
            continue
        logits = _step_logits(predictions[:, :, k - 1], targets, negative_scores[:, :, k - 1], negatives, shift)
        rows = logits[valid[:, : t - shift] & valid[:, shift:]]  # [M, 1 + N]
        if loss == "infonce":
            term = F.cross_entropy(rows, torch.zeros(len(rows), dtype=torch.long, device=rows.device), reduction="sum")
        else:  # a left-out negative (-inf) costs -log sigmoid(inf) = 0
            term = -(F.logsigmoid(rows[:, 0]).sum() + F.logsigmoid(-rows[:, 1:]).sum())
        sums.append(term)
        counts.append(rows.new_tensor(float(len(rows))))
        correct.append((rows.detach().argmax(-1) == 0).float().sum())
    return torch.stack(sums), torch.stack(counts), torch.stack(correct)


class StepPredictors(nn.Module):
    """The ``K`` linear maps ``W_k: c -> z`` (no bias: the log-bilinear model of eq. 3), stored as one matrix."""

    def __init__(self, context_dim: int, feature_dim: int, steps: int) -> None:
        super().__init__()
        self.steps, self.feature_dim = steps, feature_dim
        self.proj = nn.Linear(context_dim, steps * feature_dim, bias=False)

    def forward(self, context: Tensor) -> Tensor:
        """``[B, T, D_c]`` -> ``[B, T, K, D_z]``."""
        return self.proj(context).unflatten(-1, (self.steps, self.feature_dim))


def predictive_coding_output(
    predictors: StepPredictors, context: Tensor, features: Tensor, valid: Tensor, config: Any, step: int = 1
) -> ObjectiveOutput:
    """The loss of ``config`` (``num_negatives``, ``negatives``, ``loss``): the mean over steps of each step's loss
    averaged over its predictions in the global batch, with per-step accuracies in the logs."""
    negatives = sample_negatives(valid, config.num_negatives, config.negatives)
    sums, counts, correct = future_contrastive_loss(predictors(context), features, valid, negatives, step, config.loss)
    per_step = sums / global_mean_normalizer(counts)
    loss = per_step.mean()
    logs: dict[str, Tensor] = {"accuracy": (correct.sum() / counts.sum().clamp(min=1)).detach()}
    for k in sorted({1, predictors.steps}):
        logs[f"accuracy_step{k}"] = (correct[k - 1] / counts[k - 1].clamp(min=1)).detach()
    return ObjectiveOutput(loss=loss, terms={config.loss: loss}, logs=logs)


def check_future_fits(config: Any, reach: int, units: int, rows: int | None, where: str) -> None:
    """``K`` steps fit in ``reach`` units along the prediction axis, and ``N`` negatives among the other units of a
    row of ``units`` (pool ``sequence``) or of ``rows`` such rows (pool ``batch``; None: not known yet, unchecked).

    Raises:
        ValueError: Naming ``objective.prediction_steps`` or ``objective.num_negatives`` and ``where``.
    """
    if config.prediction_steps >= reach:
        raise ValueError(
            f"objective.prediction_steps={config.prediction_steps} reaches past the {reach} units a row has to "
            f"predict ({where}): lower objective.prediction_steps or give longer inputs"
        )
    if config.negatives == "batch" and rows is None:
        return
    available = units - 1 if config.negatives == "sequence" else units * rows - 1
    if config.num_negatives > available:
        raise ValueError(
            f"objective.num_negatives={config.num_negatives} exceeds the {available} other units "
            f"objective.negatives={config.negatives} can draw from ({where}): lower objective.num_negatives"
        )


def check_contrastive_settings(config: Any) -> None:
    """Value checks every future-prediction config shares (called from ``__post_init__``)."""
    if config.prediction_steps < 1 or config.num_negatives < 1:
        raise ValueError("objective.prediction_steps and objective.num_negatives must be >= 1")
    if config.negatives not in NEGATIVE_POOLS:
        raise ValueError(f"objective.negatives must be one of {NEGATIVE_POOLS}, got {config.negatives!r}")
    if config.loss not in LOSSES:
        raise ValueError(f"objective.loss must be one of {LOSSES}, got {config.loss!r}")


def check_sequence_recipe(config: Any, recipe: Any) -> None:
    """``K`` and ``N`` against the longest row a recipe's data gives its encoder (an encoder config with
    ``units_per_crop(data)``: the audio domain's), at load time; the forward pass checks every batch."""
    units_per_crop = getattr(recipe.encoder, "units_per_crop", None)
    if units_per_crop is not None:
        where = f"data.max_seconds={recipe.data.max_seconds} on encoder.arch={recipe.encoder.arch}"
        units = units_per_crop(recipe.data)
        check_future_fits(config, units, units, recipe.train.batch_size, where)


@dataclass(frozen=True)
class CPCConfig:
    """CPC on sequences; defaults are the paper's speech settings (sec. 3.1) and facebookresearch/CPC_audio's."""

    name: str = "cpc"
    prediction_steps: int = 12  # K: 12 frames of 10 ms ahead
    num_negatives: int = 128  # N per prediction (CPC_audio's nNegativeExt)
    negatives: Literal["sequence", "batch"] = "batch"  # the paper's "mixed speaker"; "sequence": current only
    loss: Literal["infonce", "binary"] = "infonce"  # binary: wav2vec's (Schneider et al. 2019) sigmoid form

    def __post_init__(self) -> None:
        check_contrastive_settings(self)

    def check_recipe(self, recipe: Any) -> None:
        check_sequence_recipe(self, recipe)


def encoder_context(encoder: Encoder, batch: Batch) -> tuple[Tensor, Tensor, Tensor]:
    """``(c [B, T, D], z [B, T, C], valid [B, T])`` of a causal encoder that returns its local features."""
    out, features = encoder.encode_with_features(batch)
    return out.hidden, features, ~out.padding_mask


def check_rows(valid: Tensor, config: Any, name: str) -> None:
    """The batch's rows are long enough to predict ``K`` steps ahead (shapes only: no device sync). Rows shorter than
    ``N`` are fine: negatives are drawn with replacement (the recipe check bounds ``N`` by the longest crop)."""
    if valid.shape[1] <= config.prediction_steps:
        raise ValueError(
            f"{name}: rows of {valid.shape[1]} units are too short to predict objective.prediction_steps="
            f"{config.prediction_steps} ahead; lower it or give longer inputs (data.min_seconds)"
        )


def require_causal_context(encoder: Encoder, name: str) -> None:
    """The encoder is its own causal context network and returns its local features (``feature_dim``).

    Raises:
        ValueError: Naming the encoders that fit.
    """
    if not encoder.causal or encoder.feature_dim is None:
        raise ValueError(
            f"{name} reads the context c_t of a causal encoder with local features, got {type(encoder).__name__} "
            "(the audio domain's encoder.arch=cpc, or encoder.arch=conformer with encoder.causal=true)"
        )


class CPC(Objective):
    """InfoNCE of ``W_k c_t`` against ``z_{t+k}``, ``k = 1..K``, with the encoder's own causal context ``c``."""

    def __init__(self, config: CPCConfig, encoder: Encoder) -> None:
        super().__init__(config, encoder)
        require_causal_context(encoder, "cpc")
        self.predictors = StepPredictors(encoder.hidden_size, encoder.feature_dim, config.prediction_steps)

    def forward(self, encoder: Encoder, batch: Batch) -> ObjectiveOutput:
        context, features, valid = encoder_context(encoder, batch)
        check_rows(valid, self.config, "cpc")
        return predictive_coding_output(self.predictors, context, features, valid, self.config)
