"""Capture attention maps from any attnkit model, whatever backend or variant it runs on.

    >>> with capture(model, layers=[0, 3], heads=None, top_k=None) as maps:
    ...     model(input_ids)
    >>> maps.weights[0].shape        # (B, H, Tq, Tk) for layer maps.layers[0]

Each :class:`~attnkit.attention.module.MultiHeadAttention` of the model is a layer, numbered in
module order (block 0's attention is layer 0). While the context is open, the kernel of every
captured layer is wrapped in a recording kernel (:mod:`attnkit.attention.recording`), which
hands the q and k the kernel receives (after RoPE, with the KV cache prepended) and the masks to
this module, which recomputes the weights from them in float32 (float64 for float64 models):
softmax(q k^T / sqrt(D) + ALiBi) over the keys the layer may see (causal, sliding window, key
padding, packed documents, a user mask). The forward pass itself is untouched: the fast kernel
(SDPA, FlexAttention, windowed) still produces the layer's output.

Approximate variants report the weights they actually use:

* ``local`` and ``bigbird`` are exact softmax attention on a fixed pattern; the weights are
  that softmax under the variant's ``dense_mask`` (and the key padding);
* ``lsh`` attends, for each query, to the union of the keys that share its chunk or the chunk
  before in some hash round (never itself unless nothing else is left); the weights are the
  softmax of the shared-QK scores over that union, and the hash buckets are kept in
  ``maps.info``;
* ``linear`` and ``performer`` never form weights (they multiply feature maps, with no softmax
  over keys), so capturing them raises ``ValueError`` with that reason
  (:func:`unavailable_layers` says which layers these are without raising).

Memory: only the requested layers and heads are computed; the score matrix is processed a block
of query rows at a time, and with ``top_k`` only the ``top_k`` largest weights of each row are
kept (a sparse COO tensor per layer, plus the values and key indices as dense tensors), so a long
input never holds a (B, H, T, T) map.

If a layer runs more than once inside the context (a KV-cached decoding loop), the maps of its
last call are kept; ``maps.calls`` counts the calls per captured layer. Weights are those
before attention dropout (dropout is off in eval mode).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from attnkit.attention.kernel import AttentionKernel, ExactKernel
from attnkit.attention.masks import MaskSpec
from attnkit.attention.module import MultiHeadAttention
from attnkit.attention.recording import (
    AttentionCall,
    RecordingKernel,
    attention_layers,
    is_recording,
    recording,
)
from attnkit.attention.variants import FeatureMapAttention, LSHAttention, VariantAttention
from attnkit.positional import alibi_slopes

__all__ = [
    "AttentionMaps",
    "capture",
    "attention_layers",
    "unavailable_layers",
    "layer_weights",
    "capture_overhead",
]

# scores per block of query rows (B * H * rows * Tk); bounds the memory of one recomputation
ROW_BLOCK_SCORES = 1 << 22


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
        """Position of model layer ``layer`` in ``weights``."""
        if layer not in self.layers:
            raise ValueError(f"layer {layer!r} was not captured; captured layers: {self.layers}")
        return self.layers.index(layer)

    def dense(self, layer: int) -> Tensor:
        """(B, H, Tq, Tk) dense weights of model layer ``layer`` (zeros where top-k dropped)."""
        w = self.weights[self.index(layer)]
        if w is None:
            raise ValueError(
                f"layer {layer} was captured but did not run inside the capture context"
            )
        return w.to_dense() if w.is_sparse else w

    def stacked(self, batch: int = 0) -> list[Tensor]:
        """Dense (H, Tq, Tk) maps of one batch element, one per captured layer."""
        out = []
        for layer in self.layers:
            w = self.dense(layer)
            if not 0 <= batch < w.shape[0]:
                raise ValueError(f"batch index {batch!r} is outside [0, {w.shape[0]})")
            out.append(w[batch])
        return out


# --------------------------------------------------------------------------------------------
# the model's layers
# --------------------------------------------------------------------------------------------
def _unwrap(model: Any) -> nn.Module:
    """The model itself, or the model inside an Encoder (its ``model``)."""
    if isinstance(model, nn.Module):
        return model
    try:
        inner = model.model  # an Encoder
    except AttributeError:
        inner = None
    if isinstance(inner, nn.Module):
        return inner
    raise ValueError(
        f"model must be an attnkit model (torch.nn.Module) or an Encoder, got "
        f"{type(model).__name__}"
    )


def _kernel(layer: MultiHeadAttention) -> AttentionKernel:
    """The layer's kernel, under any recording wrappers."""
    kernel = layer.kernel
    while isinstance(kernel, RecordingKernel):
        kernel = kernel.inner
    return kernel


