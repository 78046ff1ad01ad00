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
from collections.abc import Callable, Sequence

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

# mask_fn(g0, g1, qpos, kpos) -> extra bool mask (True = masked) broadcastable to
# (N, g1 - g0, Cq, Ck), or None; qpos/kpos are that batch's (P, g, Cq) / (P, g, Ck) positions.
MaskFn = Callable[[int, int, Tensor, Tensor], Tensor | None]


@dataclasses.dataclass(frozen=True)
class GatherSpec:
    """How scores are formed and masked inside the groups.

    scale: multiplies q . k.
    causal: a key at a later position than the query is masked.
    exclude_self: the key at the query's own position is masked.
    mask_fn: an extra mask (e.g. pairs already seen in an earlier LSH round).
    budget: roughly how many scores one batch of groups may hold. 2**21 (8 MiB of float32
        scores): every temporary of a batch then stays well under glibc's largest mmap
        threshold (32 MiB), so it is reused from the heap instead of being mapped afresh and
        faulted in; at 2**23, BigBird fwd+bwd at N=65536 faulted in 2.2 GiB per call with the
        system allocator (0.6 GiB at 2**21) and took 3.5 s (3.1 s).
    """

    scale: float
    causal: bool = False
    exclude_self: bool = False
    mask_fn: MaskFn | None = None
    budget: int = 1 << 21


def gathered_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    qpos: Tensor,
    kpos: Tensor,
    key_valid: Tensor | None,
    spec: GatherSpec,
) -> tuple[Tensor, Tensor]:
    """Attention of gathered query groups over gathered key groups.

    q, k: (N, T, D) and v: (N, T, Dv), N = batch * heads.
    qpos: (P, G, Cq) integer positions of the queries of each of the G groups; kpos: (P, G, Ck)
    positions of the keys each group attends to. P is 1 (same groups for every row) or N.
    -1 marks an empty key slot (an empty query slot's output is undefined; callers drop it).
    key_valid: (N, T) bool, False for padded keys, or None.

    Returns o: (N, G, Cq, Dv), each query's softmax-weighted values over its group's allowed
    keys (zeros when none is allowed), and lse: (N, G, Cq), the log-sum-exp of the allowed
    scores (-inf when none is allowed).
    """
    return gathered_attention_parts(q, k, v, [(qpos, kpos)], key_valid, spec)[0]


def gathered_attention_parts(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    parts: Sequence[tuple[Tensor, Tensor]],
    key_valid: Tensor | None,
    spec: GatherSpec,
) -> list[tuple[Tensor, Tensor]]:
    """:func:`gathered_attention` for several group layouts of the same q, k, v at once
    (e.g. BigBird's global query blocks, which see every key, and its other blocks): one
    (o, lse) per (qpos, kpos) part. The backward pass adds every part's gradients into one set of
    accumulators, instead of one full-size gradient per part summed afterwards."""
    if not parts:
        raise ValueError("parts must hold at least one (qpos, kpos) pair")
    flat = []
    for qpos, kpos in parts:
        if qpos.dtype not in (torch.int32, torch.int64) or kpos.dtype not in (
            torch.int32,
            torch.int64,
        ):
            raise TypeError(
                f"qpos and kpos must be int32 or int64, got {qpos.dtype} and {kpos.dtype}"
            )
        if qpos.dim() != 3 or kpos.dim() != 3 or qpos.shape[:2] != kpos.shape[:2]:
            raise ValueError(
                f"qpos (P, G, Cq) and kpos (P, G, Ck) must agree, got {tuple(qpos.shape)}, {tuple(kpos.shape)}"
            )
        flat += [qpos.to(torch.int32), kpos.to(torch.int32)]
    if q.shape[1] >= 2**31:
        raise ValueError(f"sequence length must be < 2**31, got {q.shape[1]}")
    out = _GatheredAttention.apply(q, k, v, key_valid, spec, *flat)
    return [(out[2 * i], out[2 * i + 1]) for i in range(len(parts))]


