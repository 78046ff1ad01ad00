"""Per-head statistics, head labels, attention rollout and attention flow.

Statistics of one head, from its (Tq, Tk) map of one sequence (query i sits at position
Tk - Tq + i, as in :func:`attnkit.attention.attention`), each averaged over the query rows that
attend to anything:

* ``entropy``: -sum_j w_ij log w_ij (nats); ``entropy_norm``: the same divided by log(n_i),
  n_i the number of keys query i may see (rows with n_i >= 2), 1.0 = uniform. The keys a
  query may see are read off the maps of its layer: no key after the query when no head of the
  layer ever looks ahead (causal), and no key that no head ever attends to (padding);
* ``distance``: sum_j w_ij |pos_i - j|, the mean attention distance in tokens;
* ``first``, ``prev``, ``self``: weight on the first token, on the previous position, on the
  query's own position; ``near``: weight within 2 positions either side (itself included);
* ``special``: weight on [CLS]/[SEP]-like tokens; ``sep``: on separators ([SEP], </s>,
  <|endoftext|>); ``punct``: on punctuation tokens (these three need the tokens).

A head is labelled when a statistic passes a rule of :data:`RULES` (threshold, and for the mass
on a kind of token, a multiple of the mass that uniform attention would put there, so that a
text made mostly of punctuation does not make every head a punctuation sink); each row says which
numbers and thresholds gave each label in ``why``.

Rollout and flow follow Abnar & Zuidema (2020), "Quantifying Attention Flow in Transformers":
each layer's head-averaged weights are mixed with the residual connection,
A_l = 0.5 * mean_h(W_l) + 0.5 * I, rows renormalised. Rollout multiplies them,
R = A_L ... A_1; flow is the maximum flow from input token j to output token i through the
layered graph whose edges (layer l-1, token j) -> (layer l, token i) have capacity A_l[i, j].

One job, kept whole (about 430 lines): the numbers read off attention maps (per-head
statistics, the labels drawn from them, rollout and flow).
"""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from attnkit._util.checks import in_range, int_in

if TYPE_CHECKING:  # pragma: no cover - a type only; capture is imported when used
    from attnkit.inspect.capture import AttentionMaps

__all__ = [
    "RULES",
    "Rule",
    "HeadStats",
    "SPECIAL_TOKENS",
    "SEPARATOR_TOKENS",
    "head_stats",
    "label_head",
    "rollout",
    "attention_flow",
    "max_flow",
    "residual_attention",
]

SPECIAL_TOKENS = frozenset({"[CLS]", "[SEP]", "<s>", "</s>", "<|endoftext|>", "<cls>", "<sep>"})
SEPARATOR_TOKENS = frozenset({"[SEP]", "</s>", "<|endoftext|>", "<sep>"})
METRICS = (
    "entropy",
    "entropy_norm",
    "distance",
    "first",
    "prev",
    "self",
    "near",
    "special",
    "sep",
    "punct",
)

# flow: at most this many tokens and graph nodes ((layers + 1) * tokens)
FLOW_MAX_TOKENS = 32
FLOW_MAX_NODES = 256


@dataclass(frozen=True)
class Rule:
    """``label`` when ``metric >= threshold`` (and, with ``over_uniform``, also at least that
    multiple of the uniform-attention value of the metric), unless a label in ``unless``
    was given first.

    Args:
        label: the label given.
        metric: the statistic tested (a key of a :func:`head_stats` row).
        threshold: the least value of ``metric``.
        over_uniform: also the least multiple of the metric's uniform-attention value.
        unless: labels that, given by an earlier rule, prevent this one.

    Examples:
        >>> label_head({"prev": 0.9}, [Rule("previous-token head", "prev", 0.5)])[0]
        ['previous-token head']
    """

    label: str
    metric: str
    threshold: float
    over_uniform: float | None = None
    unless: tuple[str, ...] = ()


