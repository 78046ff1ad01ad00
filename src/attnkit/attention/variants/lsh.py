"""Reformer LSH attention (Kitaev et al. 2020).

Queries and keys are shared: q serves as both, the key of position j being q_j / |q_j| (the
``k`` argument is accepted for the common interface and ignored). Scores are
q_i . (q_j / |q_j|) / sqrt(D).

Each of ``n_hashes`` rounds hashes every vector with a random rotation R (D, n_buckets / 2):
bucket = argmax([xR, -xR]). The positions are stably sorted by (bucket, position) and cut into
chunks of ``chunk_size``; each query attends to the keys of its own chunk and of the chunk
before it. A query never attends to itself unless no other key is available to it at all.
With ``causal`` keys at later positions are masked. The rounds are merged into one softmax over
the union of the keys each query saw, with log-sum-exp weights; a key seen in several rounds is
counted once (it is masked in every round after the first that saw it), so more rounds can
only add keys and the result tends to dense shared-QK attention.

Memory is O(T * n_hashes * chunk_size): the chunked scores are never all alive at once, and the
backward pass recomputes them chunk by chunk (see ``_gathered``). The rotations are drawn from
a generator seeded with ``seed``, round by round, so the first rounds do not depend on
``n_hashes`` and the module is deterministic.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ._common import VariantAttention, check_optional_int, check_positive_int, default_scale
from torch.autograd.function import once_differentiable


class LSHAttention(VariantAttention):
    """Shared-QK locality-sensitive-hashing attention.

    n_buckets: buckets per round, 1 or an even number; None chooses the number of chunks
    (rounded up to even) capped at ``max_auto_buckets``. n_hashes: hash rounds. chunk_size:
    tokens per chunk. seed: seeds the rotations.
    """

    exact = False
    description = "Reformer LSH attention: shared-QK, hashed into buckets, chunked, multi-round"
    max_auto_buckets = 64

    def __init__(self, n_buckets: Optional[int] = None, n_hashes: int = 2, chunk_size: int = 64, seed: int = 0):
        super().__init__()
        self.n_buckets = check_optional_int("n_buckets", n_buckets)
        if self.n_buckets is not None and self.n_buckets > 1 and self.n_buckets % 2:
            raise ValueError(f"n_buckets must be 1 or an even number (buckets come in +/- pairs), got {n_buckets}")
        self.n_hashes = check_positive_int("n_hashes", n_hashes)
        self.chunk_size = check_positive_int("chunk_size", chunk_size)
        self.seed = check_positive_int("seed", seed, minimum=0)
        self._rotations: dict[tuple[int, int], Tensor] = {}

    def buckets_for(self, T: int) -> int:
        if self.n_buckets is not None:
            return self.n_buckets
        n_chunks = math.ceil(T / min(self.chunk_size, T))
        return min(self.max_auto_buckets, max(2, n_chunks + n_chunks % 2))

    def rotations(self, d: int, n_buckets: int) -> Tensor:
        """(n_hashes, D, n_buckets // 2) float64 random rotations; round r is the r-th draw."""
        key = (d, n_buckets)
        if key not in self._rotations:
            gen = torch.Generator().manual_seed(self.seed)
            rounds = [torch.randn(d, n_buckets // 2, generator=gen, dtype=torch.float64) for _ in range(self.n_hashes)]
            self._rotations[key] = torch.stack(rounds)
        return self._rotations[key]

    @torch.no_grad()
    def hash(self, x: Tensor, n_buckets: Optional[int] = None) -> Tensor:
        """Bucket of every vector in every round: (..., T, D) -> (..., n_hashes, T) int64."""
        T, d = x.shape[-2], x.shape[-1]
        n_buckets = self.buckets_for(T) if n_buckets is None else n_buckets
        if n_buckets == 1:
            return torch.zeros(*x.shape[:-2], self.n_hashes, T, dtype=torch.long, device=x.device)
        R = self.rotations(d, n_buckets).to(device=x.device, dtype=x.dtype)  # (n_hashes, D, nb/2)
        rotated = torch.matmul(x.unsqueeze(-3), R)  # (..., n_hashes, T, nb/2)
        return torch.cat([rotated, -rotated], -1).argmax(-1)

    def _attend(self, q, k, v, causal, key_valid):
        B, H, T, D = q.shape
        Dv = v.shape[-1]
        N, nh, dev = B * H, self.n_hashes, q.device
        C = min(self.chunk_size, T)
        nC = math.ceil(T / C)
        Tp = nC * C
        qf = q.reshape(N, T, D)  # (N, T, D) queries
        kf = F.normalize(qf, dim=-1)  # (N, T, D) unit-length shared keys
        vf = v.reshape(N, T, Dv)  # (N, T, Dv)
        kv = None if key_valid is None else key_valid[:, None, :].expand(B, H, T).reshape(N, T)  # (N, T)

        with torch.no_grad():
            n_buckets = self.buckets_for(T)
            buckets = self.hash(qf.detach(), n_buckets)  # (N, nh, T)
            buckets = F.pad(buckets, (0, Tp - T), value=n_buckets)  # padding slots sort last
            perm = torch.sort(buckets, dim=-1, stable=True).indices  # (N, nh, Tp) sorted slot -> position
            rank = torch.empty_like(perm).scatter_(-1, perm, torch.arange(Tp, device=dev).expand_as(perm))
            rank = rank[..., :T].contiguous()  # (N, nh, T) position -> sorted slot
            perm = perm.clamp_max_(T)  # every padding slot holds position T
        o, lse = _LSHCore.apply(qf, kf, vf, perm, rank, kv, causal, C, default_scale(D))  # (N, nh, T, Dv), (N, nh, T)

        # merge the rounds: softmax over all rounds' keys = log-sum-exp weighted round outputs
        top = lse.detach().amax(1, keepdim=True)  # (N, 1, T)
        top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
        w = torch.exp(lse - top)  # (N, nh, T), 0 for a round with no key
        den = w.sum(1)  # (N, T)
        den = torch.where(den > 0, den, torch.ones_like(den))
        out = (w.unsqueeze(-1) * o).sum(1) / den.unsqueeze(-1)  # (N, T, Dv)

        # a query with no key but itself attends to itself (if it is a real token)
        alone = (lse.detach() == float("-inf")).all(1)  # (N, T)
        if kv is not None:
            alone = alone & kv
        out = torch.where(alone.unsqueeze(-1), vf, out)
        return out.reshape(B, H, T, Dv)


class _LSHCore(torch.autograd.Function):
    """Chunked attention of every hash round in sorted order, returned in position order.

    Works round by round on blocks of (batch*head) rows and chunks: a few whole rows at a time
    for short sequences, a few chunks of one row at a time for long ones. The queries of a round
    are its sorted slots; chunk c attends to the slots of chunks c - 1 and c, so with one dummy
    chunk in front of the sorted keys both halves are slices of one sorted copy and nothing is
    concatenated or scattered: the gradients of the sorted copies are dense, and positions are
    recovered with the inverse permutation.
    """

    budget = 1 << 22  # scores per block

    @staticmethod
    def _blocks(N: int, nC: int, C: int) -> list[tuple[int, int, int, int]]:
        """(n0, n1, c0, c1) blocks of rows and chunks holding about ``budget`` scores each."""
        per_row = nC * 2 * C * C
        if 8 * per_row <= _LSHCore.budget:  # short rows: several per block (fewer, larger ops)
            rows = _LSHCore.budget // per_row
            return [(n0, min(N, n0 + rows), 0, nC) for n0 in range(0, N, rows)]
        step = max(1, _LSHCore.budget // (2 * C * C))
        return [(n, n + 1, c0, min(nC, c0 + step)) for n in range(N) for c0 in range(0, nC, step)]

    @staticmethod
    def _sorted(perm_r, q, k, v, valid, C, scale):
        """Sorted copies of one round: qs (N, nC, C, D) scaled; ks, vs (N, nC+1, C, *) behind a
        dummy chunk; key positions (N, nC+1, C) with T for dummy/padding; key validity."""
        N, T, D = q.shape
        Tp = perm_r.shape[1]
        nC = Tp // C
        kpos = F.pad(perm_r, (C, 0), value=T)  # (N, C + Tp)
        data = kpos.clamp_max(T - 1) + torch.arange(N, device=q.device).view(N, 1) * T  # rows of (N*T, *)
        qs = q.reshape(N * T, D).index_select(0, data[:, C:].reshape(-1)).mul_(scale).view(N, nC, C, D)
        ks = k.reshape(N * T, D).index_select(0, data.reshape(-1)).view(N, nC + 1, C, D)
        vs = v.reshape(N * T, -1).index_select(0, data.reshape(-1)).view(N, nC + 1, C, -1)
        kok = torch.gather(valid, 1, kpos).view(N, nC + 1, C)  # padding and dummy: False
        return qs, ks, vs, kpos.view(N, nC + 1, C).to(torch.int32), kok

    @staticmethod
    def _masks(block, r, perm_r, kpos, kok, chunk_of, causal, T, C):
        """(prev, own) bool masks (R, g, C, C), True = not allowed, for one block."""
        n0, n1, c0, c1 = block
        R, g = n1 - n0, c1 - c0
        qp = perm_r[n0:n1].view(R, -1, C)[:, c0:c1].to(torch.int32).unsqueeze(-1)  # (R, g, C, 1)
        out = []
        for lo in (c0, c0 + 1):  # previous chunk, own chunk
            kp = kpos[n0:n1, lo:lo + g].unsqueeze(-2)  # (R, g, 1, C)
            bad = (kp >= qp) if causal else (kp == qp)  # later keys / the query itself
            bad |= ~kok[n0:n1, lo:lo + g].unsqueeze(-2)
            for r_prev in range(r):  # keys already seen in an earlier round
                cid = chunk_of[n0:n1, r_prev]  # (R, T+1)
                cq = torch.gather(cid, 1, qp.reshape(R, -1).long()).view(R, g, C, 1) - 0.5
                ck = torch.gather(cid, 1, kp.reshape(R, -1).long()).view(R, g, 1, C)
                bad |= (ck - cq).abs_() < 1  # key chunk == query chunk or the one before
            if c1 * C > T:  # padding slots as queries: nothing allowed
                bad[:, -1, T - (c1 - 1) * C:] = True
            out.append(bad)
        return out

    @staticmethod
    def _valid(q, key_valid):
        N, T, _ = q.shape
        valid = torch.ones(N, T + 1, dtype=torch.bool, device=q.device)  # (N, T+1), T: dummy
        valid[:, T] = False
        if key_valid is not None:
            valid[:, :T] = key_valid
        return valid

    @staticmethod
    def forward(ctx, q, k, v, perm, rank, key_valid, causal, C, scale):
        N, T, D = q.shape
        Dv = v.shape[-1]
        nh, Tp = perm.shape[1], perm.shape[2]
        nC = Tp // C
        valid = _LSHCore._valid(q, key_valid)
        blocks = _LSHCore._blocks(N, nC, C)
        # chunk of every position in every round; the dummy row T is far from every chunk
        chunk_of = F.pad((rank // C).to(q.dtype), (0, 1), value=-4.0)  # (N, nh, T+1)
        o = q.new_empty(N, nh, T, Dv)  # (N, nh, T, Dv)
        lse = q.new_empty(N, nh, T)  # (N, nh, T)
        tiny = torch.finfo(q.dtype).tiny
        base = torch.arange(N, device=q.device).view(N, 1) * Tp
        masks = []
        for r in range(nh):
            perm_r = perm[:, r]  # (N, Tp)
            qs, ks, vs, kpos, kok = _LSHCore._sorted(perm_r, q, k, v, valid, C, scale)
            o_s = q.new_empty(N, nC, C, Dv)  # sorted order
            lse_s = q.new_empty(N, nC, C)
            for block in blocks:
                n0, n1, c0, c1 = block
                g = c1 - c0
                bad = _LSHCore._masks(block, r, perm_r, kpos, kok, chunk_of, causal, T, C)
                qc = qs[n0:n1, c0:c1]  # (R, g, C, D)
                k0, k1 = ks[n0:n1, c0:c1], ks[n0:n1, c0 + 1:c1 + 1]  # previous, own chunk keys
                s0 = torch.matmul(qc, k0.transpose(-1, -2)).masked_fill_(bad[0], float("-inf"))
                s1 = torch.matmul(qc, k1.transpose(-1, -2)).masked_fill_(bad[1], float("-inf"))
                m = torch.maximum(s0.amax(-1, keepdim=True), s1.amax(-1, keepdim=True))  # (R, g, C, 1)
                m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
                p0, p1 = torch.exp_(s0.sub_(m)), torch.exp_(s1.sub_(m))
                den = p0.sum(-1, keepdim=True) + p1.sum(-1, keepdim=True)
                oc = torch.matmul(p0, vs[n0:n1, c0:c1]) + torch.matmul(p1, vs[n0:n1, c0 + 1:c1 + 1])
                o_s[n0:n1, c0:c1] = oc.div_(den.clamp_min(tiny))
                lse_s[n0:n1, c0:c1] = (m + den.log()).squeeze(-1)
                masks.append(bad)
            idx = (base + rank[:, r]).reshape(-1)  # sorted slot of every position
            o[:, r] = o_s.view(N * Tp, Dv).index_select(0, idx).view(N, T, Dv)
            lse[:, r] = lse_s.view(N * Tp).index_select(0, idx).view(N, T)
        ctx.save_for_backward(q, k, v, perm, rank, key_valid, o, lse)
        ctx.masks, ctx.C, ctx.scale = masks, C, scale
        return o, lse

    @staticmethod
    @once_differentiable
    def backward(ctx, do, dlse):
        q, k, v, perm, rank, key_valid, o, lse = ctx.saved_tensors
        C, scale, masks = ctx.C, ctx.scale, iter(ctx.masks)
        N, T, D = q.shape
        Dv = v.shape[-1]
        nh, Tp = perm.shape[1], perm.shape[2]
        nC = Tp // C
        valid = _LSHCore._valid(q, key_valid)
        blocks = _LSHCore._blocks(N, nC, C)
        delta = (do * o).sum(-1) - dlse  # (N, nh, T)
        aux = torch.stack([torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse)), delta], -1)  # (N, nh, T, 2)
        dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
        rows_t = torch.arange(N, device=q.device).view(N, 1) * T
        rows_p = torch.arange(N, device=q.device).view(N, 1) * Tp
        for r in range(nh):
            perm_r = perm[:, r]  # (N, Tp)
            qs, ks, vs, _, _ = _LSHCore._sorted(perm_r, q, k, v, valid, C, scale)
            src = (perm_r.clamp_max(T - 1) + rows_t).reshape(-1)  # padding slots are masked as queries
            do_s = do[:, r].reshape(N * T, Dv).index_select(0, src).view(N, nC, C, Dv)
            aux_s = aux[:, r].reshape(N * T, 2).index_select(0, src).view(N, nC, C, 2)
            dqs = torch.empty_like(qs)  # (N, nC, C, D)
            dks = torch.zeros_like(ks)  # (N, nC+1, C, D)
            dvs = torch.zeros_like(vs)  # (N, nC+1, C, Dv)
            for n0, n1, c0, c1 in blocks:
                bad = next(masks)
                g = c1 - c0
                qc, doc = qs[n0:n1, c0:c1], do_s[n0:n1, c0:c1]  # (R, g, C, D), (R, g, C, Dv)
                lse_c, delta_c = aux_s[n0:n1, c0:c1, :, :1], aux_s[n0:n1, c0:c1, :, 1:]
                dq_c = None
                for h, lo in enumerate((c0, c0 + 1)):  # previous chunk, own chunk
                    kh, vh = ks[n0:n1, lo:lo + g], vs[n0:n1, lo:lo + g]
                    s = torch.matmul(qc, kh.transpose(-1, -2)).masked_fill_(bad[h], float("-inf"))
                    p = torch.exp_(s.sub_(lse_c))  # (R, g, C, C)
                    dvs[n0:n1, lo:lo + g] += torch.matmul(p.transpose(-1, -2), doc)
                    dp = torch.matmul(doc, vh.transpose(-1, -2)).sub_(delta_c)
                    ds = p.mul_(dp)  # dL/ds
                    dks[n0:n1, lo:lo + g] += torch.matmul(ds.transpose(-1, -2), qc)
                    part = torch.matmul(ds, kh)
                    dq_c = part if dq_c is None else dq_c.add_(part)
                dqs[n0:n1, c0:c1] = dq_c.mul_(scale)
            idx = (rows_p + rank[:, r]).reshape(-1)  # sorted slot of every position
            dq += dqs.view(N * Tp, D).index_select(0, idx).view(N, T, D)
            dk += dks[:, 1:].reshape(N * Tp, D).index_select(0, idx).view(N, T, D)
            dv += dvs[:, 1:].reshape(N * Tp, Dv).index_select(0, idx).view(N, T, Dv)
        return dq, dk, dv, None, None, None, None, None, None
