"""A self-contained interactive HTML viewer of attention maps.

:func:`render_viewer` returns one HTML page, :func:`write_viewer` writes it to a file. The page
needs nothing but a browser: the data is inline JSON, the code is a small inline script, and a
Content-Security-Policy forbids every remote load. It has four tabs:

* head view: the tokens twice, with a line from each token to each token it attends to, shaded
  by the weight; pick the layer and head; hover (or click to pin) a token to highlight its row
  (left column) or its column (right column);
* model view: every layer x head as a thumbnail of its map; a click opens it in the head view;
* head statistics: the per-head rows given as ``stats``, sortable;
* rollout: the ``rollout`` matrix as a heatmap and as token shading.

Size. 144 maps of 512 x 512 floats are 150 MB; the page keeps, per row of each map, its largest
weights until they carry ``mass`` (99%) of the row, at most ``max_entries`` of them (by default
as many as keep the whole page under ``max_bytes``, 8 MB). A kept weight is stored in 8 bits
relative to its row's largest weight (16 bits), its key position in 16 bits. What was left out
(the mass of the dropped weights, per row, mean and max per head) is written in the page.

Safety. Token text is only ever set as text (``textContent``), never parsed as HTML. The JSON is
escaped so no ``<``, ``>``, ``&``, U+2028 or U+2029 appears in it literally (``</script>`` in a
token cannot end the data block), and the title is HTML-escaped.

Encoded map layout (one base64 string per layer x head, ``T`` rows, ``n`` kept weights, all
little-endian): ``rowmax`` uint16[T] (largest weight of the row x 65535), ``key`` uint16[n],
``count`` uint8[T] (weights kept per row), ``q`` uint8[n] (weight = q / 255 x rowmax / 65535).

One job, kept whole (about 440 lines): turning captured maps into the one viewer file
(data checks, size limits, inline JSON and the page around it).
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from functools import lru_cache
from importlib import resources
from numbers import Real
from pathlib import Path
from typing import Any

import numpy as np
import torch

from attnkit._util.checks import fail, in_range, int_at_least, int_in
from attnkit._util.fs import atomic_write_text

__all__ = ["render_viewer", "write_viewer", "DEFAULT_MASS", "DEFAULT_MAX_BYTES"]

DEFAULT_MASS = 0.99
DEFAULT_MAX_BYTES = 8_000_000
MAX_TOKENS = 65_535  # key positions are stored in 16 bits
_MAX_PER_ROW = 255  # the per-row count is stored in 8 bits
_HEADROOM = 0.97  # keep this share of max_bytes as the target, for the JSON around the maps


@lru_cache(maxsize=1)
def _template() -> tuple[str, str]:
    """The page template and its Content-Security-Policy (hashes of the inline style and script)."""
    text = (
        resources.files("attnkit.inspect")
        .joinpath("viewer_template.html")
        .read_text(encoding="utf-8")
    )
    style = re.search(r"<style>(.*?)</style>", text, re.S)
    script = re.search(r"<script>(.*?)</script>", text, re.S)
    if style is None or script is None:  # pragma: no cover - the template ships with both
        raise RuntimeError("viewer_template.html lacks its <style> or <script> block")

    def digest(s: str) -> str:
        return (
            "'sha256-"
            + base64.b64encode(hashlib.sha256(s.encode("utf-8")).digest()).decode("ascii")
            + "'"
        )

    csp = (
        f"default-src 'none'; script-src {digest(script.group(1))}; style-src {digest(style.group(1))}; "
        "img-src data:; base-uri 'none'; form-action 'none'"
    )
    return text, csp


def _script_safe_json(data: Any) -> str:
    """JSON that can sit inside ``<script>``: ``<``, ``>``, ``&``, U+2028, U+2029 escaped."""
    text = json.dumps(data, ensure_ascii=True, allow_nan=False, separators=(",", ":"))
    # ensure_ascii already wrote U+2028/U+2029 as \u2028/\u2029; these three are ASCII.
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


# --------------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------------


def _int_list(name: str, values: Any) -> list[int]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise ValueError(f"{name} must be a list of ints, got {type(values).__name__}")
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise ValueError(f"{name} must be a list of ints, got {v!r} in {list(values)!r}")
        out.append(int(v))
    if len(set(out)) != len(out):
        raise ValueError(f"{name} must not repeat a value, got {out}")
    return out


def _check_tokens(tokens: Any) -> list[str]:
    if isinstance(tokens, (str, bytes)) or not isinstance(tokens, Sequence):
        raise ValueError(f"tokens must be a list of str, got {type(tokens).__name__}")
    if not tokens:
        raise ValueError("tokens must not be empty; expected one str per position")
    bad = [t for t in tokens if not isinstance(t, str)]
    if bad:
        raise ValueError(f"tokens must be a list of str, got {bad[0]!r} ({type(bad[0]).__name__})")
    if len(tokens) > MAX_TOKENS:
        raise ValueError(f"the viewer shows at most {MAX_TOKENS} tokens, got {len(tokens)}")
    return list(tokens)


def _check_maps(
    weights: Any, n_tokens: int, layers: list[int], heads: list[int]
) -> list[torch.Tensor]:
    """Float32 (len(heads), T, T) maps, one per layer, on the CPU."""
    if isinstance(weights, torch.Tensor) or not isinstance(weights, Sequence):
        raise ValueError(
            f"weights must be a list of (H, T, T) tensors, one per layer; got {type(weights).__name__}"
        )
    if len(weights) != len(layers):
        raise ValueError(
            f"weights has {len(weights)} layers but layers names {len(layers)} ({layers}); "
            "expected one (H, T, T) tensor per entry of layers"
        )
    if not layers:
        raise ValueError("layers must not be empty; expected at least one layer to show")
    if not heads:
        raise ValueError("heads must not be empty; expected at least one head to show")
    out = []
    for pos, (layer, w) in enumerate(zip(layers, weights)):
        if not isinstance(w, torch.Tensor):
            raise ValueError(
                f"weights[{pos}] (layer {layer}) must be a tensor, got {type(w).__name__}"
            )
        if w.dim() == 4 and w.shape[0] == 1:
            w = w[0]
        if w.dim() != 3 or w.shape[1] != n_tokens or w.shape[2] != n_tokens:
            raise ValueError(
                f"weights[{pos}] (layer {layer}) has shape {tuple(w.shape)}; "
                f"expected (H, {n_tokens}, {n_tokens}) for {n_tokens} tokens"
            )
        if not (w.is_floating_point()):
            raise ValueError(
                f"weights[{pos}] (layer {layer}) has dtype {w.dtype}; expected a float tensor"
            )
        n_heads = w.shape[0]
        if n_heads != len(heads):
            # All of the layer's heads were given: pick the ones named.
            bad = [h for h in heads if not 0 <= h < n_heads]
            if bad:
                raise ValueError(
                    f"weights[{pos}] (layer {layer}) has {n_heads} heads, so heads {heads} must "
                    f"either list {n_heads} heads or index into range({n_heads}); {bad} do not"
                )
            w = w[heads]
        w = w.detach().to("cpu", torch.float32)
        lo, hi = (float(x) for x in torch.aminmax(w))  # NaN propagates into both
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise ValueError(
                f"weights[{pos}] (layer {layer}) holds NaN or infinite values; expected finite weights"
            )
        if lo < 0:
            raise ValueError(
                f"weights[{pos}] (layer {layer}) holds a negative weight ({lo:.4g}); "
                "expected attention probabilities >= 0"
            )
        out.append(w)
    return out


def _plain(v: Any, where: str) -> Any:
    """A JSON-ready stats value: numbers (non-finite -> None), str, bool, None."""
    if isinstance(v, torch.Tensor):
        if v.numel() != 1:
            raise ValueError(f"{where} is a tensor of shape {tuple(v.shape)}; expected a number")
        v = v.item()
    if isinstance(v, np.generic):
        v = v.item()
    if v is None or isinstance(v, (bool, str)):
        return v
    if isinstance(v, int):
        return v
    if isinstance(v, Real):
        v = float(v)
        return v if math.isfinite(v) else None
    raise ValueError(f"{where} is {v!r} ({type(v).__name__}); expected a number or a str")


def _check_stats(stats: Any) -> list[dict[str, Any]] | None:
    if stats is None:
        return None
    if isinstance(stats, (str, bytes, Mapping)) or not isinstance(stats, Sequence):
        raise ValueError(
            f"stats must be a list of dicts (one per head), got {type(stats).__name__}"
        )
    rows = []
    for n, row in enumerate(stats):
        if not isinstance(row, Mapping):
            raise ValueError(
                f"stats[{n}] must be a dict with 'layer', 'head' and metrics, got {type(row).__name__}"
            )
        for key in ("layer", "head"):
            v = row.get(key)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                fail(f"stats[{n}][{key!r}]", v, "an int", wrong_type=True)
        out: dict[str, Any] = {}
        for key, v in row.items():
            if not isinstance(key, str):
                raise ValueError(f"stats[{n}] has key {key!r}; expected str keys")
            if key == "labels":
                if (
                    isinstance(v, str)
                    or not isinstance(v, Sequence)
                    or not all(isinstance(s, str) for s in v)
                ):
                    raise ValueError(f"stats[{n}]['labels'] must be a list of str, got {v!r}")
                out[key] = list(v)
            else:
                out[key] = _plain(v, f"stats[{n}][{key!r}]")
        rows.append(out)
    return rows


# --------------------------------------------------------------------------------------------
# encoding
# --------------------------------------------------------------------------------------------


def _b64(*arrays: np.ndarray) -> str:
    return base64.b64encode(b"".join(a.tobytes() for a in arrays)).decode("ascii")


def _encode_layer(
    w: torch.Tensor, mass: float, k: int
) -> tuple[list[str], list[int], list[float], list[float]]:
    """Encode one (H, T, T) map; returns per head: base64 data, kept count, dropped mass mean, max."""
    n_heads, n_tok, _ = w.shape
    top, idx = torch.topk(w, k, dim=-1, sorted=True)  # (H, T, k) largest first
    rowsum = w.sum(-1, keepdim=True)  # (H, T, 1)
    before = torch.cumsum(top, -1) - top  # mass of the entries ahead of each one
    keep = (before < mass * rowsum) & (top > 0)
    rowmax = top[..., :1]  # (H, T, 1)
    rowmax_q = torch.round(rowmax * 65535).clamp(0, 65535)
    scale = torch.where(rowmax_q > 0, rowmax_q / 65535, torch.ones_like(rowmax))
    q = torch.round(top / scale * 255).clamp(0, 255)
    keep &= q > 0  # rounds to nothing: nothing to draw
    kept_mass = (top * keep).sum(-1)  # (H, T)
    dropped = (rowsum[..., 0] - kept_mass).clamp(min=0)
    dropped = torch.where(
        rowsum[..., 0] > 0, dropped / rowsum[..., 0].clamp(min=1e-30), torch.zeros_like(dropped)
    )
    counts = keep.sum(-1).numpy().astype(np.uint8)  # (H, T)
    keep_np, idx_np = keep.numpy(), idx.numpy().astype("<u2")
    q_np, rowmax_np = q.numpy().astype(np.uint8), rowmax_q[..., 0].numpy().astype("<u2")
    d_mean_t, d_max_t = dropped.mean(-1), dropped.amax(-1)
    data, nnz, d_mean, d_max = [], [], [], []
    for h in range(n_heads):
        m = keep_np[h]
        data.append(_b64(rowmax_np[h], idx_np[h][m], counts[h], q_np[h][m]))
        nnz.append(int(counts[h].sum(dtype=np.int64)))
        d_mean.append(float(d_mean_t[h]))
        d_max.append(float(d_max_t[h]))
    return data, nnz, d_mean, d_max


def _encode_rollout(rollout: Any, n_tokens: int) -> dict[str, Any] | None:
    if rollout is None:
        return None
    if not isinstance(rollout, torch.Tensor):
        raise ValueError(
            f"rollout must be a ({n_tokens}, {n_tokens}) tensor or None, got {type(rollout).__name__}"
        )
    r = rollout.detach().to("cpu", torch.float32)
    while r.dim() > 2 and r.shape[0] == 1:
        r = r[0]
    if r.shape != (n_tokens, n_tokens):
        raise ValueError(
            f"rollout has shape {tuple(rollout.shape)}; expected ({n_tokens}, {n_tokens}) for "
            f"{n_tokens} tokens"
        )
    if not bool(torch.isfinite(r).all()) or float(r.min()) < 0:
        raise ValueError(
            "rollout must hold finite values >= 0; it has NaN, infinite or negative values"
        )
    rowmax = r.max(-1, keepdim=True).values
    top = float(rowmax.max())
    # Rows are stored relative to their largest value; that largest value in 16 bits of the
    # matrix's largest, so rows that sum to more than 1 (no renormalisation) still fit.
    unit = top if top > 0 else 1.0
    rowmax_q = torch.round(rowmax / unit * 65535).clamp(0, 65535)
    scale = torch.where(rowmax_q > 0, rowmax_q / 65535 * unit, torch.ones_like(rowmax))
    q = torch.round(r / scale * 255).clamp(0, 255)
    return {
        "data": _b64(rowmax_q[:, 0].numpy().astype("<u2"), q.numpy().astype(np.uint8)),
        "unit": unit,
    }


def _fmt_pct(x: float) -> str:
    return f"{100 * x:.3g}%"


def render_viewer(
    tokens: list[str],
    weights: list[torch.Tensor],
    layers: list[int],
    heads: list[int],
    stats: list[dict] | None = None,
    rollout: torch.Tensor | None = None,
    title: str = "",
    *,
    mass: float = DEFAULT_MASS,
    max_entries: int | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> str:
    """The viewer page for one input as an HTML string.

    Args:
        tokens: the token texts, one per position (shown as text, never as HTML).
        weights: one (H, T, T) tensor of attention probabilities per layer in ``layers``, for
            one batch element; ``H`` is ``len(heads)`` (already selected) or all of the layer's
            heads (``heads`` then picks among them by index). Rows may be top-k sparse (zeros).
        layers: the layer numbers the maps belong to (labels in the page).
        heads: the head numbers the maps belong to (labels in the page).
        stats: per-head rows, dicts with ``"layer"``, ``"head"``, numeric metrics and
            ``"labels"`` (a list of str); shown as a sortable table.
        rollout: a (T, T) attention-rollout matrix, or None.
        title: the page's title (HTML-escaped).
        mass: per row, keep the largest weights until they hold this share of the row's sum,
            in (0, 1].
        max_entries: at most this many weights per row (at most 255); by default the largest
            number that keeps the page under ``max_bytes``.
        max_bytes: the page size aimed at when ``max_entries`` is None.

    Raises:
        ValueError: tokens, maps, layers, heads, stats or rollout that do not fit together or
            are malformed (the message says which), or a bad ``mass``, ``max_entries`` or
            ``max_bytes``.

    Examples:
        >>> page = render_viewer(tokens, maps.stacked(), maps.layers, maps.heads, title="bat")
    """
    tokens = _check_tokens(tokens)
    layers = _int_list("layers", layers)
    heads = _int_list("heads", heads)
    if not isinstance(title, str):
        raise ValueError(f"title must be a str, got {type(title).__name__}")
    in_range("mass", mass, 0.0, 1.0, low_open=True, high_open=False)
    int_at_least("max_bytes", max_bytes, 1, "an int > 0")
    n = len(tokens)
    maps = _check_maps(weights, n, layers, heads)
    rows_stats = _check_stats(stats)
    roll = _encode_rollout(rollout, n)
    template, csp = _template()
    n_maps = len(layers) * len(heads)

    data: dict[str, Any] = {
        "title": title,
        "tokens": tokens,
        "layers": layers,
        "heads": heads,
        "stats": rows_stats,
        "rollout": roll,
        "note": "",
        "encoding": {},
        "maps": [],
        "nnz": [],
        "dropped_mean": [],
        "dropped_max": [],
    }
    cap = min(n, _MAX_PER_ROW)
    if max_entries is None:
        # Bytes that do not depend on the entries: the page, the other data and per-row fields
        # (3 bytes per row, base64 4/3), plus ~40 bytes of JSON per map for counts and losses.
        fixed = len(template) + len(_script_safe_json(data)) + 400 + n_maps * (4 * n + 60)
        per_entry = 4 * n_maps * n  # 3 bytes per kept weight, base64-encoded
        k = int((_HEADROOM * max_bytes - fixed) // per_entry)
        k = max(1, min(cap, k))
    else:
        what = f"an int in [1, {_MAX_PER_ROW}]"
        k = min(cap, int_in("max_entries", max_entries, 1, _MAX_PER_ROW, what))

    for w in maps:
        enc, nnz, d_mean, d_max = _encode_layer(w, float(mass), k)
        data["maps"] += enc
        data["nnz"] += nnz
        data["dropped_mean"] += d_mean
        data["dropped_max"] += d_max
    worst = max(range(n_maps), key=lambda i: data["dropped_max"][i])
    mean = sum(data["dropped_mean"]) / n_maps
    if k >= n and mass >= 1:
        kept = "Every nonzero weight is kept"
    else:
        kept = (
            f"Each row keeps its largest weights until they hold {_fmt_pct(mass)} of the row"
            if mass < 1
            else "Each row keeps its largest weights"
        )
        if k < n:
            kept += f", at most {k} of {n} per row"
    data["note"] = (
        f"{n} tokens, {len(layers)} layers x {len(heads)} heads. {kept}; weights are stored to 1/255 of the row's "
        f"largest, and smaller ones are dropped. Attention left out per row: mean {_fmt_pct(mean)}, max "
        f"{_fmt_pct(data['dropped_max'][worst])} (layer {layers[worst // len(heads)]}, head "
        f"{heads[worst % len(heads)]})."
    )
    data["encoding"] = {"mass": float(mass), "max_entries": k, "value_bits": 8, "key_bits": 16}
    block = f'<script type="application/json" id="attnkit-data">{_script_safe_json(data)}</script>'
    fill = {
        "CSP": html.escape(csp, quote=False),
        "DATA": block,  # the CSP holds no double quote
        "TITLE": html.escape(title or "attnkit attention viewer", quote=False),
    }
    # One pass, so text put in (a title holding "{{DATA}}", say) is never substituted again.
    return re.sub(r"\{\{(CSP|TITLE|DATA)\}\}", lambda m: fill[m.group(1)], template)


def write_viewer(
    path: str | os.PathLike,
    tokens: list[str],
    weights: list[torch.Tensor],
    layers: list[int],
    heads: list[int],
    stats: list[dict] | None = None,
    rollout: torch.Tensor | None = None,
    title: str = "",
    **options: Any,
) -> Path:
    """Write the viewer page (see :func:`render_viewer`) to ``path``, atomically; returns the path.

    Parent folders are created.

    Args:
        path: the HTML file to write (not a directory).
        tokens: the token texts, one per position.
        weights: one (H, T, T) tensor per layer in ``layers``.
        layers: the layer numbers the maps belong to.
        heads: the head numbers the maps belong to.
        stats: per-head rows for the statistics table, or None.
        rollout: a (T, T) attention-rollout matrix, or None.
        title: the page's title.
        **options: ``mass``, ``max_entries`` or ``max_bytes``, passed to :func:`render_viewer`.

    Raises:
        ValueError: ``path`` is a directory, or :func:`render_viewer` refuses the data.

    Examples:
        >>> write_viewer("viewer.html", tokens, maps.stacked(), maps.layers, maps.heads)
        PosixPath('viewer.html')
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(
            f"path {str(path)!r} is a directory; expected a file path such as {str(path / 'viewer.html')!r}"
        )
    page = render_viewer(tokens, weights, layers, heads, stats, rollout, title, **options)
    return atomic_write_text(path, page)