RULES: tuple[Rule, ...] = (
    Rule("previous-token head", "prev", 0.5),
    Rule("self", "self", 0.5),
    Rule("[SEP] sink", "sep", 0.5, over_uniform=2.0),
    Rule("first-token sink", "first", 0.5, over_uniform=2.0),
    Rule("punctuation sink", "punct", 0.4, over_uniform=2.0),
    Rule("local", "near", 0.8, over_uniform=1.5, unless=("previous-token head", "self")),
    Rule("broad", "entropy_norm", 0.85),
)


# --------------------------------------------------------------------------------------------
# tokens
# --------------------------------------------------------------------------------------------
def _bare(token: str) -> str:
    t = token
    for prefix in ("##", "\u0120", "\u2581", "\u010a"):
        if t.startswith(prefix):
            t = t[len(prefix) :]
    return t.strip()


def is_punctuation(token: str) -> bool:
    """True for a token made only of punctuation characters (after subword markers)."""
    t = _bare(token)
    return (
        bool(t)
        and token not in SPECIAL_TOKENS
        and all(unicodedata.category(c).startswith("P") for c in t)
    )


def _token_mask(tokens: Sequence[str] | None, tk: int, pick) -> Tensor | None:
    if tokens is None:
        return None
    return torch.tensor([bool(pick(t)) for t in tokens], dtype=torch.bool)


# --------------------------------------------------------------------------------------------
# statistics
# --------------------------------------------------------------------------------------------
def _check_map(w: Any, where: str) -> Tensor:
    if not isinstance(w, Tensor) or w.dim() != 3:
        what = tuple(w.shape) if isinstance(w, Tensor) else type(w).__name__
        raise ValueError(f"{where} must be a (H, Tq, Tk) tensor of one sequence, got {what}")
    if w.is_sparse:
        w = w.to_dense()
    if not w.is_floating_point() or not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
        raise ValueError(f"{where} must hold finite weights >= 0")
    return w.detach().to("cpu", torch.float64)


def _per_head(w: Tensor, tokens: Sequence[str] | None) -> dict[str, Tensor]:
    """Statistics of every head of one layer: w (H, Tq, Tk) -> {metric: (H,) tensor}, plus the
    uniform-attention values of the mass metrics under the key '<metric>_uniform'."""
    H, Tq, Tk = w.shape
    offset = Tk - Tq
    qpos = torch.arange(Tq) + offset  # (Tq,)
    kpos = torch.arange(Tk)
    dist = (qpos[:, None] - kpos[None, :]).abs().to(w.dtype)  # (Tq, Tk)
    live = w.sum(-1) > 0  # (H, Tq) rows that attend to anything
    # the keys a query may see, as far as the maps tell: a layer whose heads never look ahead is
    # causal; a key no head ever attends to is padding
    future = kpos[None, :] > qpos[:, None]  # (Tq, Tk)
    causal = bool((w[:, future] == 0).all()) and bool(future.any())
    seen = (w.sum((0, 1)) > 0)[None, None, :].expand(H, Tq, Tk)  # (H, Tq, Tk)
    if causal:
        seen = seen & ~future
    n_seen = seen.sum(-1)  # (H, Tq)
    uniform = torch.where(
        seen, 1.0 / n_seen.clamp_min(1)[..., None].to(w.dtype), torch.zeros_like(w)
    )

    def mean(x: Tensor, rows: Tensor) -> Tensor:  # x (H, Tq) -> (H,), over the selected rows
        cnt = rows.sum(-1)
        val = torch.where(rows, x, torch.zeros_like(x)).sum(-1) / cnt.clamp_min(1)
        return torch.where(cnt > 0, val, torch.full_like(val, float("nan")))

    logw = torch.where(w > 0, w.log(), torch.zeros_like(w))
    ent = -(w * logw).sum(-1)  # (H, Tq)
    out = {
        "entropy": mean(ent, live),
        "entropy_norm": mean(ent / n_seen.clamp_min(2).to(w.dtype).log(), live & (n_seen >= 2)),
        "distance": mean((w * dist).sum(-1), live),
    }
    masks = {
        "first": kpos == 0,
        "near": None,
        "special": _token_mask(tokens, Tk, lambda t: t in SPECIAL_TOKENS),
        "sep": _token_mask(tokens, Tk, lambda t: t in SEPARATOR_TOKENS),
        "punct": _token_mask(tokens, Tk, is_punctuation),
    }
    for name, km in masks.items():
        if name == "near":
            sel = (dist <= 2).to(w.dtype)  # (Tq, Tk)
            out["near"] = mean((w * sel).sum(-1), live)
            out["near_uniform"] = mean((uniform * sel).sum(-1), live)
            continue
        if km is None:
            out[name] = out[f"{name}_uniform"] = torch.full((H,), float("nan"), dtype=w.dtype)
            continue
        kf = km.to(w.dtype)
        out[name] = mean(w @ kf, live)
        out[f"{name}_uniform"] = mean(uniform @ kf, live)
    prev_ok = (qpos >= 1) & (qpos - 1 < Tk)
    prev = w[:, torch.arange(Tq), (qpos - 1).clamp(0, Tk - 1)]  # (H, Tq)
    out["prev"] = mean(prev, live & prev_ok)
    self_ok = qpos < Tk
    out["self"] = mean(w[:, torch.arange(Tq), qpos.clamp(max=Tk - 1)], live & self_ok)
    return out


