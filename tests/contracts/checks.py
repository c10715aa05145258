"""Checks of what a domain's batch and encoder give: a valid :class:`Batch` of a unit kind, and each need."""

from __future__ import annotations

from collections.abc import Callable

import torch

from mmssl.encoder import CapabilityError, Encoder
from mmssl.types import Batch, Extra


def check_batch(batch: Batch, unit_kind: str, encoder: Encoder) -> None:
    """Assert that ``batch`` is a valid :class:`Batch` whose units are of ``unit_kind`` (views checked alike)."""
    assert isinstance(batch, Batch)
    b, t = batch.padding_mask.shape
    assert batch.padding_mask.dtype == torch.bool and batch.units.shape[:2] == (b, t)
    assert batch.special_mask is None or (batch.special_mask.dtype == torch.bool and batch.special_mask.shape == (b, t))
    if unit_kind == "ids":
        assert batch.units.dtype == torch.long and batch.units.ndim == 2
    elif encoder.output_padding_mask(batch).shape == (b, t):
        assert batch.units.is_floating_point() and batch.units.ndim == 3
    else:  # an encoder that maps its units onto another grid (a waveform's samples onto conv frames)
        assert batch.units.is_floating_point() and batch.units.ndim in (2, 3)
    assert set(batch.extras) <= {e.value for e in Extra}, f"extras keys outside Extra: {set(batch.extras)}"
    assert all(isinstance(v, torch.Tensor) for v in batch.extras.values())
    assert batch.grid is None or (len(batch.grid) == 2 and batch.grid[0] * batch.grid[1] == t)
    assert batch.layout is None or isinstance(batch.layout, str)
    if unit_kind == "grid":
        assert batch.grid is not None
    if unit_kind == "graph":
        edges = batch.extras[Extra.EDGE_INDEX]
        assert edges.dtype == torch.long and edges.shape[0] == 2 and batch.layout is not None
    for view in batch.views or ():
        check_batch(view, unit_kind, encoder)
    assert batch.pair is None or isinstance(batch.pair, Batch)


@torch.no_grad()
def _causal(encoder: Encoder, batch: Batch) -> bool:
    """Changing the last unit changes the output there and nowhere before it (in eval mode: no dropout)."""
    training = encoder.training
    encoder.eval()
    units = batch.units.clone()
    last = units[:, -1]  # another id, or the features in reverse order (a norm over features keeps no shift or scale)
    units[:, -1] = (last + 1) % encoder.vocab_size if units.dtype == torch.long else last.flip(-1)
    before, after = encoder.encode(batch).hidden, encoder.encode(batch.replace(units=units)).hidden
    encoder.train(training)
    return torch.allclose(before[:, :-1], after[:, :-1], atol=1e-5) and not torch.allclose(before[:, -1], after[:, -1])