def _batches(n_groups: int, per_group: int, budget: int):
    step = max(1, budget // max(1, per_group))
    for g0 in range(0, n_groups, step):
        yield g0, min(n_groups, g0 + step)


def _flat(pos: Tensor, n: int, t: int) -> Tensor:
    """(P, g, C) positions -> (n * g * C,) int64 row indices into a (n * t, ...) flattened tensor."""
    base = torch.arange(n, device=pos.device).view(n, 1, 1) * t
    return (base + pos.clamp_min(0)).reshape(-1)


class _Groups:
    """Gathers one batch of groups and forms its masked scores."""

    def __init__(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        qpos: Tensor,
        kpos: Tensor,
        key_valid: Tensor | None,
        spec: GatherSpec,
    ):
        self.n, self.t, self.d = q.shape
        self.dv = v.shape[-1]
        self.q3, self.k3, self.v3 = q, k, v
        self.qf = q.reshape(-1, self.d)  # (N*T, D)
        self.kf = k.reshape(-1, self.d)  # (N*T, D)
        self.vf = v.reshape(-1, self.dv)  # (N*T, Dv)
        self.qpos, self.kpos, self.spec = qpos, kpos, spec
        # key validity with one extra False entry per row, which empty slots (-1) point to
        valid = torch.ones(self.n, self.t + 1, dtype=torch.bool, device=q.device)  # (N, T+1)
        valid[:, self.t] = False
        if key_valid is not None:
            valid[:, : self.t] = key_valid
        self.valid_ext = valid

    def gather(self, g0: int, g1: int):
        """Queries (scaled), keys and values of groups g0..g1, and the indices they came from."""
        n = self.n
        qp, kp = self.qpos[:, g0:g1], self.kpos[:, g0:g1]  # (P, g, Cq), (P, g, Ck)
        g, cq, ck = qp.shape[1], qp.shape[2], kp.shape[2]
        if qp.shape[0] == 1:  # the same positions for every row: gather along T
            qi, ki = qp.reshape(-1).clamp_min(0).long(), kp.reshape(-1).clamp_min(0).long()
            qg = self.q3.index_select(1, qi)
            kg, vg = self.k3.index_select(1, ki), self.v3.index_select(1, ki)
        else:
            qi, ki = _flat(qp, n, self.t), _flat(kp, n, self.t)
            qg = self.qf.index_select(0, qi)
            kg, vg = self.kf.index_select(0, ki), self.vf.index_select(0, ki)
        qg = qg.view(n, g, cq, self.d).mul_(self.spec.scale)  # (N, g, Cq, D)
        kg = kg.view(n, g, ck, self.d)  # (N, g, Ck, D)
        vg = vg.view(n, g, ck, self.dv)  # (N, g, Ck, Dv)
        return qg, kg, vg, qi, ki

    def add(self, acc: Tensor, idx: Tensor, values: Tensor) -> None:
        """Scatter-add (N, g, C, F) values back to the (N*T, F) accumulator ``acc``."""
        if idx.numel() == values.shape[1] * values.shape[2]:  # shared positions: along T
            # (index_add_ along dim 1 with one shared index is much faster than along dim 0)
            acc.view(self.n, self.t, -1).index_add_(1, idx, values.reshape(self.n, idx.numel(), -1))
        else:
            acc.index_add_(0, idx, values.reshape(idx.numel(), -1))

    def mask(self, g0: int, g1: int) -> Tensor:
        """Bool mask, True = not allowed, broadcastable to (N, g, Cq, Ck)."""
        spec = self.spec
        qp, kp = self.qpos[:, g0:g1], self.kpos[:, g0:g1]  # (P, g, Cq), (P, g, Ck)
        slot = torch.where(kp >= 0, kp, torch.full_like(kp, self.t)).long()  # (P, g, Ck)
        if slot.shape[0] == 1 and self.n > 1:
            bad_key = ~self.valid_ext[:, slot[0]]  # (N, g, Ck)
        else:
            bad_key = ~torch.gather(self.valid_ext, 1, slot.reshape(slot.shape[0], -1)).view(
                slot.shape
            )
        bad = bad_key.unsqueeze(-2)  # (N, g, 1, Ck)
        kq = kp.unsqueeze(-2), qp.unsqueeze(-1)
        if spec.causal:
            bad = bad | ((kq[0] >= kq[1]) if spec.exclude_self else (kq[0] > kq[1]))
        elif spec.exclude_self:
            bad = bad | (kq[0] == kq[1])
        if spec.mask_fn is not None:
            extra = spec.mask_fn(g0, g1, qp, kp)
            if extra is not None:
                bad = bad | extra
        return bad

    def scores(self, qg: Tensor, kg: Tensor, bad: Tensor) -> Tensor:
        s = torch.matmul(qg, kg.transpose(-1, -2))  # (N, g, Cq, Ck)
        return s.masked_fill_(bad, float("-inf"))


def _forward_part(groups: _Groups, spec: GatherSpec):
    q, qpos, kpos = groups.q3, groups.qpos, groups.kpos
    n, (_, n_groups, cq), ck = groups.n, qpos.shape, kpos.shape[-1]
    o = q.new_empty(n, n_groups, cq, groups.dv)  # (N, G, Cq, Dv)
    lse = q.new_empty(n, n_groups, cq)  # (N, G, Cq)
    tiny = torch.finfo(q.dtype).tiny
    masks = []  # kept for the backward pass: 1 byte per score at most
    for g0, g1 in _batches(n_groups, n * cq * ck, spec.budget):
        qg, kg, vg, _, _ = groups.gather(g0, g1)
        bad = groups.mask(g0, g1)
        s = groups.scores(qg, kg, bad)
        m = s.amax(-1, keepdim=True)  # (N, g, Cq, 1)
        m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
        p = torch.exp_(s.sub_(m))  # masked scores become exactly 0
        den = p.sum(-1, keepdim=True)
        o[:, g0:g1] = torch.matmul(p, vg).div_(den.clamp_min(tiny))
        lse[:, g0:g1] = (m + den.log()).squeeze(-1)  # -inf where nothing is allowed
        masks.append(bad)
    return o, lse, masks


def _backward_part(
    groups: _Groups, spec: GatherSpec, masks, o, lse, do, dlse, dqf, dkf, dvf
) -> None:
    qpos, kpos = groups.qpos, groups.kpos
    n, (_, n_groups, cq), ck = groups.n, qpos.shape, kpos.shape[-1]
    lse_safe = torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))
    for (g0, g1), bad in zip(_batches(n_groups, n * cq * ck, spec.budget), masks):
        qg, kg, vg, qi, ki = groups.gather(g0, g1)
        s = groups.scores(qg, kg, bad)
        p = torch.exp_(s.sub_(lse_safe[:, g0:g1].unsqueeze(-1)))  # (N, g, Cq, Ck)
        do_b = do[:, g0:g1]  # (N, g, Cq, Dv)
        groups.add(dvf, ki, torch.matmul(p.transpose(-1, -2), do_b))
        dp = torch.matmul(do_b, vg.transpose(-1, -2))  # (N, g, Cq, Ck)
        delta = (do_b * o[:, g0:g1]).sum(-1) - dlse[:, g0:g1]  # (N, g, Cq)
        ds = p.mul_(dp.sub_(delta.unsqueeze(-1)))  # dL/ds, (N, g, Cq, Ck)
        groups.add(dqf, qi, torch.matmul(ds, kg).mul_(spec.scale))
        groups.add(dkf, ki, torch.matmul(ds.transpose(-1, -2), qg))


