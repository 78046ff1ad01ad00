"""The attention maps :func:`~attnkit.inspect.capture.capture` returns: the weights of the
captured layers (dense, or the ``top_k`` largest per row), with their layers, heads, tokens
and how each was obtained, and the ways to look at them (a heatmap, the offline viewer, a
notebook display, a stacked dense copy).

    >>> with capture(model, layers=[0, 3]) as maps:
    ...     model(input_ids)
    >>> maps.dense(3).shape          # (B, H, Tq, Tk)
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

__all__ = ["AttentionMaps"]


@dataclass
class AttentionMaps:
    """Attention weights of the captured layers.

    weights: one tensor per captured layer, (B, H, Tq, Tk) with H = len(heads); dense, or a
        sparse COO tensor holding only the ``top_k`` largest weights per row.
    layers: model layer index of each entry of ``weights``.
    heads: the query heads kept (the same for every layer), in order.
    tokens: the token strings, if given to :func:`capture`.
    top_k: entries kept per row, None for dense maps.
    topk_values, topk_indices: with ``top_k``, per layer (B, H, Tq, k) weights and key indices,
        largest first.
    sources: per layer, how the weights were obtained ("exact", "local", "bigbird", "lsh").
    info: per layer, extra data (for ``lsh``: the hash buckets (B, H, n_hashes, T)).
    calls: per layer, how many times it ran inside the context.

    Examples:
        >>> with capture(model, layers=[0, 3]) as maps:
        ...     model(input_ids)
        >>> maps.weights[0].shape  # (B, H, Tq, Tk) for layer maps.layers[0]
    """

    layers: list[int]
    heads: list[int]
    tokens: list[str] | None = None
    top_k: int | None = None
    weights: list[Tensor | None] = field(default_factory=list)
    topk_values: list[Tensor | None] = field(default_factory=list)
    topk_indices: list[Tensor | None] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    info: list[dict] = field(default_factory=list)
    calls: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = len(self.layers)
        for name in ("weights", "topk_values", "topk_indices", "sources", "info", "calls"):
            if not getattr(self, name):
                fill = {"sources": "", "calls": 0, "info": None}.get(name)
                setattr(self, name, [dict() if name == "info" else fill for _ in range(n)])

    def index(self, layer: int) -> int:
        """Position of model layer ``layer`` in ``weights``.

        Args:
            layer: a model layer index.

        Raises:
            ValueError: the layer was not captured.

        Examples:
            >>> AttentionMaps(layers=[0, 3], heads=[0, 1]).index(3)
            1
        """
        if layer not in self.layers:
            raise ValueError(f"layer {layer!r} was not captured; captured layers: {self.layers}")
        return self.layers.index(layer)

    def dense(self, layer: int) -> Tensor:
        """(B, H, Tq, Tk) dense weights of model layer ``layer`` (zeros where top-k dropped).

        Args:
            layer: a captured model layer index.

        Raises:
            ValueError: the layer was not captured, or did not run inside the context.

        Examples:
            >>> maps.dense(3).shape  # (B, H, Tq, Tk)
        """
        w = self.weights[self.index(layer)]
        if w is None:
            raise ValueError(
                f"layer {layer} was captured but did not run inside the capture context"
            )
        return w.to_dense() if w.is_sparse else w

    def viewer_page(self, batch: int = 0, title: str = "", with_stats: bool = True) -> str:
        """The self-contained viewer page (:func:`attnkit.inspect.html.render_viewer`) of one
        batch element, with the head statistics table unless ``with_stats`` is False.

        The token texts are ``tokens``, or the positions when none were given.

        Args:
            batch: the batch element shown.
            title: the page's title.
            with_stats: include the head statistics table
                (:func:`~attnkit.inspect.stats.head_stats`).

        Returns:
            The HTML page.

        Examples:
            >>> page = maps.viewer_page(title="layer 0")
        """
        from attnkit.inspect.html import render_viewer
        from attnkit.inspect.stats import head_stats

        weights = self.stacked(batch)
        tokens = self.tokens if self.tokens is not None else _positions(weights[0].shape[-1])
        rows = head_stats(weights, tokens, self.layers, self.heads) if with_stats else None
        return render_viewer(tokens, weights, self.layers, self.heads, stats=rows, title=title)

    def _repr_html_(self) -> str:
        """Jupyter's rich display: the viewer inside an ``<iframe srcdoc>``."""
        from attnkit.inspect.display import viewer_iframe

        return viewer_iframe(self.viewer_page())

    def show(self, batch: int = 0, title: str = "", height: int = 640) -> None:
        """Display the viewer of one batch element inline in Jupyter (needs IPython).

        Args:
            batch: the batch element shown.
            title: the page's title.
            height: the iframe's height in CSS pixels.

        Raises:
            ImportError: IPython is not installed.

        Examples:
            >>> maps.show(title="he swung the bat")
        """
        from attnkit.inspect.display import show_html, viewer_iframe

        show_html(viewer_iframe(self.viewer_page(batch, title), height))

    def stacked(self, batch: int = 0) -> list[Tensor]:
        """Dense (H, Tq, Tk) maps of one batch element, one per captured layer.

        Args:
            batch: the batch element.

        Raises:
            ValueError: ``batch`` is outside the batch, or a layer did not run.

        Examples:
            >>> [w.shape for w in maps.stacked(0)]  # one (H, Tq, Tk) per layer
        """
        out = []
        for layer in self.layers:
            w = self.dense(layer)
            if not 0 <= batch < w.shape[0]:
                raise ValueError(f"batch index {batch!r} is outside [0, {w.shape[0]})")
            out.append(w[batch])
        return out


def _positions(n: int) -> list[str]:
    """Stand-in token texts (the positions) for maps captured without tokens."""
    return [str(i) for i in range(n)]