def label_head(row: dict, rules: Sequence[Rule] = RULES) -> tuple[list[str], list[str]]:
    """(labels, reasons) of one head from its statistics (and '<metric>_uniform' values).

    Rules are tried in order; a missing or NaN statistic passes no rule, and a rule with
    ``over_uniform`` needs the metric's '<metric>_uniform' value.

    Args:
        row: the head's statistics, metric name -> value.
        rules: the rules to try.

    Returns:
        The labels given, and one reason per label naming the numbers and thresholds.

    Examples:
        >>> label_head({"prev": 0.9})
        (['previous-token head'], ['previous-token head: prev 0.90 >= 0.50'])
    """
    labels, why = [], []
    for rule in rules:
        value = row.get(rule.metric)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        if any(u in labels for u in rule.unless) or value < rule.threshold:
            continue
        reason = f"{rule.metric} {value:.2f} >= {rule.threshold:.2f}"
        if rule.over_uniform is not None:
            base = row.get(f"{rule.metric}_uniform")
            if base is None or math.isnan(base) or value < rule.over_uniform * base:
                continue
            reason += f" and >= {rule.over_uniform:g} x uniform {base:.2f}"
        labels.append(rule.label)
        why.append(f"{rule.label}: {reason}")
    return labels, why


class HeadStats(list):
    """The rows of :func:`head_stats` (a plain list of dicts), remembering the maps they were
    computed from, so that Jupyter shows them in the viewer (``_repr_html_``, :meth:`show`).

    Args:
        rows: the rows, one dict per (layer, head).
        maps: one (H, Tq, Tk) map per layer.
        tokens: the key tokens, or None (the viewer shows positions).
        layers: the model layer index of each map.
        heads: the query heads of the maps (None: 0..H-1).

    Examples:
        >>> rows = head_stats(maps)
        >>> rows.show()
    """

    def __init__(
        self,
        rows: Sequence[dict] = (),
        maps: Sequence[Tensor] = (),
        tokens: Sequence[str] | None = None,
        layers: Sequence[int] = (),
        heads: Sequence[int] | None = None,
    ) -> None:
        super().__init__(rows)
        self.maps = list(maps)  # one (H, Tq, Tk) map per layer
        self.tokens = None if tokens is None else list(tokens)
        self.layers = list(layers)
        self.heads = None if heads is None else list(heads)

    def viewer_page(self, title: str = "") -> str:
        """The viewer page of the maps, opened on its head statistics table.

        Args:
            title: the page's title.

        Raises:
            ValueError: the statistics hold no maps.

        Examples:
            >>> page = head_stats(maps).viewer_page(title="layer 0")
        """
        from attnkit.inspect.html import render_viewer

        if not self.maps:
            raise ValueError("these statistics hold no maps to show; compute them with head_stats")
        n = self.maps[0].shape[-1]
        tokens = self.tokens if self.tokens is not None else [str(i) for i in range(n)]
        heads = self.heads if self.heads is not None else list(range(self.maps[0].shape[0]))
        return render_viewer(tokens, self.maps, self.layers, heads, stats=list(self), title=title)

    def _repr_html_(self) -> str:
        """Jupyter's rich display: the viewer inside an ``<iframe srcdoc>``."""
        from attnkit.inspect.display import viewer_iframe

        return viewer_iframe(self.viewer_page())

    def show(self, title: str = "", height: int = 640) -> None:
        """Display the viewer inline in Jupyter (needs IPython).

        Args:
            title: the page's title.
            height: the iframe's height in CSS pixels.

        Raises:
            ImportError: IPython is not installed.

        Examples:
            >>> head_stats(maps).show()
        """
        from attnkit.inspect.display import show_html, viewer_iframe

        show_html(viewer_iframe(self.viewer_page(title), height))


