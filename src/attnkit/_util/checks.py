"""Validators: one check per kind of value, each returning the value it accepts.

Every check takes the field's ``name`` as the user knows it (``"ModelConfig.n_heads"``,
``"train.batch_size"``, ``"--top-k"``) and raises with one message shape::

    {name} must be {what was expected}, got {the value!r}

A value of the wrong type (a str, a float or a bool where an int is expected) raises
:class:`CheckTypeError`, which is both a ``TypeError`` and a ``ValueError``, so callers may
catch either; a value of the right type outside its range raises ``ValueError``.

    >>> positive_int("train.batch_size", 8)
    8
    >>> probability("dropout", 1.0)
    Traceback (most recent call last):
    ValueError: dropout must be a float in [0, 1), got 1.0
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Collection
from typing import Any, NoReturn, TypeVar

__all__ = [
    "CheckTypeError",
    "choice",
    "fail",
    "flag",
    "in_range",
    "int_at_least",
    "int_in",
    "non_negative_float",
    "non_negative_int",
    "optional_positive_int",
    "positive_float",
    "positive_int",
    "probability",
]

T = TypeVar("T")


class CheckTypeError(TypeError, ValueError):
    """A value of the wrong type for its field (a ``TypeError`` and a ``ValueError``)."""


def fail(name: str, value: Any, expected: str, *, wrong_type: bool = False) -> NoReturn:
    """Raise the house error: ``{name} must be {expected}, got {value!r}``."""
    cls = CheckTypeError if wrong_type else ValueError
    raise cls(f"{name} must be {expected}, got {value!r}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    """A real number that is not a bool (int, float, or a numpy scalar of either)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def int_at_least(name: str, value: Any, minimum: int, expected: str | None = None) -> int:
    """``value`` if it is an int (not a bool) >= ``minimum``. ``expected`` replaces the
    default wording ``"an int >= {minimum}"`` in the message."""
    what = expected or f"an int >= {minimum}"
    if not _is_int(value):
        fail(name, value, what, wrong_type=True)
    if value < minimum:
        fail(name, value, what)
    return value


def int_in(name: str, value: Any, low: int, high: int, expected: str | None = None) -> int:
    """``value`` if it is an int (not a bool) with ``low <= value <= high``. ``expected``
    replaces the default wording ``"an int in {low}..{high}"`` in the message."""
    what = expected or f"an int in {low}..{high}"
    if int_at_least(name, value, low, what) > high:
        fail(name, value, what)
    return value


def positive_int(name: str, value: Any) -> int:
    """``value`` if it is an int >= 1 (``"... must be a positive int, got ..."``)."""
    return int_at_least(name, value, 1, "a positive int")


def non_negative_int(name: str, value: Any) -> int:
    """``value`` if it is an int >= 0 (``"... must be an int >= 0, got ..."``)."""
    return int_at_least(name, value, 0)


def optional_positive_int(name: str, value: Any) -> int | None:
    """None, or a positive int."""
    if value is None:
        return None
    return int_at_least(name, value, 1, "a positive int or None")


def in_range(
    name: str,
    value: Any,
    low: float,
    high: float,
    *,
    low_open: bool = False,
    high_open: bool = True,
) -> float:
    """``float(value)`` if it is a real number (not a bool) in the interval from ``low`` to
    ``high``; ``low_open``/``high_open`` exclude that end (default: ``[low, high)``)."""
    interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    what = f"a float in {interval}"
    if not _is_number(value):
        fail(name, value, what, wrong_type=True)
    above = value > low if low_open else value >= low
    below = value < high if high_open else value <= high
    if not (above and below):  # NaN fails both
        fail(name, value, what)
    return float(value)


def probability(name: str, value: Any) -> float:
    """A float in [0, 1): a dropout rate, a warm-up fraction."""
    return in_range(name, value, 0.0, 1.0)


def _finite(name: str, value: Any, what: str, strict: bool) -> float:
    """``float(value)`` if it is a finite real number > 0 (``strict``) or >= 0."""
    if not _is_number(value):
        fail(name, value, what, wrong_type=True)
    if not (math.isfinite(value) and (value > 0 if strict else value >= 0)):
        fail(name, value, what)
    return float(value)


def positive_float(name: str, value: Any) -> float:
    """A finite real number > 0 (ints accepted), as a float."""
    return _finite(name, value, "a finite number > 0", strict=True)


def non_negative_float(name: str, value: Any) -> float:
    """A finite real number >= 0 (ints accepted), as a float."""
    return _finite(name, value, "a finite number >= 0", strict=False)


def choice(name: str, value: T, options: Collection[Any]) -> T:
    """``value`` if it is one of ``options`` (``"... must be one of [...], got ..."``)."""
    try:
        ok = value in options
    except TypeError:  # an unhashable value tested against a set
        ok = False
    if not ok:
        fail(name, value, f"one of {list(options)}")
    return value


def flag(name: str, value: Any) -> bool:
    """``value`` if it is a bool (not 0/1, not a string)."""
    if not isinstance(value, bool):
        fail(name, value, "a bool", wrong_type=True)
    return value