def _unavailable_reason(layer: MultiHeadAttention) -> str | None:
    kernel = _kernel(layer)
    if isinstance(kernel, (ExactKernel, LSHAttention)) or hasattr(kernel, "dense_mask"):
        return None
    if isinstance(kernel, FeatureMapAttention):
        return (
            f"variant {kernel.name!r} ({kernel.description}) forms no attention weights: it "
            f"multiplies feature maps phi(q) (phi(k)^T v) and never takes a softmax over keys"
        )
    what = kernel.description if isinstance(kernel, VariantAttention) else "not exact attention"
    return (
        f"kernel {kernel.name!r} ({what}) has no softmax weights this module can recompute; "
        f"expected exact attention or a variant with a dense_mask or LSH buckets"
    )


def unavailable_layers(model: Any) -> dict[int, str]:
    """Layers whose attention has no weights to capture (linear, performer), with the reason."""
    out = {}
    for i, layer in enumerate(attention_layers(_unwrap(model))):
        reason = _unavailable_reason(layer)
        if reason is not None:
            out[i] = reason
    return out


def _index_list(name: str, values, limit: int, what: str) -> list[int] | None:
    if values is None:
        return None
    if isinstance(values, (int, str)) or not isinstance(values, Sequence):
        if isinstance(values, int) and not isinstance(values, bool):
            values = [values]
        else:
            raise ValueError(
                f"{name} must be a list of {what} indices in [0, {limit}) or None, got {values!r}"
            )
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < limit:
            raise ValueError(f"{name} holds {v!r}; expected {what} indices in [0, {limit})")
        if v in out:
            raise ValueError(f"{name} holds {v} twice; expected distinct {what} indices")
        out.append(v)
    if not out:
        raise ValueError(f"{name} is empty; expected at least one {what} index (or None for all)")
    return out


# --------------------------------------------------------------------------------------------
# recomputing the weights
# --------------------------------------------------------------------------------------------
def _softmax_rows(scores: Tensor, allowed: Tensor | None) -> Tensor:
    """Softmax over the last dim; rows with no allowed key give zeros."""
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    top = scores.amax(-1, keepdim=True)
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    p = torch.exp(scores - top)
    den = p.sum(-1, keepdim=True)
    return p / torch.where(den > 0, den, torch.ones_like(den))


def _row_slice(t: Tensor | None, r0: int, r1: int, heads: Tensor | None) -> Tensor | None:
    """A mask broadcastable to (B, H, Tq, Tk) restricted to query rows r0:r1 and ``heads``."""
    if t is None:
        return None
    t4 = t.reshape((1,) * (4 - t.dim()) + tuple(t.shape))
    if heads is not None and t4.shape[1] != 1:
        t4 = t4.index_select(1, heads)
    if t4.shape[2] != 1:
        t4 = t4[:, :, r0:r1]
    return t4