def head_stats(
    weights: AttentionMaps | Sequence[Tensor],
    tokens: Sequence[str] | None = None,
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    batch: int = 0,
    rules: Sequence[Rule] = RULES,
) -> HeadStats:
    """One row per (layer, head): its statistics (see the module docstring), ``labels`` and
    ``why`` (the numbers and thresholds behind each label, '; '-separated).

    Args:
        weights: an :class:`~attnkit.inspect.capture.AttentionMaps` (its ``tokens``, ``layers``
            and ``heads`` are used unless given; ``batch`` picks the sequence), or a list of
            (H, Tq, Tk) maps, one per layer.
        tokens: the Tk key tokens, for the token-kind masses (else those are None).
        layers: the model layer index of each map (default 0..).
        heads: the head index of each map's H heads (default 0..H-1).
        batch: the batch element of an AttentionMaps.
        rules: the labelling rules (:func:`label_head`).

    Returns:
        The rows, ``{"layer", "head", <metric>..., "labels", "why"}``, layer by layer.

    Raises:
        ValueError: no maps, a map that is not (H, Tq, Tk) of finite weights >= 0, or
            ``layers``, ``heads`` or ``tokens`` of the wrong length.

    Examples:
        >>> head_stats(maps)[0]["labels"]  # e.g. ['previous-token head']
    """
    from attnkit.inspect.capture import AttentionMaps

    if isinstance(weights, AttentionMaps):
        tokens = weights.tokens if tokens is None else tokens
        layers = weights.layers if layers is None else layers
        heads = weights.heads if heads is None else heads
        weights = weights.stacked(batch)
    if isinstance(weights, Tensor) or not isinstance(weights, Sequence) or not weights:
        raise ValueError(
            f"weights must be AttentionMaps or a non-empty list of (H, Tq, Tk) tensors, "
            f"got {type(weights).__name__}"
        )
    layers = list(range(len(weights))) if layers is None else list(layers)
    if len(layers) != len(weights):
        raise ValueError(
            f"layers has {len(layers)} entries for {len(weights)} maps; expected one per map"
        )
    rows = []
    for li, (layer, w) in enumerate(zip(layers, weights)):
        w = _check_map(w, f"weights[{li}]")
        H, _, Tk = w.shape
        hs = list(range(H)) if heads is None else list(heads)
        if len(hs) != H:
            raise ValueError(f"heads has {len(hs)} entries but weights[{li}] has {H} heads")
        if tokens is not None and len(tokens) != Tk:
            raise ValueError(f"tokens has {len(tokens)} entries; expected one per key ({Tk})")
        stats = _per_head(w, tokens)
        for hi, head in enumerate(hs):
            full = {name: float(v[hi]) for name, v in stats.items()}
            row: dict[str, Any] = {"layer": int(layer), "head": int(head)}
            for name in METRICS:
                row[name] = None if math.isnan(full[name]) else full[name]
            labels, why = label_head(full, rules)
            row["labels"] = labels
            row["why"] = "; ".join(why)
            rows.append(row)
    return HeadStats(rows, [_check_map(w, "weights") for w in weights], tokens, layers, heads)