class _GatheredAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, key_valid, spec, *pos):
        outs, masks = [], []
        for i in range(0, len(pos), 2):  # pos holds (qpos, kpos) of every part
            o, lse, m = _forward_part(_Groups(q, k, v, pos[i], pos[i + 1], key_valid, spec), spec)
            outs += [o, lse]
            masks.append(m)
        ctx.save_for_backward(q, k, v, key_valid, *pos, *outs)
        ctx.spec, ctx.masks, ctx.n_pos = spec, masks, len(pos)
        return tuple(outs)

    @staticmethod
    @once_differentiable
    def backward(ctx, *grads):
        q, k, v, key_valid, *rest = ctx.saved_tensors
        pos, outs = rest[: ctx.n_pos], rest[ctx.n_pos :]
        spec = ctx.spec
        dqf = q.new_zeros(q.numel() // q.shape[-1], q.shape[-1])  # (N*T, D)
        dkf = k.new_zeros(k.numel() // k.shape[-1], k.shape[-1])  # (N*T, D)
        dvf = v.new_zeros(v.numel() // v.shape[-1], v.shape[-1])  # (N*T, Dv)
        for i in range(0, len(pos), 2):  # unused outputs get zero gradients (materialize_grads)
            groups = _Groups(q, k, v, pos[i], pos[i + 1], key_valid, spec)
            _backward_part(
                groups,
                spec,
                ctx.masks[i // 2],
                outs[i],
                outs[i + 1],
                grads[i],
                grads[i + 1],
                dqf,
                dkf,
                dvf,
            )
        return (dqf.view_as(q), dkf.view_as(k), dvf.view_as(v), None, None) + (None,) * len(pos)
