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


def _safe_div(num: Tensor, den: Tensor) -> Tensor:
    """num / den with den == 0 (no key at all) giving 0 and finite gradients."""
    den_safe = torch.where(den > 0, den, torch.ones_like(den))
    return num / den_safe.unsqueeze(-1)


def _rescale(S, z, ref, log_scale, phi_k):
    """Bring the state and this group's key features to a common reference scale.

    ``phi_k`` was divided by exp(log_scale) (or by 1 where log_scale is -inf: no real key in
    the group, phi_k is zero there); the state is relative to exp(ref).
    """
    if log_scale is None:
        return S, z, ref, phi_k
    new_ref = log_scale if ref is None else torch.maximum(ref, log_scale)  # (N,)
    safe = torch.where(torch.isfinite(new_ref), new_ref, torch.zeros_like(new_ref))
    if S is not None:
        a = torch.exp(ref - safe)  # (N,)
        S = S * a[:, None, None]
        z = z * a[:, None]
    shape = (-1,) + (1,) * (phi_k.dim() - 1)
    own = torch.where(torch.isfinite(log_scale), log_scale - safe, torch.zeros_like(log_scale))
    phi_k = phi_k * torch.exp(own).view(shape)
    return S, z, new_ref, phi_k


def _causal_group(fq: QueryFeatures, fk: KeyFeatures, q, k, v, valid, S, z, ref):
    # q, k: (N, n, C, D); v: (N, n, C, Dv); valid: (N, n, C) or None; S: (N, m, Dv); z: (N, m)
    pq = fq(q)  # (N, n, C, m)
    pk, log_scale = fk(k, valid)  # (N, n, C, m)
    if valid is not None:
        pk = pk * valid.unsqueeze(-1).to(pk.dtype)
    S, z, ref, pk = _rescale(S, z, ref, log_scale, pk)
    kv = torch.matmul(pk.transpose(-1, -2), v)  # (N, n, m, Dv) per-chunk sums
    ks = pk.sum(-2)  # (N, n, m)
    kv_cum = kv.cumsum(1)
    ks_cum = ks.cumsum(1)
    S_before = torch.cat([torch.zeros_like(kv[:, :1]), kv_cum[:, :-1]], 1)  # (N, n, m, Dv)
    z_before = torch.cat([torch.zeros_like(ks[:, :1]), ks_cum[:, :-1]], 1)  # (N, n, m)
    if S is not None:
        S_before = S_before + S[:, None]
        z_before = z_before + z[:, None]
    A = torch.matmul(pq, pk.transpose(-1, -2)).tril()  # (N, n, C, C)
    num = torch.matmul(pq, S_before) + torch.matmul(A, v)  # (N, n, C, Dv)
    den = torch.matmul(pq, z_before.unsqueeze(-1)).squeeze(-1) + A.sum(-1)  # (N, n, C)
    S_new = kv_cum[:, -1] if S is None else S + kv_cum[:, -1]
    z_new = ks_cum[:, -1] if z is None else z + ks_cum[:, -1]
    return _safe_div(num, den), S_new, z_new, ref


def _key_group(fk: KeyFeatures, k, v, valid, S, z, ref):
    # k: (N, t, D); v: (N, t, Dv); valid: (N, t) or None
    pk, log_scale = fk(k, valid)  # (N, t, m)
    if valid is not None:
        pk = pk * valid.unsqueeze(-1).to(pk.dtype)
    S, z, ref, pk = _rescale(S, z, ref, log_scale, pk)
    kv = torch.matmul(pk.transpose(-1, -2), v)  # (N, m, Dv)
    ks = pk.sum(-2)  # (N, m)
    return (kv if S is None else S + kv), (ks if z is None else z + ks), ref


def _query_group(fq: QueryFeatures, q, S, z):
    pq = fq(q)  # (N, t, m)
    num = torch.matmul(pq, S)  # (N, t, Dv)
    den = torch.matmul(pq, z.unsqueeze(-1)).squeeze(-1)  # (N, t)
    return _safe_div(num, den)


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
        S = z = ref = None
        valids = [None] * len(range(0, T, group)) if key_valid is None else key_valid.split(group, 1)
        for kk, vv, valid in zip(k.split(group, 1), v.split(group, 1), valids):
            S, z, ref = _run(lambda kk, vv, s, zz, r, va=valid: _key_group(fk, kk, vv, va, s, zz, r),
                             kk, vv, S, z, ref, use_checkpoint=use_ckpt)
        outs = [_run(lambda qq, s, zz: _query_group(fq, qq, s, zz), qq, S, z, use_checkpoint=use_ckpt)
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
    S = z = ref = None
    outs = []
    for qq, kk, vv, valid in zip(*pieces, valids):
        o, S, z, ref = _run(lambda qq, kk, vv, s, zz, r, va=valid: _causal_group(fq, fk, qq, kk, vv, va, s, zz, r),
                            qq, kk, vv, S, z, ref, use_checkpoint=use_ckpt)
        outs.append(o)
    out = torch.cat(outs, 1).reshape(N, n_chunks * C, -1)  # (N, Tp, Dv)
    return out[:, :T]
