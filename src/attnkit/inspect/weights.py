"""Attention weights recomputed from a layer's q and k: the softmax over the keys each query
may see, a block of query rows at a time, optionally keeping only the top-k of each row.

:func:`layer_weights` follows the conventions of :func:`attnkit.attention.attention` (causal,
sliding window, ALiBi, key padding, packed documents, a user mask); :func:`lsh_weights` gives
the weights LSH attention uses (the union of the keys a query shares a chunk with in any hash
round); :func:`to_sparse` turns top-k values and indices into a sparse COO map. Computed in
float32 (float64 for float64 inputs). :mod:`attnkit.inspect.capture` calls these from inside
a forward pass.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from attnkit.attention.masks import MaskSpec
from attnkit.attention.variants import LSHAttention
from attnkit.positional import alibi_slopes

__all__ = ["ROW_BLOCK_SCORES", "layer_weights", "lsh_weights", "to_sparse"]

# scores per block of query rows (B * H * rows * Tk); bounds the memory of one recomputation
ROW_BLOCK_SCORES = 1 << 22


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
) -> Tensor | tuple[Tensor, Tensor]:
    """Softmax attention weights for q (B, H, Tq, D), k (B, Hkv, Tk, D) under the given masks,
    with the conventions of :func:`attnkit.attention.attention` (queries are the last Tq of the
    Tk positions; ALiBi slopes of H heads). ``heads`` selects query heads.

    Returns (B, H', Tq, Tk) float32 (float64 for float64 inputs), or with ``top_k`` the pair
    (values, indices), each (B, H', Tq, min(top_k, Tk)), largest first. Computed a block of query
    rows at a time (at most ``ROW_BLOCK_SCORES`` scores alive).

    Args:
        q: (B, H, Tq, D) queries.
        k: (B, Hkv, Tk, D) keys, H a multiple of Hkv.
        causal: query at position p sees keys 0..p.
        window: sliding window: each query sees the ``window`` most recent keys, itself
            included.
        alibi: subtract the ALiBi distance penalty of H heads.
        valid_key_mask: bool (B, Tk); True = real token, False = padding.
        document_ids: int (B, Tk); queries see only keys of their own document.
        mask: bool, broadcastable to (B, H, Tq, Tk); True = may attend.
        heads: the query heads to compute (None: all), giving H'.
        top_k: keep only the ``top_k`` largest weights of each row.
        scale: score scale, default 1/sqrt(D).

    Examples:
        >>> layer_weights(torch.randn(1, 4, 8, 16), torch.randn(1, 2, 8, 16), causal=True).shape
        torch.Size([1, 4, 8, 8])
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


def lsh_weights(
    var: LSHAttention,
    q: Tensor,
    valid_key_mask: Tensor | None,
    causal: bool,
    head_idx: Tensor,
    top_k: int | None,
) -> tuple[Tensor | tuple[Tensor, Tensor], Tensor]:
    """The weights LSH attention uses: shared-QK softmax over the union of the keys each query
    sees in any hash round (keys normalised, no query attends to itself unless it sees no
    other key).

    Args:
        var: the layer's LSH attention kernel (its hashing and chunk size).
        q: (B, H, T, D) shared queries and keys.
        valid_key_mask: bool (B, T); True = real token, False = padding; or None.
        causal: a query sees only earlier keys.
        head_idx: int (H',) indices of the heads computed.
        top_k: keep only the ``top_k`` largest weights of each row (None: dense).

    Returns:
        (weights (B, H', T, T), or (values, indices) each (B, H', T, min(top_k, T))), and the
        hash buckets (B, H', n_hashes, T).

    Examples:
        >>> w, buckets = lsh_weights(kernel, q, None, True, torch.arange(q.shape[1]), None)
    """
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


def to_sparse(values: Tensor, indices: Tensor, tk: int) -> Tensor:
    """(B, H, Tq, k) values and key indices -> sparse COO (B, H, Tq, Tk), coalesced.

    Args:
        values: (B, H, Tq, k) weights.
        indices: (B, H, Tq, k) key index of each weight.
        tk: the number of keys Tk.

    Examples:
        >>> values, indices = layer_weights(q, k, top_k=2)
        >>> to_sparse(values, indices, k.shape[2]).shape  # (B, H, Tq, Tk)
    """
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
