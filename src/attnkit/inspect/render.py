"""PNG heatmaps of attention maps with token labels (matplotlib, Agg; no display needed).

* :func:`plot_head`: one head's (Tq, Tk) map, queries down, keys across;
* :func:`plot_layer`: every head of one layer as a grid of small maps;
* :func:`plot_rollout`: an attention-rollout (or flow) matrix.

Each writes a PNG (atomically) and returns its path; :func:`head_figure`, :func:`layer_figure`
and :func:`rollout_figure` draw the same pictures and return the ``matplotlib.figure.Figure``
(shown inline by Jupyter, or saved with ``fig.savefig``). Figures are made with
``matplotlib.figure.Figure`` and the Agg canvas directly (:func:`attnkit._util.optional.figure`),
so no pyplot state is touched and nothing needs a display; without matplotlib each raises
:class:`~attnkit._util.optional.MissingDependency` naming ``attnkit[viz]``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from attnkit._util.fs import atomic_write
from attnkit._util.optional import figure

if TYPE_CHECKING:  # pragma: no cover - for static tools only
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "head_figure",
    "layer_figure",
    "plot_head",
    "plot_layer",
    "plot_rollout",
    "rollout_figure",
]

MAX_LABELS = 64  # tokens labelled on an axis; longer inputs get no tick labels


def _figure(width: float, height: float, dpi: int = 100) -> Figure:
    return figure(width, height, dpi)  # MissingDependency (attnkit[viz]) without matplotlib


def _matrix(w: object, name: str, dims: int) -> Tensor:
    if not isinstance(w, Tensor) or w.dim() != dims:
        what = tuple(w.shape) if isinstance(w, Tensor) else type(w).__name__
        shape = "(Tq, Tk)" if dims == 2 else "(H, Tq, Tk)"
        raise ValueError(f"{name} must be a {shape} tensor, got {what}")
    if w.is_sparse:
        w = w.to_dense()
    w = w.detach().to("cpu", torch.float32)
    if w.numel() == 0 or not bool(torch.isfinite(w).all()):
        raise ValueError(f"{name} must be a non-empty tensor of finite values")
    return w


def _check_tokens(tokens: Sequence[str] | None, n: int, what: str) -> list[str] | None:
    if tokens is None:
        return None
    if isinstance(tokens, str) or not all(isinstance(t, str) for t in tokens):
        raise ValueError(f"{what} tokens must be a list of str, got {tokens!r:.80}")
    if len(tokens) != n:
        raise ValueError(
            f"{what} tokens has {len(tokens)} entries; expected {n} (one per {what} position)"
        )
    return list(tokens)


def _label_axes(
    ax: Axes, q_tokens: list[str] | None, k_tokens: list[str] | None, fontsize: float
) -> None:
    for setter, ticks, labels, rot in (
        (ax.set_xticks, ax.set_xticklabels, k_tokens, 90),
        (ax.set_yticks, ax.set_yticklabels, q_tokens, 0),
    ):
        if labels is None or len(labels) > MAX_LABELS:
            setter([])
            continue
        setter(range(len(labels)))
        ticks(labels, rotation=rot, fontsize=fontsize)


def _save(fig: Figure, path: str | os.PathLike[str]) -> Path:
    return atomic_write(Path(path), lambda tmp: fig.savefig(tmp, format="png"))


def _size(tq: int, tk: int) -> tuple[float, float]:
    side = min(12.0, max(3.5, 0.28 * max(tq, tk) + 2.0))
    return side * min(1.6, max(0.6, tk / max(tq, 1))) + 1.0, side


def plot_head(
    weights: Tensor,
    tokens: Sequence[str] | None = None,
    path: str | os.PathLike[str] = "head.png",
    title: str = "",
    query_tokens: Sequence[str] | None = None,
) -> Path:
    """Write :func:`head_figure` as a PNG at ``path``; returns the path.

    Args:
        weights: (Tq, Tk) weights of one head (dense or sparse).
        tokens: the Tk key tokens (the queries are the last Tq of them).
        path: the PNG to write.
        title: the plot's title.
        query_tokens: the Tq query tokens, when they are not the last Tq keys.

    Raises:
        ValueError: ``weights`` not a non-empty finite (Tq, Tk) tensor, or tokens of the wrong
            length.

    Examples:
        >>> plot_head(maps.stacked()[0][3], tokens, "head.png")
        PosixPath('head.png')
    """
    return _save(head_figure(weights, tokens, title, query_tokens), path)


def head_figure(
    weights: Tensor,
    tokens: Sequence[str] | None = None,
    title: str = "",
    query_tokens: Sequence[str] | None = None,
) -> Figure:
    """Heatmap of one head: ``weights`` (Tq, Tk), ``tokens`` the Tk keys (and the queries, the
    last Tq of them, unless ``query_tokens`` is given). Returns the Figure.

    Args:
        weights: (Tq, Tk) weights of one head (dense or sparse).
        tokens: the Tk key tokens.
        title: the plot's title.
        query_tokens: the Tq query tokens, when they are not the last Tq keys.

    Raises:
        ValueError: ``weights`` not a non-empty finite (Tq, Tk) tensor, or tokens of the wrong
            length.

    Examples:
        >>> fig = head_figure(maps.stacked()[0][3], tokens)
    """
    w = _matrix(weights, "weights", 2)
    tq, tk = w.shape
    k_tok = _check_tokens(tokens, tk, "key")
    q_tok = (
        _check_tokens(query_tokens, tq, "query")
        if query_tokens is not None
        else (k_tok[tk - tq :] if k_tok is not None else None)
    )
    vmax = max(float(w.max()), 1e-9)
    return _heatmap(w, q_tok, k_tok, ("query", "key"), "viridis", vmax, title)


def _heatmap(
    m: Tensor,
    row_tokens: list[str] | None,
    col_tokens: list[str] | None,
    labels: tuple[str, str],
    cmap: str,
    vmax: float | None,
    title: str,
) -> Figure:
    """One (rows, cols) matrix as a heatmap with a colour bar; ``labels`` name the rows and
    the columns."""
    fig = _figure(*_size(*m.shape))
    ax = fig.add_subplot()
    im = ax.imshow(m.numpy(), cmap=cmap, vmin=0.0, vmax=vmax, aspect="auto")
    _label_axes(ax, row_tokens, col_tokens, 8)
    ax.set_xlabel(labels[1])
    ax.set_ylabel(labels[0])
    if title:
        ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    return fig


def plot_layer(
    weights: Tensor,
    tokens: Sequence[str] | None = None,
    path: str | os.PathLike[str] = "layer.png",
    title: str = "",
    heads: Sequence[int] | None = None,
) -> Path:
    """Write :func:`layer_figure` as a PNG at ``path``; returns the path.

    Args:
        weights: (H, Tq, Tk) weights of one layer (dense or sparse).
        tokens: the Tk key tokens.
        path: the PNG to write.
        title: the figure's title.
        heads: the head number of each panel (default 0..H-1).

    Raises:
        ValueError: ``weights`` not a non-empty finite (H, Tq, Tk) tensor, or ``tokens`` or
            ``heads`` of the wrong length.

    Examples:
        >>> plot_layer(maps.stacked()[0], tokens, "layer0.png")
        PosixPath('layer0.png')
    """
    return _save(layer_figure(weights, tokens, title, heads), path)


def layer_figure(
    weights: Tensor,
    tokens: Sequence[str] | None = None,
    title: str = "",
    heads: Sequence[int] | None = None,
) -> Figure:
    """Every head of one layer, ``weights`` (H, Tq, Tk), as a grid; ``heads`` names the panels
    (default 0..H-1). Returns the Figure. Panels get token labels only up to 24 tokens.

    Args:
        weights: (H, Tq, Tk) weights of one layer (dense or sparse).
        tokens: the Tk key tokens.
        title: the figure's title.
        heads: the head number of each panel (default 0..H-1).

    Raises:
        ValueError: ``weights`` not a non-empty finite (H, Tq, Tk) tensor, or ``tokens`` or
            ``heads`` of the wrong length.

    Examples:
        >>> fig = layer_figure(maps.stacked()[0], tokens, heads=maps.heads)
    """
    w = _matrix(weights, "weights", 3)
    H, tq, tk = w.shape
    k_tok = _check_tokens(tokens, tk, "key")
    q_tok = k_tok[tk - tq :] if k_tok is not None else None
    names = list(range(H)) if heads is None else list(heads)
    if len(names) != H:
        raise ValueError(f"heads has {len(names)} entries; expected {H} (one per map)")
    cols = min(H, 4)
    rows = math.ceil(H / cols)
    panel = min(4.0, max(2.2, 0.16 * max(tq, tk) + 1.2))
    fig = _figure(cols * panel + 0.5, rows * panel + (0.6 if title else 0.2))
    small = len(k_tok) <= 24 if k_tok is not None else False
    for h in range(H):
        ax = fig.add_subplot(rows, cols, h + 1)
        ax.imshow(
            w[h].numpy(), cmap="viridis", vmin=0.0, vmax=max(float(w[h].max()), 1e-9), aspect="auto"
        )
        _label_axes(ax, q_tok if small else None, k_tok if small else None, 5)
        ax.set_title(f"head {names[h]}", fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_rollout(
    matrix: Tensor,
    tokens: Sequence[str] | None = None,
    path: str | os.PathLike[str] = "rollout.png",
    title: str = "attention rollout",
) -> Path:
    """Write :func:`rollout_figure` as a PNG at ``path``; returns the path.

    Args:
        matrix: a (T, T) rollout or flow matrix (rows may be the last of the T tokens).
        tokens: the T input tokens.
        path: the PNG to write.
        title: the plot's title.

    Raises:
        ValueError: ``matrix`` not a non-empty finite 2-d tensor, or tokens of the wrong length.

    Examples:
        >>> plot_rollout(inspect.rollout(maps), tokens, "rollout.png")
        PosixPath('rollout.png')
    """
    return _save(rollout_figure(matrix, tokens, title), path)


def rollout_figure(
    matrix: Tensor,
    tokens: Sequence[str] | None = None,
    title: str = "attention rollout",
) -> Figure:
    """Heatmap of a (T, T) rollout or flow matrix: row i = output token, column j = input token.
    Returns the Figure.

    Args:
        matrix: a (T, T) rollout or flow matrix (rows may be the last of the T tokens).
        tokens: the T input tokens.
        title: the plot's title.

    Raises:
        ValueError: ``matrix`` not a non-empty finite 2-d tensor, or tokens of the wrong length.

    Examples:
        >>> fig = rollout_figure(inspect.rollout(maps), tokens)
    """
    m = _matrix(matrix, "matrix", 2)
    t = _check_tokens(tokens, m.shape[1], "input")
    rows = t[m.shape[1] - m.shape[0] :] if t is not None else None
    return _heatmap(m, rows, t, ("output token", "input token"), "magma", None, title)
