"""Optional dependencies: import one, or fail with the pip extra that installs it.

    >>> figure = require("matplotlib.figure", "viz")
    >>> fig = figure.Figure(figsize=(4, 3))

A missing package raises :class:`MissingDependency` (an ``ImportError``) whose message is one
line naming the package and the command that installs it, ``pip install 'attnkit[viz]'``; the
command line prints that line as it is. Plots go through :func:`figure`, matplotlib's object API
on the Agg canvas: no pyplot state, no backend switch, no display needed.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover - for static tools only
    from matplotlib.figure import Figure

__all__ = ["MissingDependency", "figure", "require"]


class MissingDependency(ImportError):
    """An optional package is not installed; ``extra`` is the attnkit extra that brings it."""

    def __init__(self, package: str, extra: str, purpose: str = "") -> None:
        self.package = package
        self.extra = extra
        for_what = f" for {purpose}" if purpose else ""
        super().__init__(
            f"{package} is not installed; it is needed{for_what}: pip install 'attnkit[{extra}]'",
            name=package,
        )


def require(module_name: str, extra: str, purpose: str = "") -> ModuleType:
    """``import module_name``, or raise :class:`MissingDependency` naming ``extra``.

    Only a missing top-level package becomes ``MissingDependency``; an ``ImportError`` raised
    inside an installed package (a broken install) propagates as it is.
    """
    if not module_name or not extra:
        raise ValueError(
            f"require() needs a module name and an extra, got {module_name!r}, {extra!r}"
        )
    package = module_name.partition(".")[0]
    try:
        return importlib.import_module(module_name)
    except ImportError as e:
        if e.name is not None and e.name != package and not module_name.startswith(e.name):
            raise
        raise MissingDependency(package, extra, purpose) from e


def figure(width: float, height: float, dpi: float = 100, layout: str | None = None) -> Figure:
    """A matplotlib ``Figure`` of ``width`` x ``height`` inches on its own Agg canvas.

    ``layout`` is matplotlib's (``"constrained"``, ``"tight"``). Save it with
    ``fig.savefig(path_or_file, format="png")``; nothing global is touched.
    Raises :class:`MissingDependency` (extra ``viz``) when matplotlib is not installed.
    """
    mfigure = require("matplotlib.figure", "viz", "plots")
    agg = require("matplotlib.backends.backend_agg", "viz", "plots")
    fig = mfigure.Figure(figsize=(width, height), dpi=dpi, layout=layout)
    agg.FigureCanvasAgg(fig)
    return fig
