"""Softmax attention over gathered groups of queries and keys, in bounded memory.

Block-sparse (BigBird) and bucketed (LSH) attention both reduce to the same computation: the
queries are split into groups, and each group of queries attends to its own list of key
positions. :func:`gathered_attention` runs that computation a few groups at a time, so memory
stays O(T * keys per group) no matter how many groups there are, and its backward pass
recomputes the scores group by group (as flash attention does) instead of keeping them.

Besides the normalised output of every group it returns the group's log-sum-exp, with its
gradient, so a caller can merge several groups that hold the same query (LSH hash rounds).
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

# bias_fn(g0, g1, qpos, kpos) -> additive score bias broadcastable to (N, g1 - g0, Cq, Ck), or None
BiasFn = Callable[[int, int, Tensor, Tensor], Optional[Tensor]]


@dataclasses.dataclass(frozen=True)
class GatherSpec:
    """How scores are formed and masked inside the groups.

    scale: multiplies q . k.
    causal: a key at a later position than the query is masked.
    exclude_self: the key at the query's own position is masked.
    bias_fn: extra additive bias (not differentiated), e.g. -log(duplicate count).
    budget: roughly how many scores one batch of groups may hold.
    """

    scale: float
    causal: bool = False
    exclude_self: bool = False
    bias_fn: Optional[BiasFn] = None
    budget: int = 1 << 23


def gathered_attention(q: Tensor, k: Tensor, v: Tensor, qpos: Tensor, kpos: Tensor,
                       key_valid: Optional[Tensor], spec: GatherSpec) -> tuple[Tensor, Tensor]:
    """Attention of gathered query groups over gathered key groups.

    q, k: (N, T, D) and v: (N, T, Dv), N = batch * heads.
    qpos: (P, G, Cq) int64 positions of the queries of each of the G groups; kpos: (P, G, Ck)
    positions of the keys each group attends to. P is 1 (same groups for every row) or N.
    -1 marks an empty slot. key_valid: (N, T) bool, False for padded keys, or None.

    Returns o: (N, G, Cq, Dv), each query's softmax-weighted values over its group's allowed
    keys (zeros when none is allowed), and lse: (N, G, Cq), the log-sum-exp of the allowed
    scores (-inf when none is allowed).
    """
    if qpos.dtype != torch.long or kpos.dtype != torch.long:
        raise TypeError(f"qpos and kpos must be int64, got {qpos.dtype} and {kpos.dtype}")
    if qpos.dim() != 3 or kpos.dim() != 3 or qpos.shape[:2] != kpos.shape[:2]:
        raise ValueError(f"qpos (P, G, Cq) and kpos (P, G, Ck) must agree, got {tuple(qpos.shape)}, {tuple(kpos.shape)}")
    return _GatheredAttention.apply(q, k, v, qpos, kpos, key_valid, spec)


def _batches(n_groups: int, per_group: int, budget: int):
    step = max(1, budget // max(1, per_group))
    for g0 in range(0, n_groups, step):
        yield g0, min(n_groups, g0 + step)


def _flat(pos: Tensor, n: int, t: int) -> Tensor:
    """(P, g, C) positions -> (n, g, C) row indices into a (n * t, ...) flattened tensor."""
    base = torch.arange(n, device=pos.device).view(n, 1, 1) * t
    return base + pos.clamp_min(0)


class _Groups:
    """Gathers one batch of groups and forms its masked scores."""

    def __init__(self, q: Tensor, k: Tensor, v: Tensor, qpos: Tensor, kpos: Tensor,
                 key_valid: Optional[Tensor], spec: GatherSpec):
        self.n, self.t, self.d = q.shape
        self.dv = v.shape[-1]
        self.qf = q.reshape(-1, self.d)  # (N*T, D)
        self.kf = k.reshape(-1, self.d)  # (N*T, D)
        self.vf = v.reshape(-1, self.dv)  # (N*T, Dv)
        self.qpos, self.kpos, self.spec = qpos, kpos, spec
        self.kvalid = None if key_valid is None else key_valid.reshape(-1)  # (N*T,)

    def scores(self, g0: int, g1: int):
        n, spec = self.n, self.spec
        qp, kp = self.qpos[:, g0:g1], self.kpos[:, g0:g1]  # (P, g, Cq), (P, g, Ck)
        g, cq, ck = qp.shape[1], qp.shape[2], kp.shape[2]
        qi = _flat(qp, n, self.t).reshape(-1)
        ki = _flat(kp, n, self.t).reshape(-1)
        qg = self.qf.index_select(0, qi).view(n, g, cq, self.d) * spec.scale  # (N, g, Cq, D)
        kg = self.kf.index_select(0, ki).view(n, g, ck, self.d)  # (N, g, Ck, D)
        vg = self.vf.index_select(0, ki).view(n, g, ck, self.dv)  # (N, g, Ck, Dv)
        s = torch.matmul(qg, kg.transpose(-1, -2))  # (N, g, Cq, Ck)
        allow = (kp >= 0).unsqueeze(-2) & (qp >= 0).unsqueeze(-1)  # (P, g, Cq, Ck)
        if spec.causal:
            allow = allow & (kp.unsqueeze(-2) <= qp.unsqueeze(-1))
        if spec.exclude_self:
            allow = allow & (kp.unsqueeze(-2) != qp.unsqueeze(-1))
        if self.kvalid is not None:
            allow = allow & self.kvalid[ki].view(n, g, 1, ck)
        s = s.masked_fill_(~allow, float("-inf"))
        if spec.bias_fn is not None:
            bias = spec.bias_fn(g0, g1, qp, kp)
            if bias is not None:
                s = s.add_(bias)
        return s, qg, kg, vg, qi, ki


class _GatheredAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, qpos, kpos, key_valid, spec):
        groups = _Groups(q, k, v, qpos, kpos, key_valid, spec)
        n, (_, n_groups, cq), ck = groups.n, qpos.shape, kpos.shape[-1]
        o = q.new_empty(n, n_groups, cq, groups.dv)  # (N, G, Cq, Dv)
        lse = q.new_empty(n, n_groups, cq)  # (N, G, Cq)
        tiny = torch.finfo(q.dtype).tiny
        for g0, g1 in _batches(n_groups, n * cq * ck, spec.budget):
            s, _, _, vg, _, _ = groups.scores(g0, g1)
            m = s.amax(-1, keepdim=True)  # (N, g, Cq, 1)
            m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
            p = torch.exp_(s.sub_(m))  # masked scores become exactly 0
            den = p.sum(-1, keepdim=True)
            o[:, g0:g1] = torch.matmul(p, vg).div_(den.clamp_min(tiny))
            lse[:, g0:g1] = (m + den.log()).squeeze(-1)  # -inf where nothing is allowed
        ctx.save_for_backward(q, k, v, qpos, kpos, key_valid, o, lse)
        ctx.spec = spec
        return o, lse

    @staticmethod
    @once_differentiable
    def backward(ctx, do, dlse):
        q, k, v, qpos, kpos, key_valid, o, lse = ctx.saved_tensors
        spec = ctx.spec
        groups = _Groups(q, k, v, qpos, kpos, key_valid, spec)
        n, (_, n_groups, cq), ck = groups.n, qpos.shape, kpos.shape[-1]
        dqf = torch.zeros_like(groups.qf)  # (N*T, D)
        dkf = torch.zeros_like(groups.kf)  # (N*T, D)
        dvf = torch.zeros_like(groups.vf)  # (N*T, Dv)
        lse_safe = torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))
        for g0, g1 in _batches(n_groups, n * cq * ck, spec.budget):
            s, qg, kg, vg, qi, ki = groups.scores(g0, g1)
            p = torch.exp_(s.sub_(lse_safe[:, g0:g1].unsqueeze(-1)))  # (N, g, Cq, Ck)
            delta = None
            if do is not None:
                do_b = do[:, g0:g1]  # (N, g, Cq, Dv)
                dvf.index_add_(0, ki, torch.matmul(p.transpose(-1, -2), do_b).reshape(-1, groups.dv))
                dp = torch.matmul(do_b, vg.transpose(-1, -2))  # (N, g, Cq, Ck)
                delta = (do_b * o[:, g0:g1]).sum(-1)  # (N, g, Cq)
            else:
                dp = torch.zeros_like(p)
            if dlse is not None:
                delta = -dlse[:, g0:g1] if delta is None else delta - dlse[:, g0:g1]
            if delta is not None:
                dp = dp.sub_(delta.unsqueeze(-1))
            ds = p.mul_(dp)  # dL/ds, (N, g, Cq, Ck)
            dqf.index_add_(0, qi, torch.matmul(ds, kg).mul_(spec.scale).reshape(-1, groups.d))
            dkf.index_add_(0, ki, torch.matmul(ds.transpose(-1, -2), qg).reshape(-1, groups.d))
        return dqf.view_as(q), dkf.view_as(k), dvf.view_as(v), None, None, None, None