def layer_weights(
    q: Tensor,
    k: Tensor,
    *,
    causal: bool = False,
    window: int | None = None,
    alibi: bool = False,
    valid_key_mask: Tensor | None = None,
    document_ids: Tensor | None = None,
    mask: Tensor | None = None,
    heads: Sequence[int] | None = None,
    top_k: int | None = None,
    scale: float | None = None,
):
    """Softmax attention weights for q (B, H, Tq, D), k (B, Hkv, Tk, D) under the given masks,
    with the conventions of :func:`attnkit.attention.attention` (queries are the last Tq of the
    Tk positions; ALiBi slopes of H heads). ``heads`` selects query heads.

    Returns (B, H', Tq, Tk) float32 (float64 for float64 inputs), or with ``top_k`` the pair
    (values, indices), each (B, H', Tq, min(top_k, Tk)), largest first. Computed a block of query
    rows at a time (at most ``ROW_BLOCK_SCORES`` scores alive).
    """
    B, H, Tq, D = q.shape
    Hkv, Tk = k.shape[1], k.shape[2]
    rep = H // Hkv
    head_idx = (
        torch.arange(H, device=q.device)
        if heads is None
        else torch.as_tensor(list(heads), dtype=torch.long, device=q.device)
    )
    ct = torch.float64 if q.dtype == torch.float64 else torch.float32
    qs = q.index_select(1, head_idx).to(ct)  # (B, H', Tq, D)
    ks = k.index_select(1, head_idx // rep).to(ct)  # (B, H', Tk, D)
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    spec = MaskSpec(q_len=Tq, k_len=Tk, causal=causal, window=window)
    slopes = (
        alibi_slopes(H).to(device=q.device, dtype=ct).index_select(0, head_idx) if alibi else None
    )
    k_pos = torch.arange(Tk, device=q.device)
    Hs = qs.shape[1]
    rows = max(1, ROW_BLOCK_SCORES // max(1, B * Hs * Tk))
    outs, vals, idxs = [], [], []
    kt = ks.transpose(-2, -1)  # (B, H', D, Tk)
    for r0 in range(0, Tq, rows):
        r1 = min(Tq, r0 + rows)
        scores = torch.matmul(qs[:, :, r0:r1], kt) * scale  # (B, H', r, Tk)
        q_pos = torch.arange(r0, r1, device=q.device)
        if slopes is not None:
            dist = (q_pos[:, None] + spec.offset - k_pos[None, :]).abs().to(ct)  # (r, Tk)
            scores = scores - slopes[:, None, None] * dist
        allowed = spec.positional(q_pos[:, None], k_pos[None, :])  # (r, Tk) or None
        if allowed is not None:
            allowed = allowed[None, None]
        if valid_key_mask is not None:
            vkm = valid_key_mask[:, None, None, :]  # (B, 1, 1, Tk)
            allowed = vkm if allowed is None else allowed & vkm
        if document_ids is not None:
            same = (
                document_ids[:, spec.offset + r0 : spec.offset + r1, None]
                == document_ids[:, None, :]
            )[:, None]  # (B, 1, r, Tk)
            allowed = same if allowed is None else allowed & same
        user = _row_slice(mask, r0, r1, head_idx if heads is not None else None)
        if user is not None:
            allowed = user if allowed is None else allowed & user
        w = _softmax_rows(scores, allowed)  # (B, H', r, Tk)
        if top_k is None:
            outs.append(w)
        else:
            v, i = torch.topk(w, min(top_k, Tk), dim=-1)
            vals.append(v)
            idxs.append(i)
    if top_k is None:
        return torch.cat(outs, dim=2)
    return torch.cat(vals, dim=2), torch.cat(idxs, dim=2)


def _lsh_weights(
    var: LSHAttention,
    q: Tensor,
    valid_key_mask: Tensor | None,
    causal: bool,
    head_idx: Tensor,
    top_k: int | None,
):
    """The weights LSH attention uses: shared-QK softmax over the union of the keys each query
    sees in any hash round. Returns (weights or (values, indices), buckets (B, H', nh, T))."""
    B, _, T, D = q.shape
    qs = q.index_select(1, head_idx)  # (B, H', T, D), the model's dtype (as the variant hashes)
    Hs = qs.shape[1]
    n_buckets = var.buckets_for(T)
    C = min(var.chunk_size, T)
    Tp = math.ceil(T / C) * C
    buckets = var.hash(qs.reshape(B * Hs, T, D), n_buckets)  # (N, nh, T)
    padded = torch.nn.functional.pad(buckets, (0, Tp - T), value=n_buckets)
    perm = torch.sort(padded, dim=-1, stable=True).indices  # (N, nh, Tp) sorted slot -> position
    rank = torch.empty_like(perm).scatter_(
        -1, perm, torch.arange(Tp, device=q.device).expand_as(perm)
    )
    chunk = rank[..., :T] // C  # (N, nh, T) chunk of every position in every round
    seen = torch.zeros(B * Hs, T, T, dtype=torch.bool, device=q.device)  # (N, Tq, Tk)
    for r in range(chunk.shape[1]):
        cq, ck = chunk[:, r, :, None], chunk[:, r, None, :]
        seen |= (ck == cq) | (ck == cq - 1)
    pos = torch.arange(T, device=q.device)
    seen &= (pos[None, :] < pos[:, None]) if causal else (pos[None, :] != pos[:, None])
    seen = seen.view(B, Hs, T, T)
    if valid_key_mask is not None:
        seen &= valid_key_mask[:, None, None, :]
    ct = torch.float64 if q.dtype == torch.float64 else torch.float32
    x = qs.to(ct)
    keys = torch.nn.functional.normalize(x, dim=-1)
    scores = torch.matmul(x, keys.transpose(-2, -1)) / math.sqrt(D)  # (B, H', T, T)
    w = _softmax_rows(scores, seen)
    # a real query that sees no other key attends to itself
    alone = ~seen.any(-1)  # (B, H', T)
    if valid_key_mask is not None:
        alone &= valid_key_mask[:, None, :]
    eye = torch.eye(T, dtype=ct, device=q.device)
    w = torch.where(alone[..., None], eye, w)
    buckets = buckets.view(B, Hs, -1, T)
    if top_k is None:
        return w, buckets
    return torch.topk(w, min(top_k, T), dim=-1), buckets


def _to_sparse(values: Tensor, indices: Tensor, tk: int) -> Tensor:
    """(B, H, Tq, k) values and key indices -> sparse COO (B, H, Tq, Tk)."""
    B, H, Tq, kk = values.shape
    grid = torch.meshgrid(
        *(torch.arange(n, device=values.device) for n in (B, H, Tq, kk)), indexing="ij"
    )
    idx = torch.stack(
        [grid[0].reshape(-1), grid[1].reshape(-1), grid[2].reshape(-1), indices.reshape(-1)]
    )
    return torch.sparse_coo_tensor(
        idx, values.reshape(-1), (B, H, Tq, tk), check_invariants=False
    ).coalesce()


class _Recorder:
    """Turns the kernel calls of one captured layer into its entry of ``maps``."""

    def __init__(self, maps: AttentionMaps, slot: int, heads: list[int] | None):
        self.maps, self.slot, self.heads = maps, slot, heads

    @torch.no_grad()
    def __call__(self, call: AttentionCall) -> None:
        maps, i = self.maps, self.slot
        q, k = call.q.detach(), call.k.detach()
        head_idx = (
            torch.arange(q.shape[1], device=q.device)
            if self.heads is None
            else torch.as_tensor(self.heads, dtype=torch.long, device=q.device)
        )
        kernel = call.kernel
        while isinstance(kernel, RecordingKernel):
            kernel = kernel.inner
        info: dict = {}
        if isinstance(kernel, ExactKernel):
            res = layer_weights(
                q,
                k,
                causal=call.causal,
                window=call.window,
                alibi=call.alibi,
                valid_key_mask=call.valid_key_mask,
                document_ids=call.document_ids,
                mask=call.mask,
                heads=self.heads,
                top_k=maps.top_k,
            )
            source = "exact"
        elif isinstance(kernel, LSHAttention):
            res, info["buckets"] = _lsh_weights(
                kernel, q, call.valid_key_mask, call.causal, head_idx, maps.top_k
            )
            source = "lsh"
        elif callable(dense_mask := getattr(kernel, "dense_mask", None)):
            T = q.shape[2]
            pattern = dense_mask(T, call.causal, device=q.device)  # (T, T)
            rep = q.shape[1] // k.shape[1]
            res = layer_weights(
                q,
                k.repeat_interleave(rep, dim=1),
                valid_key_mask=call.valid_key_mask,
                mask=pattern,
                heads=self.heads,
                top_k=maps.top_k,
            )
            source = kernel.name
        else:  # pragma: no cover - refused when the context opens
            raise ValueError(f"kernel {kernel.name!r} has no attention weights to capture")
        maps.sources[i] = source
        maps.info[i] = info
        maps.calls[i] += 1
        if maps.top_k is None:
            maps.weights[i] = res
        else:
            values, indices = res
            maps.topk_values[i], maps.topk_indices[i] = values, indices
            maps.weights[i] = _to_sparse(values, indices, k.shape[2])


@contextlib.contextmanager
def capture(
    model: Any,
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    top_k: int | None = None,
    tokens: Sequence[str] | None = None,
) -> Iterator[AttentionMaps]:
    """Record the attention weights of ``layers`` (default all) and ``heads`` (default all) of
    ``model`` during the forward passes run inside the context. See the module docstring."""
    all_layers = attention_layers(_unwrap(model))
    layer_ids = _index_list("layers", layers, len(all_layers), "layer")
    if layer_ids is None:
        layer_ids = list(range(len(all_layers)))
    n_heads = {all_layers[i].n_heads for i in layer_ids}
    head_ids = _index_list("heads", heads, min(n_heads), "head")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(
            f"top_k must be a positive int (weights kept per query row) or None, got {top_k!r}"
        )
    if tokens is not None:
        if isinstance(tokens, str) or not all(isinstance(t, str) for t in tokens):
            raise ValueError(f"tokens must be a list of str, got {tokens!r:.80}")
        tokens = list(tokens)
    for i in layer_ids:
        reason = _unavailable_reason(all_layers[i])
        if reason is not None:
            raise ValueError(f"layer {i} has no attention weights to capture: {reason}")
        if is_recording(all_layers[i]):
            raise ValueError(
                f"layer {i} is already being captured; nested capture() of the same "
                f"layer is not supported"
            )
    maps = AttentionMaps(
        layers=layer_ids,
        heads=head_ids if head_ids is not None else list(range(min(n_heads))),
        tokens=tokens,
        top_k=top_k,
    )
    recorders = [_Recorder(maps, slot, head_ids) for slot in range(len(layer_ids))]
    with recording([all_layers[i] for i in layer_ids], lambda slot, call: recorders[slot](call)):
        yield maps


# --------------------------------------------------------------------------------------------
# overhead
# --------------------------------------------------------------------------------------------
def capture_overhead(model: Any, *args, rounds: int = 7, **kwargs) -> dict:
    """Time ``model(*args, **kwargs)`` plain and inside ``capture(model)`` (all layers, all
    heads), interleaved, ``rounds`` times each after one warm-up, under ``torch.no_grad``.

    Returns {"plain_s", "capture_s" (best round of each), "ratio", "rounds"}.
    """
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"rounds must be a positive int, got {rounds!r}")
    net = _unwrap(model)

    def plain() -> float:
        t0 = time.perf_counter()
        net(*args, **kwargs)
        return time.perf_counter() - t0

    def captured() -> float:
        t0 = time.perf_counter()
        with capture(net):
            net(*args, **kwargs)
        return time.perf_counter() - t0

    with torch.no_grad():
        plain(), captured()  # warm-up
        p, c = [], []
        for _ in range(rounds):
            p.append(plain())
            c.append(captured())
    best_p, best_c = min(p), min(c)
    return {"plain_s": best_p, "capture_s": best_c, "ratio": best_c / best_p, "rounds": rounds}
