"""Writing TOML: :func:`dumps` turns a run config's tables into text that ``tomllib`` reads
back to the same values (the standard library reads TOML but does not write it).

It writes what configs hold: tables of strings, booleans, integers, floats (finite, or
``inf``/``nan``), lists of those, and tables inside tables. Anything else is a TypeError
naming the key.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["dumps", "value"]

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _key(name: str) -> str:
    return name if _BARE_KEY.match(name) else json.dumps(name)


def value(v: Any, key: str = "value") -> str:
    """One TOML value: ``True`` -> ``true``, ``"a"`` -> ``"a"``, ``[1, 2]`` -> ``[1, 2]``."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)  # the shortest text that reads back as the same float
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)  # a JSON string is a TOML basic string
    if isinstance(v, Mapping):
        items = ", ".join(f"{_key(str(k))} = {value(x, f'{key}.{k}')}" for k, x in v.items())
        return "{" + (f" {items} " if items else "") + "}"
    if isinstance(v, Sequence):
        return "[" + ", ".join(value(x, key) for x in v) + "]"
    raise TypeError(
        f"{key}: a {type(v).__name__} has no TOML form; expected str, bool, number, list or table"
    )


def dumps(tables: Mapping[str, Mapping[str, Any]], notes: Mapping[str, Sequence[str]] = {}) -> str:
    """``{"train": {"lr": 0.001}}`` -> ``"[train]\\nlr = 0.001\\n"``: one ``[table]`` per
    top-level key, in order. ``notes[table]``: comment lines written under the table's keys."""
    out: list[str] = []
    for name, body in tables.items():
        if not isinstance(body, Mapping):
            raise TypeError(f"{name}: expected a table (a mapping), got {type(body).__name__}")
        if out:
            out.append("")
        out.append(f"[{_key(name)}]")
        for k, v in body.items():
            if v is None:
                out.append(f"# {_key(str(k))}: none (TOML has no null)")
                continue
            out.append(f"{_key(str(k))} = {value(v, f'{name}.{k}')}")
        out += [f"# {line}" for line in notes.get(name, ())]
    return "\n".join(out) + "\n"