# --------------------------------------------------------------------------------------------
# rollout and flow
# --------------------------------------------------------------------------------------------
def _layer_maps(weights: AttentionMaps | Sequence[Tensor], batch: int) -> list[Tensor]:
    from attnkit.inspect.capture import AttentionMaps

    if isinstance(weights, AttentionMaps):
        weights = weights.stacked(batch)
    if isinstance(weights, Tensor) or not isinstance(weights, Sequence) or not weights:
        raise ValueError(
            f"weights must be AttentionMaps or a non-empty list of (H, T, T) tensors "
            f"(one per layer, first layer first), got {type(weights).__name__}"
        )
    out: list[Tensor] = []
    for i, w in enumerate(weights):
        w = _check_map(w, f"weights[{i}]")
        if w.shape[1] != w.shape[2] or (out and w.shape[1:] != out[0].shape[1:]):
            raise ValueError(
                f"weights[{i}] has shape {tuple(w.shape)}; expected (H, T, T) maps of one "
                f"length T for every layer"
            )
        out.append(w)
    return out


def residual_attention(w: Tensor, residual: float = 0.5) -> Tensor:
    """(H, T, T) -> (T, T): residual * I + (1 - residual) * mean over heads, rows summing to 1.

    Args:
        w: (H, T, T) weights of one layer.
        residual: the weight of the identity (the residual connection).

    Examples:
        >>> residual_attention(torch.full((2, 2, 2), 0.5))
        tensor([[0.7500, 0.2500],
                [0.2500, 0.7500]])
    """
    a = w.mean(0)
    a = residual * torch.eye(a.shape[0], dtype=a.dtype) + (1.0 - residual) * a
    return a / a.sum(-1, keepdim=True)


def rollout(
    weights: AttentionMaps | Sequence[Tensor], residual: float = 0.5, batch: int = 0
) -> Tensor:
    """Attention rollout (T, T) float32: row i is how much output token i draws on input token j.

    Args:
        weights: AttentionMaps (all heads of consecutive layers, first layer first) or a list of
            (H, T, T) maps, one per layer.
        residual: the weight of the identity mixed into each layer (:func:`residual_attention`),
            in [0, 1].
        batch: the batch element of an AttentionMaps.

    Raises:
        ValueError: ``residual`` outside [0, 1], no maps, or maps that are not (H, T, T) of
            one T.

    Examples:
        >>> rollout(maps)[-1]  # what the last token draws on each input token
    """
    residual = in_range("residual", residual, 0.0, 1.0, high_open=False)
    maps = _layer_maps(weights, batch)  # not empty
    r = residual_attention(maps[0], residual)
    for w in maps[1:]:
        r = residual_attention(w, residual) @ r
    return r.to(torch.float32)


def max_flow(capacity: Any, source: int, sink: int) -> float:
    """Maximum flow from ``source`` to ``sink`` in the graph whose (V, V) ``capacity`` matrix holds
    the capacity of edge u -> v at [u, v] (Dinic's algorithm).

    Args:
        capacity: (V, V) finite capacities >= 0 (a tensor, an array or nested lists).
        source: the source node index.
        sink: the sink node index, not ``source``.

    Raises:
        ValueError: a capacity matrix that is not square or holds a negative or non-finite
            value, a node index outside [0, V), or ``source == sink``.

    Examples:
        >>> max_flow([[0, 2, 1], [0, 0, 1], [0, 0, 0]], 0, 2)
        2.0
    """
    cap = np.array(
        capacity.detach().cpu() if isinstance(capacity, Tensor) else capacity, dtype=np.float64
    )
    if cap.ndim != 2 or cap.shape[0] != cap.shape[1]:
        raise ValueError(f"capacity must be a square (V, V) matrix, got shape {cap.shape}")
    if not np.isfinite(cap).all() or (cap < 0).any():
        raise ValueError("capacity must hold finite values >= 0")
    V = cap.shape[0]
    for name, node in (("source", source), ("sink", sink)):
        node = int(node) if isinstance(node, np.integer) else node
        int_in(name, node, 0, V - 1, f"a node index in [0, {V})")
    if source == sink:
        raise ValueError(f"source and sink must differ, got both {source}")
    eps = 1e-12
    # Dinic: a breadth-first level graph, then augmenting paths along it (depth-first, each
    # node's edge pointer only moving forward) until it is blocked; repeat
    res = cap.tolist()  # residual capacities, python floats
    adj = [np.flatnonzero((cap[u] > 0) | (cap[:, u] > 0)).tolist() for u in range(V)]
    total = 0.0
    while True:
        level = [-1] * V
        level[source] = 0
        queue = [source]
        for u in queue:
            for v in adj[u]:
                if level[v] < 0 and res[u][v] > eps:
                    level[v] = level[u] + 1
                    queue.append(v)
        if level[sink] < 0:
            return total
        pointer = [0] * V
        while True:
            pushed = _augment(res, adj, level, pointer, source, sink, eps)
            if pushed <= 0.0:
                break
            total += pushed


