"""Argument types of the command line, and :class:`UsageError`.

Each type is an argparse ``type=`` callable whose error names the text given and what was
expected; argparse turns it into the one-line ``attnkit: error: ...`` and exit status 2.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TypeVar

__all__ = [
    "UsageError",
    "index_list",
    "non_negative_int",
    "positive_float",
    "positive_int",
    "probability",
    "size_list",
]

N = TypeVar("N", int, float)


class UsageError(Exception):
    """Bad input from the command line; printed as one line, exit status 2."""


def _number(text: str, convert: Callable[[str], N], ok: Callable[[N], bool], expected: str) -> N:
    """An argparse type: ``convert(text)`` when ``ok`` of it, else an error naming the text."""
    try:
        value = convert(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
    if not ok(value):
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    return _number(text, int, lambda v: v >= 1, "a positive integer")


def non_negative_int(text: str) -> int:
    return _number(text, int, lambda v: v >= 0, "an integer >= 0")


def positive_float(text: str) -> float:
    return _number(text, float, lambda v: 0 < v < float("inf"), "a positive number")


def probability(text: str) -> float:
    return _number(text, float, lambda v: 0.0 <= v < 1.0, "a number in [0, 1)")


def size_list(text: str) -> list[int]:
    """``"1k,2k,4096"`` -> ``[1024, 2048, 4096]``; ``k`` means 1024."""
    sizes = []
    for part in text.split(","):
        item = part.strip().lower()
        mult = 1024 if item.endswith("k") else 1
        digits = item[:-1] if mult > 1 else item
        if not digits.isdigit() or int(digits) < 1:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated positive sizes such as 1024,2k,4k; got {part.strip()!r} in {text!r}"
            )
        sizes.append(int(digits) * mult)
    return sizes


def index_list(text: str) -> list[int]:
    """``"0,3"`` -> ``[0, 3]``: comma-separated indices >= 0."""
    out = []
    for part in text.split(","):
        item = part.strip()
        if not item.isdigit():
            raise argparse.ArgumentTypeError(
                f"expected comma-separated indices >= 0 such as 0,3; got {text!r}"
            )
        out.append(int(item))
    return out
