"""Kernelised (linear) attention o_i = phi(q_i) . S / phi(q_i) . z in bounded memory.

Non-causal: S = sum_j phi(k_j) v_j^T and z = sum_j phi(k_j) over all real keys.
Causal: S and z are prefix sums over j <= i, computed chunk by chunk: inside a chunk of
``chunk`` tokens the contribution is the small quadratic form (phi(Q_c) phi(K_c)^T, lower
triangle) V_c, and the chunks before it enter through prefix sums of phi(K_c)^T V_c. So memory
never grows with T^2.

The sequence is processed in groups of several chunks, carrying (S, z) from group to group, and
the (T, m) feature matrices are never held all at once: the backward pass is written out by
hand and walks the groups in reverse, recomputing each group's features (and differentiating
only the feature maps with autograd). Only the inputs and the state entering every group are
kept between the passes.

Feature maps with exponentials (FAVOR+) hand back, with the key features, the log of the factor
they divided out for stability. The state is kept relative to the running maximum of those
factors, so the stabiliser only ever uses keys at or before the current position; the factors
are constants (no gradient flows through them), as the result does not depend on them.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

# query_features(x) -> phi: (..., t, m); key_features(x, valid) -> (phi, log_scale or None)
QueryFeatures = Callable[[Tensor], Tensor]
KeyFeatures = Callable[[Tensor, Tensor | None], tuple[Tensor, Tensor | None]]
# key_features must return exactly zero features for padded keys (valid False).


def _scales(ref: Tensor | None, log_scale: Tensor | None):
    """Factors that bring the carried state (relative to exp(ref)) and this group's key
    features (relative to exp(log_scale)) to the new common reference: (a, b, new_ref), each
    (N,) or None for a factor of 1."""
    if log_scale is None:
        return None, None, ref
    new_ref = log_scale if ref is None else torch.maximum(ref, log_scale)  # (N,)
    safe = torch.where(torch.isfinite(new_ref), new_ref, torch.zeros_like(new_ref))
    a = None if ref is None else torch.exp(ref - safe)  # exp(-inf) = 0 for an empty state
    own = torch.where(torch.isfinite(log_scale), log_scale - safe, torch.zeros_like(log_scale))
    return a, torch.exp(own), new_ref


def _scaled(x: Tensor, f: Tensor | None) -> Tensor:
    """x (..., N, r, c) times the per-row factor f (N,)."""
    return x if f is None else x * f.view(-1, 1, 1)


def _with_ones(v: Tensor) -> Tensor:
    """Append a ones column: one matmul then yields numerator and denominator together."""
    return torch.cat([v, torch.ones_like(v[..., :1])], -1)


def _finish(acc: Tensor) -> tuple[Tensor, Tensor]:
    """(..., Dv + 1) [numerator, denominator] -> (output, safe denominator); a row with no key
    (denominator 0) gives 0."""
    den = acc[..., -1:]
    den = torch.where(den > 0, den, torch.ones_like(den))
    return acc[..., :-1] / den, den


def _d_acc(d_out: Tensor, out: Tensor, acc: Tensor, den: Tensor) -> Tensor:
    """Gradient of _finish: (..., Dv) -> (..., Dv + 1)."""
    d_num = d_out / den
    d_den = -(d_num * out).sum(-1, keepdim=True)
    d_den = torch.where(acc[..., -1:] > 0, d_den, torch.zeros_like(d_den))
    return torch.cat([d_num, d_den], -1)


def _feature_grads(
    fq: QueryFeatures,
    fk: KeyFeatures,
    x_q: Tensor | None,
    d_pq: Tensor | None,
    x_k: Tensor | None,
    valid: Tensor | None,
    d_pk: Tensor | None,
):
    """Recompute the feature maps with autograd and pull d_phi back to the inputs."""
    outs, ins, grads = [], [], []
    with torch.enable_grad():
        if x_q is not None:
            xq = x_q.detach().requires_grad_(True)
            outs.append(fq(xq))
            ins.append(xq)
            grads.append(d_pq)
        if x_k is not None:
            xk = x_k.detach().requires_grad_(True)
            outs.append(fk(xk, valid)[0])
            ins.append(xk)
            grads.append(d_pk)
        return torch.autograd.grad(outs, ins, grads)


def _groups(n_chunks: int, per_group: int) -> list[tuple[int, int]]:
    return [(g0, min(n_chunks, g0 + per_group)) for g0 in range(0, n_chunks, per_group)]


class _CausalScan(torch.autograd.Function):
    """Chunk-major inputs, so that every group is a contiguous slice: q, k (nC, N, C, D);
    v (nC, N, C, Dv); valid (nC, N, C) or None. Returns (nC, N, C, Dv)."""

    @staticmethod
    def _group(pq, pk, v1, Sz, a, b):
        """acc (n, N, C, Dv+1) = [numerator, denominator] of the group's queries, and the state
        leaving the group (N, m, Dv+1); also the state before each chunk (n, N, m, Dv+1)."""
        kv = _scaled(torch.matmul(pk.transpose(-1, -2), v1), b)  # (n, N, m, Dv+1) per chunk
        first = torch.zeros_like(kv[:1]) if Sz is None else _scaled(Sz, a).unsqueeze(0)
        before = torch.cat([first, kv[:-1]], 0).cumsum_(0)  # (n, N, m, Dv+1) state before chunk c
        A = torch.matmul(pq, pk.transpose(-1, -2)).tril_()  # (n, N, C, C) within-chunk, causal
        acc = _scaled(torch.matmul(A, v1), b).add_(torch.matmul(pq, before))
        return acc, before[-1] + kv[-1], before, kv, A

    @staticmethod
    def forward(ctx, q, k, v, valid, fq, fk, per_group):
        groups = _groups(q.shape[0], per_group)
        out = torch.empty_like(v)  # in v's memory order: position-major when v is a view
        Sz = ref = None
        keep = any(ctx.needs_input_grad[:3])
        states = []  # (state entering the group, a, b) for the backward pass
        for g0, g1 in groups:
            va = None if valid is None else valid[g0:g1]
            # (the group's slices are strided views; contiguous, the feature maps' products
            # run as one large matrix product instead of a batch of small ones)
            pq = fq(q[g0:g1].contiguous())  # (n, N, C, m)
            pk, log_scale = fk(k[g0:g1].contiguous(), va)  # (n, N, C, m)
            a, b, ref = _scales(ref, log_scale)
            acc, Sz_next, before, _, A = _CausalScan._group(pq, pk, _with_ones(v[g0:g1]), Sz, a, b)
            out[g0:g1], den = _finish(acc)
            # kept for the backward pass: O(T * (C + m * Dv / C)), much less than the features;
            # without one (inference) nothing is kept, and each group reuses the last one's memory
            if keep:
                states.append((a, b, before, A, den, acc[..., -1:] > 0))
            Sz = Sz_next
        ctx.save_for_backward(q, k, v, valid, out)
        ctx.fq, ctx.fk, ctx.groups, ctx.states = fq, fk, groups, states
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, d_out):
        q, k, v, valid, out_all = ctx.saved_tensors
        fq, fk = ctx.fq, ctx.fk
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        dSz = None  # gradient of the state leaving the current group
        for (g0, g1), (a, b, before, A, den, has_key) in reversed(
            list(zip(ctx.groups, ctx.states))
        ):
            va = None if valid is None else valid[g0:g1]
            # the group's features are recomputed once, with autograd, and pulled back to q and
            # k at the end (recomputing them apart without a graph cost a third more feature
            # work in the backward pass)
            with torch.enable_grad():
                xq = q[g0:g1].contiguous().requires_grad_(True)
                xk = k[g0:g1].contiguous().requires_grad_(True)
                pq_graph = fq(xq)  # (n, N, C, m)
                pk_graph = fk(xk, va)[0]
            pq, pk = pq_graph.detach(), pk_graph.detach()
            with torch.no_grad():
                v1 = _with_ones(v[g0:g1])  # (n, N, C, Dv+1)
                d_num = d_out[g0:g1] / den
                d_den = torch.where(has_key, -(d_num * out_all[g0:g1]).sum(-1, keepdim=True), 0.0)
                d_acc = torch.cat([d_num, d_den], -1)  # (n, N, C, Dv+1)
                # acc = b * A v1 + pq before
                d_before = torch.matmul(pq.transpose(-1, -2), d_acc)  # (n, N, m, Dv+1)
                d_pq = torch.matmul(d_acc, before.transpose(-1, -2))  # (n, N, C, m)
                dA = _scaled(torch.matmul(d_acc, v1.transpose(-1, -2)), b).tril_()  # (n, N, C, C)
                d_v1 = _scaled(torch.matmul(A.transpose(-1, -2), d_acc), b)
                d_pq += torch.matmul(dA, pk)
                d_pk = torch.matmul(dA.transpose(-1, -2), pq)
                # before[c] = a Sz + sum_{c' < c} b kv[c'] and the state leaving the group is
                # a Sz + sum_c b kv[c]: kv[c] gets the gradients of every later state
                if dSz is not None:
                    d_before[-1] += dSz
                suffix = d_before.flip(0).cumsum_(0).flip(0)  # suffix[c] = sum over c' >= c
                last = torch.zeros_like(suffix[:1]) if dSz is None else dSz.unsqueeze(0)
                d_kv = _scaled(torch.cat([suffix[1:], last], 0), b)  # (n, N, m, Dv+1)
                d_pk += torch.matmul(v1, d_kv.transpose(-1, -2))
                d_v1 += torch.matmul(pk, d_kv)
                dSz = None if g0 == 0 else _scaled(suffix[0], a)
            dq[g0:g1], dk[g0:g1] = torch.autograd.grad((pq_graph, pk_graph), (xq, xk), (d_pq, d_pk))
            dv[g0:g1] = d_v1[..., :-1]
        return dq, dk, dv, None, None, None, None


class _GlobalScan(torch.autograd.Function):
    """Non-causal, chunk-major: q, k (nC, N, C, D); v (nC, N, C, Dv); valid (nC, N, C) or
    None. Returns (nC, N, C, Dv)."""

    @staticmethod
    def forward(ctx, q, k, v, valid, fq, fk, per_group):
        groups = _groups(q.shape[0], per_group)
        Sz = ref = None
        factors = []  # (a, b) of every key group
        for g0, g1 in groups:
            pk, log_scale = fk(k[g0:g1], None if valid is None else valid[g0:g1])  # (n, N, C, m)
            a, b, ref = _scales(ref, log_scale)
            factors.append((a, b))
            kv = torch.matmul(pk.transpose(-1, -2), _with_ones(v[g0:g1])).sum(0)  # (N, m, Dv+1)
            kv = _scaled(kv, b)
            Sz = kv if Sz is None else _scaled(Sz, a).add_(kv)
        # the factor that carries each key group's sums into the final state
        carry, final = None, []
        for a, b in reversed(factors):
            final.append(b if carry is None else (carry if b is None else b * carry))
            carry = a if carry is None else (carry if a is None else carry * a)
        final.reverse()
        out = v.new_empty(v.shape)
        for g0, g1 in groups:
            out[g0:g1] = _finish(torch.matmul(fq(q[g0:g1]), Sz))[0]
        ctx.save_for_backward(q, k, v, valid, Sz, out)
        ctx.fq, ctx.fk, ctx.groups, ctx.final = fq, fk, groups, final
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, d_out):
        q, k, v, valid, Sz, out_all = ctx.saved_tensors
        fq, fk = ctx.fq, ctx.fk
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        dSz = torch.zeros_like(Sz)  # (N, m, Dv+1)
        for g0, g1 in ctx.groups:  # out = finish(phi(q) Sz)
            with torch.no_grad():
                pq = fq(q[g0:g1])  # (n, N, C, m)
                acc = torch.matmul(pq, Sz)
                d_acc = _d_acc(
                    d_out[g0:g1], out_all[g0:g1], acc, _finish(acc)[1]
                )  # (n, N, C, Dv+1)
                dSz += torch.matmul(pq.transpose(-1, -2), d_acc).sum(0)
                d_pq = torch.matmul(d_acc, Sz.transpose(-1, -2))
            (dq[g0:g1],) = _feature_grads(fq, fk, q[g0:g1], d_pq, None, None, None)
        for (g0, g1), f in zip(ctx.groups, ctx.final):  # Sz = sum over groups of f phi(k)^T v1
            va = None if valid is None else valid[g0:g1]
            with torch.no_grad():
                pk, _ = fk(k[g0:g1], va)  # (n, N, C, m)
                d_kv = _scaled(dSz, f)  # (N, m, Dv+1)
                d_pk = torch.matmul(_with_ones(v[g0:g1]), d_kv.transpose(-1, -2))  # (n, N, C, m)
                dv[g0:g1] = torch.matmul(pk, d_kv[..., :-1])
            (dk[g0:g1],) = _feature_grads(fq, fk, None, None, k[g0:g1], va, d_pk)
        return dq, dk, dv, None, None, None, None


def kernel_attention(
    fq: QueryFeatures,
    fk: KeyFeatures,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    key_valid: Tensor | None,
    causal: bool,
    chunk: int,
    group: int,
) -> Tensor:
    """Kernelised attention on (N, T, D) q, k and (N, T, Dv) v; returns (N, T, Dv).

    key_valid: (N, T) bool, False for padded keys, or None. chunk: tokens per causal chunk;
    group: tokens per step of the scan (rounded to whole chunks).

    The feature maps see chunk-major (n, N, C, D) tensors: N, the batch * heads row, is dim -3,
    and a key feature map's log_scale is one value per row N.
    """
    N, T, _ = q.shape
    # causal: chunks of ``chunk`` tokens inside each group. Non-causal needs no chunks: when
    # whole groups tile the sequence, each group is one chunk (one product per group, inputs
    # read in place); otherwise chunks of ``chunk`` keep the padding small
    C = min(chunk, T)
    if not causal and (T <= group or T % group == 0):
        C = min(group, T)
    n_chunks = -(-T // C)
    pad = n_chunks * C - T
    if pad:
        q, k, v = (F.pad(x, (0, 0, 0, pad)) for x in (q, k, v))  # (N, Tp, *)
        if key_valid is None:
            key_valid = torch.ones(N, T, dtype=torch.bool, device=q.device)
        key_valid = F.pad(key_valid, (0, pad), value=False)  # (N, Tp)

    def chunk_major(x: Tensor) -> Tensor:
        # a view: each group is a strided slice of the inputs, read in place (no chunk-major
        # copy of the whole sequence), and the output is written in position order
        return x.reshape(N, n_chunks, C, *x.shape[2:]).transpose(0, 1)

    qc, kc, vc = chunk_major(q), chunk_major(k), chunk_major(v)  # (nC, N, C, *)
    vmask = None if key_valid is None else chunk_major(key_valid)  # (nC, N, C)
    scan = _CausalScan if causal else _GlobalScan
    out = scan.apply(qc, kc, vc, vmask, fq, fk, max(1, group // C))  # (nC, N, C, Dv)
    return out.transpose(0, 1).reshape(N, n_chunks * C, -1)[:, :T]
