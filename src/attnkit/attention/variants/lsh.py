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

    Works one (batch*head row, round) at a time and, within it, a few chunks at a time. The
    queries of a round are its sorted slots; chunk c attends to the slots of chunks c - 1 and c,
    so with one dummy chunk in front of the sorted keys both halves are contiguous slices and
    nothing is copied or scattered: the gradients of the sorted copies are dense, and positions
    are recovered with the inverse permutation.
    """

    budget = 1 << 22  # scores per batch of chunks

    @staticmethod
    def _sorted(n, perm_r, q, k, v, valid, T, C, scale):
        """Sorted copies for row n of one round: qs (nC, C, D) scaled; ks, vs (nC+1, C, *)
        behind a dummy chunk; key positions (nC+1, C) with T for dummy/padding; key validity."""
        Tp = perm_r.shape[0]
        nC = Tp // C
        kpos = F.pad(perm_r, (C, 0), value=T)  # (C + Tp,)
        data = kpos.clamp_max(T - 1)  # padding slots read row T-1 and are masked
        qs = q[n].index_select(0, data[C:]).mul_(scale).view(nC, C, -1)
        ks = k[n].index_select(0, data).view(nC + 1, C, -1)
        vs = v[n].index_select(0, data).view(nC + 1, C, -1)
        kok = valid[n].index_select(0, kpos).view(nC + 1, C)  # (nC+1, C)
        return qs, ks, vs, kpos.view(nC + 1, C).to(torch.int32), kok

    @staticmethod
    def _masks(n, r, c0, c1, perm_r, kpos, kok, chunk_of, causal, T, C):
        """(prev, own) bool masks (g, C, C), True = not allowed, for chunks c0..c1 of row n."""
        qp = perm_r.view(-1, C)[c0:c1].to(torch.int32).unsqueeze(-1)  # (g, C, 1)
        out = []
        for lo in (c0, c0 + 1):  # previous chunk, own chunk
            kp = kpos[lo:lo + c1 - c0].unsqueeze(-2)  # (g, 1, C)
            bad = (kp >= qp) if causal else (kp == qp)  # later keys / the query itself
            bad |= ~kok[lo:lo + c1 - c0].unsqueeze(-2)
            for r_prev in range(r):  # keys already seen in an earlier round
                cid = chunk_of[n, r_prev]  # (T+1,)
                cq = cid[qp.long()] - 0.5  # (g, C, 1)
                ck = cid[kp.long()]  # (g, 1, C)
                bad |= (ck - cq).abs_() < 1  # key chunk == query chunk or the one before
            if c1 * C > T:  # padding slots as queries: nothing allowed
                bad[-1, T - (c1 - 1) * C:] = True
            out.append(bad)
        return out

    @staticmethod
    def _setup(q, perm, rank, key_valid, C):
        N, T, _ = q.shape
        valid = torch.ones(N, T + 1, dtype=torch.bool, device=q.device)  # (N, T+1), row T: dummy
        valid[:, T] = False
        if key_valid is not None:
            valid[:, :T] = key_valid
        nC = perm.shape[-1] // C
        step = max(1, _LSHCore.budget // (2 * C * C))
        return valid, [(c0, min(nC, c0 + step)) for c0 in range(0, nC, step)]

    @staticmethod
    def forward(ctx, q, k, v, perm, rank, key_valid, causal, C, scale):
        N, T, D = q.shape
        Dv = v.shape[-1]
        nh, Tp = perm.shape[1], perm.shape[2]
        nC = Tp // C
        valid, batches = _LSHCore._setup(q, perm, rank, key_valid, C)
        # chunk of every position in every round; the dummy row T is far from every chunk
        chunk_of = F.pad((rank // C).to(q.dtype), (0, 1), value=-4.0)  # (N, nh, T+1)
        o = q.new_empty(N, nh, T, Dv)  # (N, nh, T, Dv)
        lse = q.new_empty(N, nh, T)  # (N, nh, T)
        tiny = torch.finfo(q.dtype).tiny
        masks = []
        for n in range(N):
            for r in range(nh):
                perm_r = perm[n, r]  # (Tp,)
                qs, ks, vs, kpos, kok = _LSHCore._sorted(n, perm_r, q, k, v, valid, T, C, scale)
                o_s = q.new_empty(nC, C, Dv)  # (nC, C, Dv) sorted order
                lse_s = q.new_empty(nC, C)
                for c0, c1 in batches:
                    bad = _LSHCore._masks(n, r, c0, c1, perm_r, kpos, kok, chunk_of, causal, T, C)
                    qc = qs[c0:c1]  # (g, C, D)
                    s0 = torch.matmul(qc, ks[c0:c1].transpose(-1, -2)).masked_fill_(bad[0], float("-inf"))
                    s1 = torch.matmul(qc, ks[c0 + 1:c1 + 1].transpose(-1, -2)).masked_fill_(bad[1], float("-inf"))
                    m = torch.maximum(s0.amax(-1, keepdim=True), s1.amax(-1, keepdim=True))  # (g, C, 1)
                    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
                    p0, p1 = torch.exp_(s0.sub_(m)), torch.exp_(s1.sub_(m))
                    den = p0.sum(-1, keepdim=True) + p1.sum(-1, keepdim=True)
                    oc = torch.baddbmm(torch.matmul(p0, vs[c0:c1]), p1, vs[c0 + 1:c1 + 1])
                    o_s[c0:c1] = oc.div_(den.clamp_min(tiny))
                    lse_s[c0:c1] = (m + den.log()).squeeze(-1)
                    masks.append(bad)
                o[n, r] = o_s.view(Tp, Dv).index_select(0, rank[n, r])
                lse[n, r] = lse_s.view(Tp).index_select(0, rank[n, r])
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
        valid, batches = _LSHCore._setup(q, perm, rank, key_valid, C)
        delta = (do * o).sum(-1) - dlse  # (N, nh, T)
        aux = torch.stack([torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse)), delta], -1)  # (N, nh, T, 2)
        dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
        for n in range(N):
            for r in range(nh):
                perm_r = perm[n, r]  # (Tp,)
                qs, ks, vs, _, _ = _LSHCore._sorted(n, perm_r, q, k, v, valid, T, C, scale)
                rows = perm_r.clamp_max(T - 1)  # padding slots are masked as queries
                do_s = do[n, r].index_select(0, rows).view(nC, C, Dv)
                aux_s = aux[n, r].index_select(0, rows).view(nC, C, 2)
                dqs = torch.empty_like(qs)  # (nC, C, D)
                dks = torch.zeros_like(ks)  # (nC+1, C, D)
                dvs = torch.zeros_like(vs)  # (nC+1, C, Dv)
                for c0, c1 in batches:
                    bad = next(masks)
                    qc, doc = qs[c0:c1], do_s[c0:c1]  # (g, C, D), (g, C, Dv)
                    ds = []
                    for h, lo in enumerate((c0, c0 + 1)):  # previous chunk, own chunk
                        kh, vh = ks[lo:lo + c1 - c0], vs[lo:lo + c1 - c0]
                        s = torch.matmul(qc, kh.transpose(-1, -2)).masked_fill_(bad[h], float("-inf"))
                        p = torch.exp_(s.sub_(aux_s[c0:c1, :, :1]))  # (g, C, C)
                        dvs[lo:lo + c1 - c0] += torch.matmul(p.transpose(-1, -2), doc)
                        dp = torch.matmul(doc, vh.transpose(-1, -2)).sub_(aux_s[c0:c1, :, 1:])
                        dsh = p.mul_(dp)  # dL/ds
                        dks[lo:lo + c1 - c0] += torch.matmul(dsh.transpose(-1, -2), qc)
                        ds.append((dsh, kh))
                    dqs[c0:c1] = torch.baddbmm(torch.matmul(ds[0][0], ds[0][1]), ds[1][0], ds[1][1]).mul_(scale)
                idx = rank[n, r]  # (T,)
                dq[n] += dqs.view(Tp, D).index_select(0, idx)
                dk[n] += dks[1:].reshape(Tp, D).index_select(0, idx)
                dv[n] += dvs[1:].reshape(Tp, Dv).index_select(0, idx)
        return dq, dk, dv, None, None, None, None, None, None