def _augment(res, adj, level, pointer, source, sink, eps) -> float:
    """One augmenting path along the level graph; pushes its bottleneck and returns it (0.0
    when the level graph is blocked)."""
    path = [source]
    while path:
        u = path[-1]
        if u == sink:
            push = min(res[a][b] for a, b in zip(path, path[1:]))
            for a, b in zip(path, path[1:]):
                res[a][b] -= push
                res[b][a] += push
            return push
        nbrs = adj[u]
        while pointer[u] < len(nbrs):
            v = nbrs[pointer[u]]
            if level[v] == level[u] + 1 and res[u][v] > eps:
                path.append(v)
                break
            pointer[u] += 1
        else:
            level[u] = -1  # dead end: never entered again in this phase
            path.pop()
            if path:
                pointer[path[-1]] += 1
    return 0.0


def attention_flow(
    weights: AttentionMaps | Sequence[Tensor],
    residual: float = 0.5,
    batch: int = 0,
    max_tokens: int = FLOW_MAX_TOKENS,
    max_nodes: int = FLOW_MAX_NODES,
) -> Tensor:
    """Attention flow (T, T) float32: [i, j] is the maximum flow from input token j to output
    token i through the layered graph of the residual-mixed maps (see the module docstring).

    One max-flow per (i, j) pair: small inputs only.

    Args:
        weights: AttentionMaps (all heads of consecutive layers, first layer first) or a list of
            (H, T, T) maps, one per layer.
        residual: the weight of the identity mixed into each layer, in [0, 1].
        batch: the batch element of an AttentionMaps.
        max_tokens: the most tokens T allowed.
        max_nodes: the most graph nodes, (layers + 1) * T, allowed.

    Raises:
        ValueError: more than ``max_tokens`` tokens or ``max_nodes`` nodes, or bad maps or
            ``residual`` (as :func:`rollout`).

    Examples:
        >>> attention_flow(maps).shape  # (T, T) for T <= 32 tokens
    """
    residual = in_range("residual", residual, 0.0, 1.0, high_open=False)
    maps = _layer_maps(weights, batch)
    L, T = len(maps), maps[0].shape[-1]
    nodes = (L + 1) * T
    if T > max_tokens or nodes > max_nodes:
        raise ValueError(
            f"attention flow of {T} tokens over {L} layers needs a graph of {nodes} nodes "
            f"and {T * T} max-flow runs; expected at most {max_tokens} tokens and "
            f"{max_nodes} nodes (use rollout for longer inputs)"
        )
    cap = np.zeros((nodes, nodes))
    for layer, w in enumerate(maps):
        a = residual_attention(w, residual).numpy()  # (T, T): output i <- input j
        # node of (layer l, token j) is l * T + j; edge (l, j) -> (l + 1, i) has capacity a[i, j]
        cap[layer * T : (layer + 1) * T, (layer + 1) * T : (layer + 2) * T] = a.T
    flow = torch.zeros(T, T, dtype=torch.float64)
    for i in range(T):
        for j in range(T):
            flow[i, j] = max_flow(cap, j, L * T + i)
    return flow.to(torch.float32)
