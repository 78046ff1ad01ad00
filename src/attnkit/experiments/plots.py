"""The sweep's plots, each a PNG: loss against parameters, depth, width and compute (with the
fitted power law), the learning curves overlaid, and compare-attention's quality-vs-cost
frontier.

Drawn with matplotlib's object API on its own Agg canvas (:func:`attnkit._util.optional.figure`),
written through the atomic writer; a plot whose data has fewer than two distinct x values is
not drawn (None).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from attnkit._util.fs import atomic_write
from attnkit._util.optional import figure
from attnkit.experiments.fit import PowerLawFit

__all__ = [
    "plot_curves",
    "plot_frontier",
    "plot_loss_vs_compute",
    "plot_loss_vs_params",
    "plot_loss_vs_shape",
]


def _save(fig: Any, path: Path) -> Path:
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))


def _label(row: dict[str, Any]) -> str:
    return ", ".join(f"{k.rpartition('.')[2]}={v}" for k, v in row["params"].items())


def plot_loss_vs_params(rows: Sequence[dict[str, Any]], path: Path) -> Path | None:
    """Best validation loss against non-embedding parameters, each point labelled.

    Args:
        rows: result rows (:attr:`Results.rows`).
        path: the PNG to write.

    Returns:
        ``path``, or None (nothing drawn) with fewer than two distinct parameter counts.

    Examples:
        >>> plot_loss_vs_params(results.rows, Path("runs/sweep/loss_vs_params.png"))
    """
    if len({r["non_embedding_parameters"] for r in rows}) < 2:
        return None
    fig = figure(6.4, 4.4, layout="constrained")
    ax = fig.add_subplot()
    for r in rows:
        ax.scatter(r["non_embedding_parameters"], r["best_val_loss"], s=22)
        ax.annotate(
            _label(r),
            (r["non_embedding_parameters"], r["best_val_loss"]),
            fontsize=6,
            xytext=(3, 3),
            textcoords="offset points",
        )
    ax.set_xscale("log")
    ax.set_xlabel("non-embedding parameters")
    ax.set_ylabel("best validation loss")
    ax.set_title("validation loss vs parameters")
    ax.grid(True, which="both", alpha=0.3)
    return _save(fig, path)


def plot_loss_vs_shape(
    rows: Sequence[dict[str, Any]], x: str, series: str, path: Path
) -> Path | None:
    """Best validation loss against ``x`` (``n_layer`` or ``d_model``), one line for each
    value of ``series`` (the other one): depth at fixed width, or width at fixed depth.

    Args:
        rows: result rows (:attr:`Results.rows`).
        x: the row key on the x axis (log 2 scale).
        series: the row key whose values make one line each.
        path: the PNG to write.

    Returns:
        ``path``, or None (nothing drawn) with fewer than two distinct ``x`` values.

    Examples:
        >>> plot_loss_vs_shape(results.rows, "n_layer", "d_model", Path("loss_vs_depth.png"))
    """
    if len({r[x] for r in rows}) < 2:
        return None
    lines: dict[Any, list[tuple[Any, float]]] = defaultdict(list)
    for r in rows:
        lines[r[series]].append((r[x], r["best_val_loss"]))
    fig = figure(6.4, 4.4, layout="constrained")
    ax = fig.add_subplot()
    for value in sorted(lines):
        pts = sorted(lines[value])
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=f"{series}={value}")
    ax.set_xscale("log", base=2)
    names = {"n_layer": "depth (layers)", "d_model": "width (d_model)"}
    ax.set_xlabel(names.get(x, x))
    ax.set_ylabel("best validation loss")
    ax.set_title(f"validation loss vs {names.get(x, x)} at fixed {series}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_curves(rows: Sequence[dict[str, Any]], path: Path) -> Path | None:
    """Every point's validation loss against tokens seen, overlaid.

    Args:
        rows: result rows (:attr:`Results.rows`), each with its ``"curve"``.
        path: the PNG to write.

    Returns:
        ``path``, or None (nothing drawn) without rows.

    Examples:
        >>> plot_curves(results.rows, Path("runs/sweep/curves.png"))
    """
    if not rows:
        return None
    fig = figure(7.0, 4.6, layout="constrained")
    ax = fig.add_subplot()
    for r in rows:
        curve = np.asarray(r["curve"], dtype=np.float64)
        ax.plot(curve[:, 1], curve[:, 2], "o-", markersize=2.5, linewidth=1.1, label=_label(r))
    ax.set_xlabel("tokens seen")
    ax.set_ylabel("validation loss")
    ax.set_title("learning curves")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=6, ncol=2)
    return _save(fig, path)


def plot_loss_vs_compute(
    rows: Sequence[dict[str, Any]],
    frontier: Sequence[tuple[float, float]],
    fit: PowerLawFit | None,
    path: Path,
) -> Path | None:
    """Each point's validation curve against training compute (FLOPs), the compute frontier
    and the fitted power law.

    Args:
        rows: result rows (:attr:`Results.rows`), each with ``"curve"`` and
            ``"flops_per_token"``.
        frontier: the compute frontier's ``(compute, loss)`` pairs.
        fit: the power law fitted to the frontier, or None (not drawn).
        path: the PNG to write.

    Returns:
        ``path``, or None (nothing drawn) without rows.

    Examples:
        >>> plot_loss_vs_compute(rows, frontier, fit, Path("runs/sweep/loss_vs_compute.png"))
    """
    if not rows:
        return None
    fig = figure(7.0, 4.6, layout="constrained")
    ax = fig.add_subplot()
    for r in rows:
        curve = np.asarray(r["curve"], dtype=np.float64)
        ax.plot(curve[:, 1] * r["flops_per_token"], curve[:, 2], "-", color="0.7", linewidth=0.9)
    if frontier:
        fx, fy = zip(*frontier)
        ax.plot(fx, fy, "o", color="C3", markersize=3.5, label="compute frontier")
    if fit is not None and frontier:
        xs = np.geomspace(min(fx), max(fx), 200)
        ax.plot(
            xs,
            fit.predict(xs),
            "-",
            color="C0",
            linewidth=1.6,
            label=f"L = {fit.a:.3g} C^-{fit.b:.3g} + {fit.c:.3g} (RMSE {fit.rmse:.2g})",
        )
    ax.set_xscale("log")
    ax.set_xlabel("training compute C (FLOPs)")
    ax.set_ylabel("validation loss")
    ax.set_title("loss vs compute")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)


def pareto(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The (cost, loss) points no other point beats on both, in increasing cost."""
    out: list[tuple[float, float]] = []
    for cost, loss in sorted(points):
        if not out or loss < out[-1][1]:
            out.append((cost, loss))
    return out


