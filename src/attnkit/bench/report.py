"""What a benchmark reports: text tables, its targets met or missed, and its JSON record.

:class:`Table` (fixed-width text) and its cells :func:`fmt_seconds`, :func:`fmt_bytes`,
:func:`fmt_ratio`, :func:`fmt_value`; :class:`Check` (a target and whether this run met it) and
:func:`verdict`; :class:`Report` (what a benchmark gives its command: the text to print, the
files written, whether a target was missed); :func:`write_json` (atomic, through
:mod:`attnkit._util.fs`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from attnkit._util.fs import atomic_write_text
from attnkit.bench.harness import GiB, MiB

# --------------------------------------------------------------------------------------------
# formatting and tables
# --------------------------------------------------------------------------------------------


def fmt_seconds(s: float | None) -> str:
    if s is None or not math.isfinite(s):
        return "-"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if s >= scale:
            return f"{s / scale:.3g} {unit}"
    return f"{s * 1e9:.3g} ns"


def fmt_bytes(b: float | None) -> str:
    if b is None or not math.isfinite(b):
        return "-"
    for unit, scale in (("GiB", GiB), ("MiB", MiB), ("KiB", 1024)):
        if abs(b) >= scale:
            return f"{b / scale:.3g} {unit}"
    return f"{int(b)} B"


def fmt_ratio(r: float | None) -> str:
    if r is None or not math.isfinite(r):
        return "-"
    return f"{r:.3g}x"


def fmt_value(v: Any) -> str:
    """Default cell formatting: None -> '-', floats to 4 significant digits."""
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if not math.isfinite(v):
            return "-"
        return f"{v:.4g}"
    return str(v)


class Table:
    """A fixed-width text table.

    >>> t = Table(["backend", "time"], title="demo")
    >>> t.add_row("sdpa", "1.2 ms")
    >>> print(t)  # doctest: +NORMALIZE_WHITESPACE
    demo
    backend  time
    -------  ------
    sdpa     1.2 ms

    ``align`` gives one letter per column, ``l`` or ``r``; by default text columns are
    left-aligned and numeric ones right-aligned, judged by their first value.
    """

    def __init__(
        self, columns: Sequence[str], title: str | None = None, align: str | None = None
    ) -> None:
        if not columns:
            raise ValueError("a Table needs at least one column, got none")
        if align is not None and (len(align) != len(columns) or set(align) - {"l", "r"}):
            raise ValueError(
                f"align must be one of 'l'/'r' per column ({len(columns)} letters), got {align!r}"
            )
        self.columns = [str(c) for c in columns]
        self.title = title
        self.align = align
        self.rows: list[list[Any] | None] = []  # None marks a separator line

    def add_row(self, *values: Any) -> None:
        if len(values) == 1 and isinstance(values[0], Mapping):
            mapping = values[0]
            unknown = set(mapping) - set(self.columns)
            if unknown:
                raise ValueError(
                    f"unknown column(s) {sorted(unknown)}; expected some of {self.columns}"
                )
            values = tuple(mapping.get(c) for c in self.columns)
        if len(values) != len(self.columns):
            raise ValueError(
                f"row has {len(values)} values, expected {len(self.columns)} ({self.columns})"
            )
        self.rows.append(list(values))

    def add_separator(self) -> None:
        self.rows.append(None)

    def render(self) -> str:
        cells = [[fmt_value(v) for v in row] if row is not None else None for row in self.rows]
        widths = [len(c) for c in self.columns]
        for row in cells:
            if row is not None:
                widths = [max(w, len(c)) for w, c in zip(widths, row)]
        numeric = []
        for j in range(len(self.columns)):
            if self.align is not None:
                numeric.append(self.align[j] == "r")
                continue
            first = next((r[j] for r in self.rows if r is not None and r[j] is not None), None)
            numeric.append(isinstance(first, (int, float)) and not isinstance(first, bool))

        def line(values: Sequence[str]) -> str:
            parts = [
                v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)
            ]
            return "  ".join(parts).rstrip()

        out = [self.title] if self.title else []
        out.append(line(self.columns))
        rule = line(["-" * w for w in widths])
        out.append(rule)
        for row in cells:
            out.append(rule if row is None else line(row))
        return "\n".join(out)

    def __str__(self) -> str:
        return self.render()


@dataclasses.dataclass
class Check:
    """One target of a benchmark against this run.

    key: the target's name; target: what is promised; measured: what this run saw;
    passed: met or not, None when this run did not measure it; attnkit, reference: the two
    sides compared, where there are two; note: why it was not measured.
    """

    key: str
    target: str
    measured: str
    passed: bool | None
    attnkit: str = "-"
    reference: str = "-"
    note: str = ""

    @property
    def mark(self) -> str:
        return {True: "PASS", False: "FAIL", None: "n/a"}[self.passed]


def verdict(results: Sequence[bool]) -> bool | None:
    """All met, or None when nothing was measured."""
    return None if not results else all(results)


def render_checks(checks: Sequence[Check]) -> str:
    """The Targets table of a benchmark: each target, both sides, what was measured and the
    verdict (with the note of a target not measured).

    Examples:
        >>> print(render_checks([Check("speed", ">= 2x HF", "2.4x", True, "12 ms", "29 ms")]))
    """
    t = Table(
        ["target", "attnkit", "reference", "measured", "result"], title="Targets", align="lrrrl"
    )
    for c in checks:
        t.add_row(
            c.target,
            c.attnkit,
            c.reference,
            c.measured,
            c.mark + (f" ({c.note})" if c.note else ""),
        )
    return t.render()


@dataclasses.dataclass(frozen=True)
class Report:
    """What a benchmark run gives its command: the text to print, the files it wrote and
    whether a measured target was missed."""

    text: str
    paths: tuple[Path, ...] = ()
    missed: bool = False


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _jsonable(dataclasses.asdict(obj))
    if isinstance(obj, (torch.dtype, torch.device, Path)):
        return str(obj)
    if isinstance(obj, torch.Tensor) and obj.numel() == 1:
        return _jsonable(obj.item())
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalars
        return _jsonable(obj.item())
    return obj


def write_json(path: str | os.PathLike[str], data: Any) -> Path:
    """Write ``data`` as indented JSON, atomically (readers never see half a file).

    Non-finite floats become null, dtypes/devices/paths strings, dataclasses dicts; keys keep
    their order.
    """
    text = json.dumps(_jsonable(data), indent=2, allow_nan=False)
    return atomic_write_text(Path(path), text + "\n")
