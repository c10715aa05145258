"""Checks of objective config values that several objectives share; errors name ``objective.<key>``.

Called from the config dataclasses' ``__post_init__``, so a bad value in a recipe is reported
(by :func:`mmssl.config.from_dict`) with the file and the dotted key; :func:`check_span_fits` is
called on each batch, where a value meets the data.
"""

from __future__ import annotations

from torch import Tensor


def check_positive(config: object, *names: str) -> None:
    """Each field ``names`` of ``config`` is > 0."""
    for name in names:
        value = getattr(config, name)
        if value <= 0:
            raise ValueError(f"objective.{name} must be > 0, got {value}")


def check_momentum(config: object, *names: str) -> None:
    """Each field ``names`` of ``config`` is a momentum in ``[0, 1]``."""
    for name in names:
        value = getattr(config, name)
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"objective.{name} must be in [0, 1], got {value}")


def check_ratio(value: float, name: str) -> None:
    """``value`` (the field ``objective.<name>``) is a fraction in ``(0, 1)``."""
    if not 0.0 < value < 1.0:
        raise ValueError(f"objective.{name} must be in (0, 1), got {value}")


def check_span_mask(mask_prob: float, mask_length: int) -> None:
    """Span masking settings: a start probability in ``(0, 1)`` and spans of at least one unit."""
    if not 0.0 < mask_prob < 1.0 or mask_length < 1:
        raise ValueError("objective.mask_prob must be in (0, 1) and objective.mask_length >= 1")


def check_span_fits(maskable: Tensor, span_length: int, name: str) -> None:
    """Spans of ``span_length`` units (the field ``objective.<name>``) fit in the rows of the batch.

    :func:`mmssl.masking.span_mask` only starts a span where it fits in its row; on a batch whose rows
    are all shorter, nothing would be masked and the loss would silently be 0. The check reads the
    shape only (no device sync): rows are at most ``T`` units long.

    Args:
        maskable: ``[B, T]`` bool, True at units a mask may choose.

    Raises:
        ValueError: If ``T < span_length``.
    """
    if maskable.shape[1] < span_length:
        raise ValueError(
            f"objective.{name}={span_length} is longer than the rows of this batch "
            f"({maskable.shape[1]} units), so nothing can be masked; lower objective.{name} "
            "or give longer inputs"
        )
