"""Kernelised (linear) attention o_i = phi(q_i) . S / phi(q_i) . z in bounded memory.

Non-causal: S = sum_j phi(k_j) v_j^T and z = sum_j phi(k_j) over all real keys.
Causal: S and z are prefix sums over j <= i. They are computed chunk by chunk: inside a chunk of
``chunk`` tokens the contribution is the small quadratic form (phi(Q_c) phi(K_c)^T, lower
triangle) V_c, and the chunks before it enter through the carried state (S, z). So memory
never grows with T^2 and the (T, m) feature matrices are never held all at once: the sequence
is processed in groups of several chunks, each group under activation checkpointing when
gradients are needed.

Feature maps with exponentials (FAVOR+) hand back, with the key features, the log of the factor
they divided out for stability. The state is kept relative to the running maximum of those
factors, so the stabiliser only ever uses keys at or before the current position.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

# query_features(x) -> phi: (..., t, m); key_features(x, valid) -> (phi, log_scale or None)
QueryFeatures = Callable[[Tensor], Tensor]
KeyFeatures = Callable[[Tensor, Optional[Tensor]], tuple[Tensor, Optional[Tensor]]]
# key_features must return exactly zero features for padded keys (valid False).


def _finish(acc: Tensor) -> Tensor:
    """(..., Dv + 1) [numerator, denominator] -> numerator / denominator; a row with no key
    at all (denominator 0) gives 0 with finite gradients."""
    num, den = acc[..., :-1], acc[..., -1:]
    return num / torch.where(den > 0, den, torch.ones_like(den))


def _scales(ref: Optional[Tensor], log_scale: Optional[Tensor]):
    """Factors that bring the carried state (relative to exp(ref)) and this group's key
    features (relative to exp(log_scale)) to the new common reference. None = factor 1."""
    if log_scale is None:
        return None, None, ref
    new_ref = log_scale if ref is None else torch.maximum(ref, log_scale)  # (N,)
    safe = torch.where(torch.isfinite(new_ref), new_ref, torch.zeros_like(new_ref))
    a = None if ref is None else torch.exp(ref - safe)  # (N,); exp(-inf) = 0 for an empty state
    own = torch.where(torch.isfinite(log_scale), log_scale - safe, torch.zeros_like(log_scale))
    return a, torch.exp(own), new_ref


def _scaled(x: Tensor, f: Optional[Tensor]) -> Tensor:
    return x if f is None else x * f.view((-1,) + (1,) * (x.dim() - 1))


def _with_ones(v: Tensor) -> Tensor:
    """Append a ones column: one matmul then yields numerator and denominator together."""
    return torch.cat([v, torch.ones_like(v[..., :1])], -1)


def _causal_group(fq: QueryFeatures, fk: KeyFeatures, q, k, v, valid, Sz, ref):
    # q, k: (N, n, C, D); v: (N, n, C, Dv); valid: (N, n, C) or None;
    # Sz: (N, m, Dv + 1) carried [sum phi(k) v^T, sum phi(k)] of earlier groups, relative to exp(ref)
    pq = fq(q)  # (N, n, C, m)
    pk, log_scale = fk(k, valid)  # (N, n, C, m), padded keys are zero
    a, b, ref = _scales(ref, log_scale)
    v1 = _with_ones(v)  # (N, n, C, Dv+1)
    kv = _scaled(torch.matmul(pk.transpose(-1, -2), v1), b)  # (N, n, m, Dv+1) per chunk
    if Sz is not None:
        kv = torch.cat([_scaled(Sz, a).unsqueeze(1), kv], 1)  # (N, n+1, m, Dv+1)
    else:
        kv = torch.cat([torch.zeros_like(kv[:, :1]), kv], 1)
    prefix = kv.cumsum(1)  # prefix[c]: everything before chunk c; prefix[n]: the new state
    A = torch.matmul(pq, pk.transpose(-1, -2)).tril_()  # (N, n, C, C) within-chunk, causal
    acc = _scaled(torch.matmul(A, v1), b) + torch.matmul(pq, prefix[:, :-1])  # (N, n, C, Dv+1)
    return _finish(acc), prefix[:, -1], ref


def _key_group(fk: KeyFeatures, k, v, valid, Sz, ref):
    # k: (N, t, D); v: (N, t, Dv); valid: (N, t) or None
    pk, log_scale = fk(k, valid)  # (N, t, m)
    a, b, ref = _scales(ref, log_scale)
    kv = _scaled(torch.matmul(pk.transpose(-1, -2), _with_ones(v)), b)  # (N, m, Dv+1)
    return (kv if Sz is None else _scaled(Sz, a) + kv), ref


def _query_group(fq: QueryFeatures, q, Sz):
    return _finish(torch.matmul(fq(q), Sz))  # (N, t, Dv)


def _run(fn, *args, use_checkpoint: bool):
    if use_checkpoint:
        return checkpoint(fn, *args, use_reentrant=False, preserve_rng_state=False)
    return fn(*args)


def kernel_attention(fq: QueryFeatures, fk: KeyFeatures, q: Tensor, k: Tensor, v: Tensor,
                     key_valid: Optional[Tensor], causal: bool, chunk: int, group: int) -> Tensor:
    """Kernelised attention on (N, T, D) q, k and (N, T, Dv) v; returns (N, T, Dv).

    key_valid: (N, T) bool, False for padded keys, or None. chunk: tokens per causal chunk;
    group: tokens per checkpointed step (a multiple of chunk is used).
    """
    N, T, _ = q.shape
    use_ckpt = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    if not causal:
        # torch.split (one autograd node for all pieces) rather than slicing: the backward of
        # each slice would allocate a gradient of the full input.
        Sz = ref = None
        valids = [None] * len(range(0, T, group)) if key_valid is None else key_valid.split(group, 1)
        for kk, vv, valid in zip(k.split(group, 1), v.split(group, 1), valids):
            Sz, ref = _run(lambda kk, vv, s, r, va=valid: _key_group(fk, kk, vv, va, s, r),
                           kk, vv, Sz, ref, use_checkpoint=use_ckpt)
        outs = [_run(lambda qq, s: _query_group(fq, qq, s), qq, Sz, use_checkpoint=use_ckpt)
                for qq in q.split(group, 1)]
        return torch.cat(outs, 1)

    C = min(chunk, T)
    n_chunks = -(-T // C)
    pad = n_chunks * C - T
    if pad:
        q, k, v = (F.pad(x, (0, 0, 0, pad)) for x in (q, k, v))  # (N, Tp, *)
        if key_valid is None:
            key_valid = torch.ones(N, T, dtype=torch.bool, device=q.device)
        key_valid = F.pad(key_valid, (0, pad), value=False)  # (N, Tp)
    per_group = max(1, group // C)
    qc = q.reshape(N, n_chunks, C, q.shape[-1])  # (N, nC, C, D)
    kc = k.reshape(N, n_chunks, C, k.shape[-1])  # (N, nC, C, D)
    vc = v.reshape(N, n_chunks, C, v.shape[-1])  # (N, nC, C, Dv)
    vmask = None if key_valid is None else key_valid.view(N, n_chunks, C)  # (N, nC, C)
    pieces = [x.split(per_group, 1) for x in (qc, kc, vc)]
    valids = [None] * len(pieces[0]) if vmask is None else vmask.split(per_group, 1)
    Sz = ref = None
    outs = []
    for qq, kk, vv, valid in zip(*pieces, valids):
        o, Sz, ref = _run(lambda qq, kk, vv, s, r, va=valid: _causal_group(fq, fk, qq, kk, vv, va, s, r),
                          qq, kk, vv, Sz, ref, use_checkpoint=use_ckpt)
        outs.append(o)
    out = torch.cat(outs, 1).reshape(N, n_chunks * C, -1)  # (N, Tp, Dv)
    return out[:, :T]
