"""What a sweep runs: its budget, its axes and the points they make.

    budget = Budget.parse("seconds=60")              # or tokens=2e6, flops=1e13
    axes = [Axis.parse("model.n_layer=2,4"), Axis.parse("model.d_model=64,128")]
    points = grid_points(axes)                       # 4 dicts of dotted config keys
    points = random_points(axes, [Range.parse("train.lr=1e-4:1e-2:log")], n=8, seed=0)

Any key of a run config (``model.*``, ``data.*``, ``train.*``) can be an axis; values are
parsed as the command line's overrides are (TOML literals, bare words as strings). A random
draw picks each grid axis's value uniformly and each range uniformly (on a log scale with
``:log``; integers when both ends are integers). Points are fixed up front, so every process
and every restart of a sweep sees the same list.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from attnkit.training import config as run_config

__all__ = ["BUDGET_KINDS", "Axis", "Budget", "Range", "grid_points", "random_points"]

BUDGET_KINDS = ("seconds", "tokens", "flops")


@dataclass(frozen=True)
class Budget:
    """What every point of a sweep may spend: ``kind`` seconds, tokens or FLOPs.

    Args:
        kind: ``"seconds"``, ``"tokens"`` or ``"flops"``.
        amount: how many of them, a positive finite number.

    Raises:
        ValueError: an unknown ``kind``, or an ``amount`` that is not a positive number.

    Examples:
        >>> str(Budget("tokens", 2e6))
        'tokens=2e+06'
    """

    kind: str
    amount: float

    def __post_init__(self) -> None:
        if self.kind not in BUDGET_KINDS:
            raise ValueError(f"budget kind {self.kind!r} unknown; expected one of {BUDGET_KINDS}")
        if not (isinstance(self.amount, (int, float)) and math.isfinite(self.amount)) or (
            self.amount <= 0
        ):
            raise ValueError(f"budget {self.kind}={self.amount!r}: expected a positive number")

    @classmethod
    def parse(cls, text: str) -> Budget:
        """The budget written as ``KIND=NUMBER``: ``"seconds=60"``, ``"tokens=2e6"``,
        ``"flops=1e13"``.

        Args:
            text: the ``KIND=NUMBER`` text.

        Raises:
            ValueError: no ``=``, a number that does not parse, or a bad kind or amount.

        Examples:
            >>> Budget.parse("seconds=60")
            Budget(kind='seconds', amount=60.0)
        """
        kind, sep, amount = str(text).partition("=")
        try:
            value = float(amount)
        except ValueError:
            value = math.nan
        if not sep or not math.isfinite(value):
            raise ValueError(
                f"budget {text!r} must look like KIND=NUMBER with KIND one of {BUDGET_KINDS}, "
                f"e.g. seconds=60, tokens=2e6 or flops=1e13"
            )
        return cls(kind.strip(), value)

    @property
    def key(self) -> str:
        """The run config key that carries it (``train.budget_seconds``, ...).

        Examples:
            >>> Budget("seconds", 60).key
            'train.budget_seconds'
        """
        return f"train.budget_{self.kind}"

    def __str__(self) -> str:
        return f"{self.kind}={self.amount:g}"


def _check_key(key: str) -> str:
    section, _, name = key.partition(".")
    if section not in ("model", "data", "train") or not name:
        raise ValueError(
            f"axis key {key!r} must be a dotted config key: model.*, data.* or train.*"
        )
    return key


@dataclass(frozen=True)
class Axis:
    """A grid axis: a config key and the values it takes.

    Args:
        key: a dotted config key, ``model.*``, ``data.*`` or ``train.*``.
        values: distinct numbers, bools or strings, at least one.

    Raises:
        ValueError: a key outside those sections, no values, a repeated value or a value of
            another type.

    Examples:
        >>> Axis("model.n_layer", (2, 4, 8)).values
        (2, 4, 8)
    """

    key: str
    values: tuple[Any, ...]

    def __post_init__(self) -> None:
        _check_key(self.key)
        if not self.values:
            raise ValueError(f"axis {self.key!r} needs at least one value, got none")
        if len(set(map(repr, self.values))) != len(self.values):
            raise ValueError(f"axis {self.key!r} repeats a value: {list(self.values)}")
        for v in self.values:
            if not isinstance(v, (bool, int, float, str)):
                raise ValueError(f"axis {self.key!r} value {v!r} must be a number, bool or string")

    @classmethod
    def parse(cls, text: str) -> Axis:
        """The axis written as ``section.key=V1,V2,...``, each value parsed as a command-line
        override is (a TOML literal, or a bare word as a string).

        Args:
            text: the ``section.key=V1,V2,...`` text.

        Raises:
            ValueError: no ``=``, an empty key or value, or an invalid axis.

        Examples:
            >>> Axis.parse("model.n_layer=2,4,8")
            Axis(key='model.n_layer', values=(2, 4, 8))
        """
        key, sep, values = str(text).partition("=")
        parts = [p.strip() for p in values.split(",")] if sep else []
        if not sep or not key.strip() or not all(parts):
            raise ValueError(
                f"grid axis {text!r} must look like section.key=V1,V2,... "
                f"(e.g. model.n_layer=2,4,8)"
            )
        return cls(key.strip(), tuple(run_config.parse_override(f"x={p}")[1] for p in parts))


@dataclass(frozen=True)
class Range:
    """A range to draw from: ``low`` to ``high``, on a log scale if ``log``; integers when
    both ends are.

    Args:
        key: a dotted config key, ``model.*``, ``data.*`` or ``train.*``.
        low: the lower end, finite (and > 0 for a log range).
        high: the upper end, finite and above ``low``.
        log: draw uniformly on a log scale.

    Raises:
        ValueError: a bad key, ``low >= high``, an end that is not finite, or ``low <= 0``
            with ``log``.

    Examples:
        >>> Range("train.lr", 1e-4, 1e-2, log=True).integer
        False
    """

    key: str
    low: float
    high: float
    log: bool = False

    def __post_init__(self) -> None:
        _check_key(self.key)
        if not (math.isfinite(self.low) and math.isfinite(self.high) and self.low < self.high):
            raise ValueError(
                f"range {self.key!r}: expected finite low < high, got {self.low!r}:{self.high!r}"
            )
        if self.log and self.low <= 0:
            raise ValueError(f"range {self.key!r}: a log range needs low > 0, got {self.low!r}")

    @property
    def integer(self) -> bool:
        """Whether both ends are ints, so that draws are integers.

        Examples:
            >>> Range("model.n_layer", 1, 6).integer
            True
        """
        return isinstance(self.low, int) and isinstance(self.high, int)

    @classmethod
    def parse(cls, text: str) -> Range:
        """The range written as ``section.key=LOW:HIGH`` or ``section.key=LOW:HIGH:log``:
        ``"train.lr=1e-4:1e-2:log"``, ``"model.n_layer=1:6"``.

        Args:
            text: the range text.

        Raises:
            ValueError: not of that form, an end that is not a number, or an invalid range.

        Examples:
            >>> Range.parse("train.lr=1e-4:1e-2:log")
            Range(key='train.lr', low=0.0001, high=0.01, log=True)
        """
        key, sep, body = str(text).partition("=")
        parts = body.split(":")
        log = len(parts) == 3 and parts[2].strip() == "log"
        nums = [run_config.parse_override(f"x={p.strip()}")[1] for p in parts[:2]]
        ok = sep and len(parts) in (2, 3) and (len(parts) == 2 or log)
        if not ok or not all(isinstance(n, (int, float)) and not isinstance(n, bool) for n in nums):
            raise ValueError(
                f"range {text!r} must look like section.key=LOW:HIGH or section.key=LOW:HIGH:log "
                f"(e.g. train.lr=1e-4:1e-2:log)"
            )
        return cls(key.strip(), nums[0], nums[1], log)

    def draw(self, rng: random.Random) -> float | int:
        """One value drawn uniformly from the range (on a log scale with ``log``): an int in
        ``low..high`` (both included) when the range is integer, else a float.

        Args:
            rng: the random generator to draw with.

        Examples:
            >>> 1 <= Range("model.n_layer", 1, 6).draw(random.Random(0)) <= 6
            True
        """
        if self.integer:
            lo, hi = int(self.low), int(self.high)
            if self.log:
                return int(round(math.exp(rng.uniform(math.log(lo), math.log(hi)))))
            return rng.randint(lo, hi)
        if self.log:
            return math.exp(rng.uniform(math.log(self.low), math.log(self.high)))
        return rng.uniform(self.low, self.high)


def _check_distinct(axes: Sequence[Axis], ranges: Sequence[Range] = ()) -> None:
    keys = [a.key for a in axes] + [r.key for r in ranges]
    dup = sorted({k for k in keys if keys.count(k) > 1})
    if dup:
        raise ValueError(f"config key(s) {dup} given as more than one axis; expected each once")


def grid_points(axes: Sequence[Axis]) -> list[dict[str, Any]]:
    """Every combination of the axes' values, the last axis varying fastest.

    Args:
        axes: the grid axes, each on a different key.

    Returns:
        One dict of dotted config keys per combination.

    Raises:
        ValueError: two axes on the same key.

    Examples:
        >>> grid_points([Axis("model.n_layer", (2, 4)), Axis("model.d_model", (64, 128))])[1]
        {'model.n_layer': 2, 'model.d_model': 128}
    """
    _check_distinct(axes)
    keys = [a.key for a in axes]
    return [dict(zip(keys, combo)) for combo in itertools.product(*(a.values for a in axes))]


def random_points(
    axes: Sequence[Axis], ranges: Sequence[Range], n: int, seed: int = 0
) -> list[dict[str, Any]]:
    """``n`` draws: each grid axis's value uniformly, each range as :meth:`Range.draw` says;
    the same ``seed`` gives the same points. Repeated draws are kept once.

    Args:
        axes: grid axes, a value of each picked uniformly per draw.
        ranges: ranges, each drawn with :meth:`Range.draw`.
        n: how many draws, at least 1 (fewer points come back when draws repeat).
        seed: seed of the random generator.

    Returns:
        The distinct points, dicts of dotted config keys, in the order drawn.

    Raises:
        ValueError: ``n`` < 1, no axes and no ranges, or a key given twice.

    Examples:
        >>> len(random_points([], [Range.parse("train.lr=1e-4:1e-2:log")], n=8, seed=0))
        8
    """
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"random draws n must be an int >= 1, got {n!r}")
    _check_distinct(axes, ranges)
    if not axes and not ranges:
        raise ValueError("random draws need at least one --grid axis or --range, got none")
    rng = random.Random(seed)
    points: list[dict[str, Any]] = []
    for _ in range(n):
        p: dict[str, Any] = {a.key: rng.choice(a.values) for a in axes}
        p.update({r.key: r.draw(rng) for r in ranges})
        if p not in points:
            points.append(p)
    return points
