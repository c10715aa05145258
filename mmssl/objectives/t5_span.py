"""Span corruption: T5's denoising pretraining objective (Raffel et al. 2020, "Exploring the Limits of Transfer
Learning with a Unified Text-to-Text Transformer", sec. 3.1.4 and 3.3.4).

A raw sequence of ``L`` units loses ``round(L * noise_density)`` of them in ``round(noise / mean_noise_span_length)``
spans. The span lengths are a uniformly random composition of the noise count into that many positive parts, and
the kept units likewise, interleaved so that the sequence starts with kept units and ends with noise (T5's
``random_spans_noise_mask``). In the input each noise span becomes one sentinel (the ``k``-th span ``<extra_id_k>``);
the target lists, for each span, its sentinel and its units; both end with the end-of-sequence token::

    raw      Thank you for inviting me to your party last week .
    input    Thank you <extra_id_0> me to your party <extra_id_1> week . </s>
    target   <extra_id_0> for inviting <extra_id_1> last </s>

(the paper's Figure 2 ends its target with a third sentinel because its example ends on kept words; T5's code
always ends on a noise span, so the end-of-sequence token closes the target instead). Every row of ``L`` units
gives the same input and target lengths, so a batch of packed rows needs no padding: :func:`t5_lengths` is the raw
length whose corrupted input is exactly the encoder's input length (T5's ``compute_input_and_target_lengths``, e.g.
568 raw tokens -> 512 input and 114 target tokens at 15% noise in spans of 3).

The model is a sequence-to-sequence encoder (:meth:`mmssl.encoder.Encoder.decode`, e.g. the text domain's
``encoder.arch=t5``, transformers' ``T5ForConditionalGeneration``); the loss is the cross-entropy of the teacher-forced
decoder over every target token, normalised by the global number of target tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from mmssl.encoder import CapabilityError, Encoder
from mmssl.objectives.base import Objective
from mmssl.objectives.checks import check_ratio
from mmssl.objectives.losses import unit_classification_loss
from mmssl.types import Batch, ObjectiveOutput


@dataclass(frozen=True)
class T5SpanCorruptionConfig:
    """T5's span corruption (Raffel et al. 2020, sec. 3.3.4; the defaults are the paper's final choice)."""

    name: str = "t5_span_corruption"
    noise_density: float = 0.15  # fraction of raw units dropped (T5: 15%, as BERT's masking rate)
    mean_noise_span_length: float = 3.0  # T5: spans of 3 on average (Table 7: 2, 3, 5 and 10 tested; 3 kept)

    def __post_init__(self) -> None:
        check_ratio(self.noise_density, "noise_density")
        if not self.mean_noise_span_length >= 1:  # also catches NaN
            raise ValueError(
                f"objective.mean_noise_span_length must be >= 1 (a span holds at least one unit), "
                f"got {self.mean_noise_span_length}"
            )

    def raw_length(self, inputs_length: int) -> int:
        """Units of a raw row whose corrupted input is ``inputs_length`` long (the domain packs rows of it)."""
        return t5_lengths(inputs_length, self.noise_density, self.mean_noise_span_length)[0]

    def check_recipe(self, recipe: Any) -> None:
        """Rows must all have the raw length: padded rows (the text domain's ``data.packing=line``) are refused."""
        packing = getattr(recipe.data, "packing", "concat")
        if packing != "concat":
            raise ValueError(
                f"objective.name={self.name} corrupts packed rows of one length (T5's lengths leave no padding), "
                f"but data.packing={packing} pads rows: set data.packing=concat"
            )


def span_counts(length: int, noise_density: float, mean_noise_span_length: float) -> tuple[int, int]:
    """``(noise units, noise spans)`` of a raw row of ``length`` units, as T5 draws them.

    At least one unit is noise and one is kept, and there are at least one and at most as many spans as either
    count allows (every span, of noise or kept units, holds one unit or more). Python's ``round`` rounds halves
    to even, as ``tf.round`` in T5.
    """
    num_noise = min(max(round(length * noise_density), 1), length - 1)
    num_spans = max(round(num_noise / mean_noise_span_length), 1)
    return num_noise, min(num_spans, num_noise, length - num_noise)


def corrupted_lengths(length: int, noise_density: float, mean_noise_span_length: float) -> tuple[int, int]:
    """``(input, target)`` lengths of a corrupted raw row of ``length`` units.

    The input holds the kept units, one sentinel per span and the end-of-sequence token; the target the noise
    units, one sentinel per span and the end-of-sequence token.
    """
    num_noise, num_spans = span_counts(length, noise_density, mean_noise_span_length)
    return length - num_noise + num_spans + 1, num_noise + num_spans + 1


def t5_lengths(inputs_length: int, noise_density: float, mean_noise_span_length: float) -> tuple[int, int]:
    """``(raw length, target length)``: the longest raw row whose corrupted input is at most ``inputs_length`` long.

    The input length grows by 0 or 1 per raw unit, so the longest such row gives exactly ``inputs_length`` units
    (T5's ``compute_input_and_target_lengths``, without its shortening of the raw row at a density of 0.5).
    """
    if inputs_length < 3:
        raise ValueError(f"a T5 input needs at least 3 units (a kept unit, a sentinel, the end), got {inputs_length}")
    raw = inputs_length - 1  # never longer than inputs_length once corrupted: a span replaces >= 1 unit
    while corrupted_lengths(raw + 1, noise_density, mean_noise_span_length)[0] <= inputs_length:
        raw += 1
    return raw, corrupted_lengths(raw, noise_density, mean_noise_span_length)[1]


def random_segmentation(
    batch_size: int, num_items: int, num_segments: int, device: torch.device, generator: torch.Generator | None
) -> Tensor:
    """``[B, S]`` lengths of a uniformly random split of ``num_items`` units into ``S = num_segments`` nonempty runs.

    Each row picks ``S - 1`` distinct cut points among the ``num_items - 1`` gaps (a random permutation's first ones).
    """
    gaps = torch.rand(batch_size, num_items - 1, device=device, generator=generator)
    cuts = gaps.argsort(dim=1)[:, : num_segments - 1].sort(dim=1).values + 1  # [B, S-1] in 1..num_items-1
    ends = torch.full((batch_size, 1), num_items, device=device)
    return torch.diff(torch.cat([cuts, ends], dim=1), dim=1, prepend=torch.zeros_like(ends))


def random_spans_noise_mask(
    batch_size: int,
    length: int,
    noise_density: float,
    mean_noise_span_length: float,
    *,
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
) -> Tensor:
    """``[B, L]`` bool, True at noise: per row, kept and noise spans alternate, starting with kept units.

    Every row has the same noise count and span count (:func:`span_counts`); the draw is vectorised over the batch
    and reproducible from ``generator`` (or torch's global generator of ``device``, which the trainer seeds per step).
    """
    device = torch.device(device)
    num_noise, num_spans = span_counts(length, noise_density, mean_noise_span_length)
    noise = random_segmentation(batch_size, num_noise, num_spans, device, generator)  # [B, S]
    kept = random_segmentation(batch_size, length - num_noise, num_spans, device, generator)  # [B, S]
    runs = torch.stack([kept, noise], dim=2).view(batch_size, 2 * num_spans)  # kept_0, noise_0, kept_1, ...
    starts = runs.cumsum(dim=1)[:, :-1]  # [B, 2S - 1] where runs 1 .. 2S-1 begin
    first = torch.zeros(batch_size, length, dtype=torch.long, device=device).scatter_(1, starts, 1)
    return first.cumsum(dim=1) % 2 == 1  # odd runs are noise


def replace_spans(units: Tensor, spans: Tensor, sentinels: Tensor, out_length: int) -> Tensor:
    """``units`` with each run of True in ``spans`` replaced by one sentinel: the ``k``-th run of a row by
    ``sentinels[k]``.

    Args:
        units: ``[B, L]`` ids.
        spans: ``[B, L]`` bool; every row has the same number of runs ``S`` and of True units ``N``.
        sentinels: ``[N_s]`` ids, ``N_s >= S``.
        out_length: ``L - N + S``, the length of every output row (given, so there is no device sync).

    Returns:
        ``[B, out_length]`` ids, in order.
    """
    first = spans & ~F.pad(spans[:, :-1], (1, 0), value=False)  # [B, L] first unit of each run
    span_index = (first.cumsum(dim=1) - 1).clamp(min=0)
    replaced = torch.where(first, sentinels[span_index], units)
    keep = ~spans | first
    index = torch.argsort((~keep).to(torch.uint8), dim=1, stable=True)[:, :out_length]  # kept positions, in order
    return replaced.gather(1, index)


def span_corruption(
    units: Tensor, noise: Tensor, sentinels: Tensor, eos_id: int, counts: tuple[int, int]
) -> tuple[Tensor, Tensor]:
    """T5's ``(inputs, targets)`` of raw rows under a noise mask (:func:`random_spans_noise_mask`).

    Args:
        units: ``[B, L]`` raw ids.
        noise: ``[B, L]`` bool, ``S`` noise runs of ``N`` units in all per row, starting with kept units.
        sentinels: ``[N_s]`` sentinel ids, ``sentinels[k]`` = ``<extra_id_k>``.
        eos_id: the end-of-sequence id appended to both.
        counts: ``(N, S)`` (:func:`span_counts`).

    Returns:
        ``inputs`` ``[B, L - N + S + 1]``: kept units, a sentinel per noise span, eos; ``targets``
        ``[B, N + S + 1]``: per span its sentinel and its units, then eos.
    """
    num_noise, num_spans = counts
    length = units.shape[1]
    eos = torch.full((units.shape[0], 1), eos_id, dtype=units.dtype, device=units.device)
    inputs = replace_spans(units, noise, sentinels, length - num_noise + num_spans)
    # kept runs become the sentinels in the target: kept_k precedes noise_k, so sentinel k then announces span k
    targets = replace_spans(units, ~noise, sentinels, num_noise + num_spans)
    return torch.cat([inputs, eos], dim=1), torch.cat([targets, eos], dim=1)


class T5SpanCorruption(Objective):
    """Corrupt packed rows of ids into sentinel-marked inputs and predict the dropped spans with the model's decoder."""

    def __init__(self, config: T5SpanCorruptionConfig, encoder: Encoder) -> None:
        super().__init__(config, encoder)
        if not encoder.sentinel_ids or encoder.eos_token_id is None:
            raise CapabilityError(
                f"objective.name={config.name} needs a sequence-to-sequence encoder with sentinel tokens "
                f"<extra_id_k> and an end-of-sequence token (the text domain's encoder.arch=t5), "
                f"got {type(encoder).__name__}"
            )
        self.register_buffer("sentinels", torch.tensor(encoder.sentinel_ids, dtype=torch.long), persistent=False)
        self.eos_id = int(encoder.eos_token_id)

    def corrupt(self, units: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """``(inputs [B, T_in], targets [B, T_out])`` of ``[B, L]`` raw rows (see :func:`span_corruption`).

        Raises:
            ValueError: If a row has more noise spans than the encoder has sentinels.
        """
        cfg = self.config
        b, length = units.shape
        counts = span_counts(length, cfg.noise_density, cfg.mean_noise_span_length)
        num_spans = counts[1]
        if num_spans > len(self.sentinels):
            raise ValueError(
                f"rows of {length} units get {num_spans} noise spans (objective.noise_density={cfg.noise_density}, "
                f"objective.mean_noise_span_length={cfg.mean_noise_span_length}) but the tokenizer has only "
                f"{len(self.sentinels)} sentinel tokens: shorten data.block_size or use a tokenizer with more"
            )
        noise = random_spans_noise_mask(
            b, length, cfg.noise_density, cfg.mean_noise_span_length, device=units.device, generator=generator
        )
        return span_corruption(units, noise, self.sentinels, self.eos_id, counts)

    def forward(self, encoder: Encoder, batch: Batch) -> ObjectiveOutput:
        inputs, targets = self.corrupt(batch.units)
        memory = encoder.encode(Batch(units=inputs, padding_mask=torch.zeros_like(inputs, dtype=torch.bool)))
        logits = encoder.decode(memory, targets)  # [B, T_out, V], teacher forced
        loss, acc = unit_classification_loss(logits.flatten(0, 1), targets.flatten())
        return ObjectiveOutput(loss=loss, terms={"span_corruption": loss}, logs={"span_accuracy": acc})