def _visible(encoder: Encoder, batch: Batch) -> bool:
    """The encoder encodes the first half of the units alone, to ``[B, T // 2, D]``."""
    half = torch.arange(batch.units.shape[1] // 2).expand(batch.batch_size, -1)  # [B, T // 2]
    try:
        return encoder.encode_visible(batch, half).hidden.shape[:2] == half.shape
    except CapabilityError:  # the protocol's default
        return False


def _mask_token(encoder: Encoder, batch: Batch) -> bool:
    """A masked unit's output differs from the unmasked one's: the encoder embeds masked units itself."""
    mask = torch.zeros_like(batch.padding_mask)
    mask[:, 0] = True
    try:
        masked = encoder.encode(batch, mask).hidden
    except (CapabilityError, ValueError):  # ResNet: "cannot encode masked units"
        return False
    return not torch.allclose(masked, encoder.encode(batch).hidden)


def _quantizer(encoder: Encoder, batch: Batch) -> bool:
    """The encoder has wav2vec 2.0's quantizer head."""
    try:
        return encoder.quantizer_head() is not None
    except CapabilityError:  # the protocol's default
        return False


def _generator(encoder: Encoder, batch: Batch) -> bool:
    """The encoder has a replaced-token head and builds a masked-LM generator sharing its embeddings (ELECTRA)."""
    try:
        encoder.replaced_token_head()
        return isinstance(encoder.mlm_generator(0.5, None), Encoder)
    except CapabilityError:  # the protocol's default
        return False


def _seq2seq(encoder: Encoder, batch: Batch) -> bool:
    """The encoder has sentinel and end-of-sequence ids and a decoder that gives ``[B, S, V]`` logits (T5)."""
    if not encoder.sentinel_ids or encoder.eos_token_id is None:
        return False
    targets = batch.units[:, :3]
    try:
        logits = encoder.decode(encoder.encode(batch), targets)
    except CapabilityError:  # the protocol's default
        return False
    return tuple(logits.shape) == (*targets.shape, encoder.vocab_size)


def _unit_counts(encoder: Encoder, batch: Batch) -> bool:
    """The encoder gives a ``[V]`` count of every unit id, some of them positive (word2vec's corpus counts)."""
    counts = encoder.unit_counts()
    return counts is not None and tuple(counts.shape) == (encoder.vocab_size,) and bool((counts > 0).any())


@torch.no_grad()
def _start_token(encoder: Encoder, batch: Batch) -> bool:
    """The encoder reads the units as ``[B, T]`` ids behind a start token: the first output has read the start token
    alone, so it is the same in every row (in eval mode: no dropout)."""
    training = encoder.training
    encoder.eval()
    try:
        hidden, ids = encoder.encode_from_start(batch)
    except CapabilityError:  # the protocol's default
        return False
    finally:
        encoder.train(training)
    first = hidden[:, 0]
    shapes = ids.dtype == torch.long and ids.shape == batch.padding_mask.shape and hidden.shape[:2] == ids.shape
    return shapes and torch.allclose(first, first[:1].expand_as(first), atol=1e-5)


def _feature_map(encoder: Encoder, batch: Batch) -> bool:
    """The encoder's outputs lie on a 2-D grid (``EncoderOutput.grid``) that holds them all: a feature map."""
    out = encoder.encode(batch)
    return out.grid is not None and out.grid[0] * out.grid[1] == out.hidden.shape[1]


def _extra(key: Extra, shape: Callable[[Batch], tuple[int, ...]]) -> Callable[[Encoder, Batch], bool]:
    """The batch carries ``extras[key]`` of the given shape."""
    return lambda encoder, batch: key in batch.extras and tuple(batch.extras[key].shape) == shape(batch)


# One check per key of mmssl.objectives.base.NEEDS: the batch carries it, or the encoder has it.
NEED_CHECKS: dict[str, Callable[[Encoder, Batch], bool]] = {
    "views": lambda encoder, batch: batch.views is not None and len(batch.views) >= 2,
    "pretext_labels": _extra(Extra.PRETEXT_LABELS, lambda batch: (batch.batch_size,)),
    "targets": _extra(Extra.TARGETS, lambda batch: tuple(batch.padding_mask.shape)),
    "generation": lambda encoder, batch: Extra.GEN_ATTR in batch.extras and Extra.GEN_PAIRS in batch.extras,
    "pair": lambda encoder, batch: isinstance(batch.pair, Batch),
    "sample_index": _extra(Extra.SAMPLE_INDEX, lambda batch: (batch.batch_size,)),
    "supervised_labels": lambda encoder, batch: (
        _extra(Extra.SUPERVISED_LABELS, lambda b: (b.batch_size,))(encoder, batch)
        and bool((batch.extras[Extra.SUPERVISED_LABELS] >= 0).any())  # at least one labelled row
    ),
    "lightness": lambda encoder, batch: (
        Extra.PIXELS in batch.extras
        and batch.extras[Extra.PIXELS].shape[1] == 3
        and encoder.unit_dim == batch.units.shape[-1]
        and batch.units.shape[-1] * batch.units.shape[1] == batch.extras[Extra.PIXELS][0, 0].numel()
    ),
    "causal": _causal,
    "encode_visible": _visible,
    "mask_token": _mask_token,
    "quantizer_head": _quantizer,
    "mlm_generator": _generator,
    "seq2seq": _seq2seq,
    "start_token": _start_token,
    "unit_counts": _unit_counts,
    "feature_map": _feature_map,
}


def check_needs(needs: tuple[str, ...], encoder: Encoder, batch: Batch) -> None:
    """Assert that ``batch`` and ``encoder`` give every one of ``needs``."""
    for need in needs:
        assert NEED_CHECKS[need](encoder, batch), f"the domain's batch or encoder does not give {need!r}"