def plot_frontier(rows: Sequence[dict[str, Any]], path: Path) -> Path | None:
    """compare-attention: best validation loss against the cost of a token (seconds per
    million tokens) and against peak step memory, one panel each, one marker per variant and
    a line per sequence length through its Pareto frontier (the memory panel only when every
    row has ``peak_memory_bytes``).

    Args:
        rows: result rows of a compare-attention run (:attr:`Results.rows`).
        path: the PNG to write.

    Returns:
        ``path``, or None (nothing drawn) without rows.

    Examples:
        >>> plot_frontier(results.rows, Path("runs/cmp/frontier.png"))
    """
    if not rows:
        return None
    panels = [("seconds per million training tokens", lambda r: 1e6 / r["tokens_per_second"])]
    if all(r.get("peak_memory_bytes") for r in rows):
        panels.append(("peak training-step memory (MiB)", lambda r: r["peak_memory_bytes"] / 2**20))
    fig = figure(6.0 * len(panels), 4.6, layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    variants = sorted({r["attention"] for r in rows})
    lengths = sorted({r["block_size"] for r in rows})
    markers = "osD^vP*Xh<>"
    for ax, (xlabel, cost) in zip(axes, panels):
        for j, T in enumerate(lengths):
            at = [r for r in rows if r["block_size"] == T]
            for r in at:
                i = variants.index(r["attention"])
                ax.scatter(
                    cost(r),
                    r["best_val_loss"],
                    marker=markers[i % len(markers)],
                    color=f"C{j % 10}",
                    s=36,
                    label=r["attention"] if j == 0 else None,
                )
                ax.annotate(
                    r["attention"],
                    (cost(r), r["best_val_loss"]),
                    fontsize=6,
                    xytext=(3, 3),
                    textcoords="offset points",
                )
            front = pareto([(cost(r), r["best_val_loss"]) for r in at])
            ax.plot(
                [p[0] for p in front],
                [p[1] for p in front],
                "-",
                color=f"C{j % 10}",
                linewidth=1.0,
                label=f"frontier, T={T}",
            )
        ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("best validation loss")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=6)
    fig.suptitle("attention variants: quality vs cost")
    return _save(fig, path)
