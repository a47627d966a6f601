"""Argument validation shared by :mod:`protocols.dp` (private).

Every check raises :class:`~protocols.errors.InvalidParameterError` whose message
names the argument, states the valid range and echoes the value, e.g.
``"`sample_rate` must be in (0, 1]; got 0.0"``.
"""

from __future__ import annotations

import math
import numbers

from protocols.errors import InvalidParameterError

__all__ = ["check_int", "check_real", "interval_text"]


def interval_text(low: float, high: float, *, low_open: bool, high_open: bool) -> str:
    """Render an interval such as ``(0, 1]`` for an error message."""

    def fmt(x: float) -> str:
        if math.isinf(x):
            return "inf" if x > 0 else "-inf"
        return f"{x:g}"

    left = "(" if low_open else "["
    right = ")" if high_open else "]"
    return f"{left}{fmt(low)}, {fmt(high)}{right}"


def check_real(
    name: str,
    value: object,
    *,
    low: float = -math.inf,
    high: float = math.inf,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """Return ``value`` as a float after checking it is a finite real in the interval.

    Infinite bounds are always open: a value of ``inf`` is rejected unless a
    bound says otherwise, because no privacy parameter is meaningful at infinity.
    """
    text = interval_text(
        low, high, low_open=low_open or math.isinf(low), high_open=high_open or math.isinf(high)
    )
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidParameterError(
            f"`{name}` must be a real number in {text}; got {value!r} "
            f"of type {type(value).__name__}"
        )
    x = float(value)
    if math.isnan(x) or math.isinf(x):
        raise InvalidParameterError(f"`{name}` must be in {text}; got {x!r}")
    too_low = x <= low if low_open else x < low
    too_high = x >= high if high_open else x > high
    if too_low or too_high:
        raise InvalidParameterError(f"`{name}` must be in {text}; got {value!r}")
    return x


def check_int(name: str, value: object, *, low: int = 0, high: int | None = None) -> int:
    """Return ``value`` as an int after checking it is an integer in ``[low, high]``."""
    upper = "inf)" if high is None else f"{high}]"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InvalidParameterError(
            f"`{name}` must be an integer in [{low}, {upper}; got {value!r} "
            f"of type {type(value).__name__}"
        )
    n = int(value)
    if n < low or (high is not None and n > high):
        raise InvalidParameterError(f"`{name}` must be an integer in [{low}, {upper}; got {n}")
    return n
