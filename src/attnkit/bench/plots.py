"""The benchmarks' plots: side-by-side log-log lines saved to a PNG.

Drawn with matplotlib's object API on its own Agg canvas (:func:`attnkit._util.optional.figure`;
needs the ``viz`` extra), nothing global touched, and written through the atomic writer.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from attnkit._util.fs import atomic_write
from attnkit._util.optional import figure, require

Series = Mapping[str, Iterable[tuple[float, float | None]]]


def plot_loglog(
    path: str | os.PathLike[str],
    panels: Sequence[tuple[str, str, Series]],
    *,
    xlabel: str = "sequence length N",
    title: str | None = None,
    styles: Mapping[str, Mapping[str, Any]] | None = None,
) -> Path:
    """Save side-by-side log-log line plots to a PNG.

    ``panels`` is a list of ``(panel title, y label, series)``; ``series`` maps a line's name to
    its ``(x, y)`` points. Points with a missing or non-positive y are left out (a skipped
    measurement), and a series with no points is not drawn. ``styles`` maps a series name to
    extra keyword arguments for matplotlib's ``plot`` (``linestyle``, ``color``, ...).
    """
    if not panels:
        raise ValueError("plot_loglog needs at least one panel, got none")
    fig = figure(6.0 * len(panels), 4.6, layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    names = list(dict.fromkeys(name for _, _, series in panels for name in series))
    colors = {name: f"C{i % 10}" if len(names) <= 10 else _tab20(i) for i, name in enumerate(names)}
    for ax, (panel_title, ylabel, series) in zip(axes, panels):
        drawn = 0
        for name, points in series.items():
            pts = sorted((x, y) for x, y in points if y is not None and math.isfinite(y) and y > 0)
            if not pts:
                continue
            xs, ys = zip(*pts)
            style = {
                "marker": "o",
                "markersize": 3,
                "color": colors[name],
                **dict((styles or {}).get(name, {})),
            }
            ax.plot(xs, ys, label=name, **style)
            drawn += 1
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(panel_title)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        if drawn:
            ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)

    def write(tmp: str) -> None:
        fig.savefig(tmp, format="png", dpi=110)

    return atomic_write(Path(path), write)


def _tab20(i: int) -> Any:
    return require("matplotlib", "viz", "plots").colormaps["tab20"](i % 20)
