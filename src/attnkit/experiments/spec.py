"""A sweep's specification: the base config, the points, the budget; the run config of a point.

The specification is what the study records (its ``spec`` attribute): a second process, or a
restart, must bring the same one, so that points and their numbers mean the same thing.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from attnkit.experiments.space import Budget, Range
from attnkit.training import config as run_config
from attnkit.training.config import RunConfig

__all__ = ["KINDS", "SweepSpec"]

KINDS = ("sweep", "compare-attention")


@dataclass(frozen=True)
class SweepSpec:
    """``points`` (dicts of dotted config keys) over ``base`` (a nested config dict), each
    trained for ``budget``. ``kind`` names the experiment; ``measure_memory`` adds each
    point's peak training-step memory (compare-attention).

    Args:
        base: the nested config dict every point starts from.
        points: distinct dicts of dotted config keys, at least one.
        budget: what each point may spend.
        kind: ``"sweep"`` or ``"compare-attention"``.
        measure_memory: also measure each point's peak training-step memory.
        axes: the keys the points vary (default: every key of the points, in order of first use).
        ranges: the ranges random points were drawn from.

    Raises:
        ValueError: an unknown ``kind``, no points, or a point given twice.

    Examples:
        >>> points = ({"model.n_layer": 2}, {"model.n_layer": 4})
        >>> spec = SweepSpec({}, points, Budget("seconds", 60))
        >>> spec.axes
        ('model.n_layer',)
    """

    base: Mapping[str, Any]
    points: tuple[Mapping[str, Any], ...]
    budget: Budget
    kind: str = "sweep"
    measure_memory: bool = False
    axes: tuple[str, ...] = field(default=())
    ranges: tuple[Range, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"sweep kind {self.kind!r} unknown; expected one of {KINDS}")
        if not self.points:
            raise ValueError("a sweep needs at least one point, got none")
        if not self.axes:
            keys = list(dict.fromkeys(k for p in self.points for k in p))
            object.__setattr__(self, "axes", tuple(keys))
        object.__setattr__(self, "points", tuple(dict(p) for p in self.points))
        for i, p in enumerate(self.points):
            if self.points.index(p) != i:
                raise ValueError(f"point {dict(p)} is given twice; expected distinct points")

    def choices(self, key: str) -> Range | list[Any]:
        """What ``key`` ranges over: its :class:`Range`, or the values the points give it
        (in order of first use): the Optuna distribution of that parameter.

        Args:
            key: a dotted config key.

        Examples:
            >>> spec.choices("model.n_layer")
            [2, 4]
        """
        for r in self.ranges:
            if r.key == key:
                return r
        return list({repr(p[key]): p[key] for p in self.points if key in p}.values())

    def config(self, index: int, extra: Sequence[tuple[str, Any]] = ()) -> RunConfig:
        """The run config of point ``index``: base, the point's keys, the budget, ``extra``
        (and ``train.progress`` off).

        Args:
            index: the point's index in ``points``.
            extra: further ``(dotted key, value)`` overrides, applied after the point's.

        Examples:
            >>> spec.config(1).model["n_layer"]
            4
        """
        point = self.points[index]
        overrides = [*point.items(), (self.budget.key, self.budget.amount), *extra]
        overrides.append(("train.progress", False))
        return run_config.build(dict(self.base), overrides)

    def check(self) -> None:
        """Check that every point makes a valid run config and model.

        Raises:
            ValueError: naming the first point whose config or model is invalid (including a
                ``train.block_size`` over the model's ``max_seq_len``).

        Examples:
            >>> spec.check()  # None, or ValueError: sweep point 1 {...}: ...
        """
        from attnkit.models import ModelConfig

        for i, point in enumerate(self.points):
            try:
                cfg = self.config(i)
                run_config.check_train(cfg)
                fields = dict(cfg.model)
                fields.setdefault("max_seq_len", cfg.train.block_size)
                ModelConfig(**{**fields, "vocab_size": 2})
                if fields["max_seq_len"] < cfg.train.block_size:
                    raise ValueError(
                        f"train.block_size={cfg.train.block_size} exceeds "
                        f"model.max_seq_len={fields['max_seq_len']}"
                    )
            except (ValueError, TypeError) as e:
                raise ValueError(f"sweep point {i} {dict(point)}: {e}") from None

    def name(self, index: int) -> str:
        """The point's run directory name: ``p003-n_layer=4-d_model=128`` (the last part of
        each key, characters other than letters, digits and ``=._`` made ``_``).

        Args:
            index: the point's index in ``points``.

        Examples:
            >>> spec.name(1)
            'p001-n_layer=4'
        """
        parts = [f"p{index:03d}"]
        for key, value in self.points[index].items():
            text = f"{key.rpartition('.')[2]}={value}"
            parts.append("".join(c if c.isalnum() or c in "=._" else "_" for c in text))
        return "-".join(parts)

    def record(self) -> dict[str, Any]:
        """The specification as plain JSON data (what the study stores), keys sorted.

        Examples:
            >>> spec.record()["budget"]
            'seconds=60'
        """
        return json.loads(
            json.dumps(
                {
                    "kind": self.kind,
                    "base": self.base,
                    "points": list(self.points),
                    "axes": list(self.axes),
                    "budget": str(self.budget),
                    "measure_memory": self.measure_memory,
                    "ranges": [[r.key, r.low, r.high, r.log] for r in self.ranges],
                },
                sort_keys=True,
            )
        )
