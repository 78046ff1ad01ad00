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
backward pass (written out in ``_LSHCore``) recomputes them block by block, keeping only 1-byte
masks between the passes. The rotations are drawn from a generator seeded with ``seed``, round
by round, so the first rounds do not depend on ``n_hashes`` and the module is deterministic.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from attnkit._util.checks import int_at_least, non_negative_int, optional_positive_int
from attnkit.attention.variants._common import VariantAttention, default_scale


class LSHAttention(VariantAttention):
    """Shared-QK locality-sensitive-hashing attention (see the module docstring).

    Args:
        n_buckets: buckets per round, 1 or an even number; None chooses the number of chunks
            (rounded up to even, at least 2) capped at ``max_auto_buckets``.
        n_hashes: hash rounds (>= 1).
        chunk_size: tokens per chunk (>= 1).
        seed: seeds the rotations.

    Raises:
        ValueError: for an odd n_buckets above 1, or a count out of range.

    Examples:
        >>> LSHAttention(n_hashes=4)(q, k, v, causal=True)  # q, v (B, H, T, *); k is ignored
    """

    name = "lsh"
    exact = False
    description = "Reformer LSH attention: shared-QK, hashed into buckets, chunked, multi-round"
    max_auto_buckets = 64

    def __init__(
        self,
        n_buckets: int | None = None,
        n_hashes: int = 2,
        chunk_size: int = 64,
        seed: int = 0,
    ):
        super().__init__()
        self.n_buckets = optional_positive_int("n_buckets", n_buckets)
        if self.n_buckets is not None and self.n_buckets > 1 and self.n_buckets % 2:
            raise ValueError(
                f"n_buckets must be 1 or an even number (buckets come in +/- pairs), got {n_buckets}"
            )
        self.n_hashes = int_at_least("n_hashes", n_hashes, 1)
        self.chunk_size = int_at_least("chunk_size", chunk_size, 1)
        self.seed = non_negative_int("seed", seed)
        self._rotations: dict[tuple[int, int], Tensor] = {}

    def buckets_for(self, T: int) -> int:
        """Buckets per round for a length-T sequence: ``n_buckets``, or when it is None the
        number of chunks rounded up to even, within [2, ``max_auto_buckets``].

        Args:
            T: sequence length (>= 1).

        Examples:
            >>> LSHAttention().buckets_for(1024)  # 16: 16 chunks of 64
        """
        if self.n_buckets is not None:
            return self.n_buckets
        n_chunks = math.ceil(T / min(self.chunk_size, T))
        return min(self.max_auto_buckets, max(2, n_chunks + n_chunks % 2))

    def rotations(self, d: int, n_buckets: int) -> Tensor:
        """(n_hashes, D, n_buckets // 2) float64 random rotations; round r is the r-th draw.

        Drawn from a generator seeded with ``seed`` and cached per (d, n_buckets).

        Args:
            d: the head dim D.
            n_buckets: buckets per round (even).

        Examples:
            >>> LSHAttention().rotations(16, 8).shape  # (2, 16, 4)
        """
        key = (d, n_buckets)
        if key not in self._rotations:
            gen = torch.Generator().manual_seed(self.seed)
            rounds = [
                torch.randn(d, n_buckets // 2, generator=gen, dtype=torch.float64)
                for _ in range(self.n_hashes)
            ]
            self._rotations[key] = torch.stack(rounds)
        return self._rotations[key]

    @torch.no_grad()
    def hash(self, x: Tensor, n_buckets: int | None = None) -> Tensor:
        """Bucket of every vector in every round: (..., T, D) -> (..., n_hashes, T) int64.

        The bucket is argmax([xR, -xR]) with R the round's rotation; with one bucket, all 0.

        Args:
            x: vectors, (..., T, D).
            n_buckets: buckets per round; None: :meth:`buckets_for` (T).

        Examples:
            >>> LSHAttention().hash(torch.randn(2, 128, 16)).shape  # (2, 2, 128)
        """
        T, d = x.shape[-2], x.shape[-1]
        n_buckets = self.buckets_for(T) if n_buckets is None else n_buckets
        if n_buckets == 1:
            return torch.zeros(*x.shape[:-2], self.n_hashes, T, dtype=torch.long, device=x.device)
        R = self.rotations(d, n_buckets).to(device=x.device, dtype=x.dtype)  # (n_hashes, D, nb/2)
        rotated = torch.matmul(x.unsqueeze(-3), R)  # (..., n_hashes, T, nb/2)
        # argmax of [xR, -xR] without building it: the largest entry or the most negative one
        top, i_top = rotated.max(-1)
        bottom, i_bottom = rotated.min(-1)
        return torch.where(top >= -bottom, i_top, i_bottom + n_buckets // 2)

    def _attend(self, q, k, v, causal, key_valid):
        B, H, T, D = q.shape
        Dv = v.shape[-1]
        N, dev = B * H, q.device
        C = min(self.chunk_size, T)
        nC = math.ceil(T / C)
        Tp = nC * C
        qf = q.reshape(N, T, D)  # (N, T, D) queries
        kf = F.normalize(qf, dim=-1)  # (N, T, D) unit-length shared keys
        vf = v.reshape(N, T, Dv)  # (N, T, Dv)
        kv = (
            None if key_valid is None else key_valid[:, None, :].expand(B, H, T).reshape(N, T)
        )  # (N, T)

        with torch.no_grad():
            n_buckets = self.buckets_for(T)
            buckets = self.hash(qf.detach(), n_buckets)  # (N, nh, T)
            buckets = F.pad(buckets, (0, Tp - T), value=n_buckets)  # padding slots sort last
            perm = torch.sort(
                buckets, dim=-1, stable=True
            ).indices  # (N, nh, Tp) sorted slot -> position
            rank = torch.empty_like(perm).scatter_(
                -1, perm, torch.arange(Tp, device=dev).expand_as(perm)
            )
            rank = rank[..., :T].contiguous()  # (N, nh, T) position -> sorted slot
            perm = perm.clamp_max_(T)  # every padding slot holds position T
        # one softmax over the union of every round's keys: (N, T, Dv) and its log-sum-exp (N, T)
        out, lse = _LSHCore.apply(qf, kf, vf, perm, rank, kv, causal, C, default_scale(D))

        # a query with no key but itself attends to itself (if it is a real token)
        alone = lse.detach() == float("-inf")  # (N, T)
        if kv is not None:
            alone = alone & kv
        out = torch.where(alone.unsqueeze(-1), vf, out)
        return out.reshape(B, H, T, Dv)


class _LSHCore(torch.autograd.Function):
    """Chunked attention of every hash round in sorted order, returned in position order.

    Works round by round, on blocks of consecutive chunks of all (batch*head) rows at once
    (few, large operations). The queries of a round are its sorted slots; chunk c attends to
    the slots of chunks c - 1 and c. Sorted copies are laid out chunk-major, (chunks, N, C, F),
    so a block's keys are gathered once, with the chunk before the block in front, and the two
    halves of every window are contiguous slices of that. Nothing is scattered: gradients are
    accumulated in sorted order, and positions are recovered with the inverse permutation.
    """

    budget = 1 << 22  # scores per block (two score matrices of 16 MiB in float32)

    @staticmethod
    def _blocks(N: int, nC: int, C: int) -> list[tuple[int, int]]:
        """(c0, c1) chunk ranges holding about ``budget`` scores each, over all rows."""
        step = max(1, _LSHCore.budget // (N * 2 * C * C))
        return [(c0, min(nC, c0 + step)) for c0 in range(0, nC, step)]

    @staticmethod
    def _rows(slots: Tensor, T: int, C: int) -> Tensor:
        """(N, n*C) positions -> flat row indices into (N*T, F), in (n, N, C) order; padding
        slots (position T) read row T-1 of their sequence and are masked."""
        N = slots.shape[0]
        base = torch.arange(N, device=slots.device).view(N, 1, 1) * T
        return (slots.clamp_max(T - 1).view(N, -1, C) + base).transpose(0, 1).reshape(-1)

    @staticmethod
    def _unsort(x: Tensor, rank_r: Tensor, C: int) -> Tensor:
        """x: (nC, N, C, F) in sorted chunk-major order -> (N, T, F) in position order."""
        nC, N = x.shape[0], x.shape[1]
        n = torch.arange(N, device=x.device).view(N, 1)
        idx = (rank_r // C) * (N * C) + n * C + rank_r % C  # (N, T)
        return (
            x.reshape(nC * N * C, -1).index_select(0, idx.reshape(-1)).view(N, rank_r.shape[1], -1)
        )

    @staticmethod
    def _block_inputs(c0, c1, kslots, q, k, v, C, scale):
        """Queries of chunks c0..c1 as (g, N, C, D), scaled, and keys/values of chunks
        c0-1..c1 as (g+1, N, C, *); kslots holds a dummy chunk then every sorted slot."""
        N, T, D = q.shape
        g = c1 - c0
        rows = _LSHCore._rows(kslots[:, c0 * C : (c1 + 1) * C], T, C)  # ((g+1)*N*C,)
        qs = q.reshape(N * T, D).index_select(0, rows[N * C :]).mul_(scale).view(g, N, C, D)
        ks = k.reshape(N * T, D).index_select(0, rows).view(g + 1, N, C, D)
        vs = v.reshape(N * T, -1).index_select(0, rows).view(g + 1, N, C, -1)
        return qs, ks, vs

    @staticmethod
    def _masks(c0, c1, r, kslots, valid, chunk_of, causal, T, C):
        """(previous, own) bool masks (g, N, C, C), True = not allowed, for chunks c0..c1."""
        N, g = kslots.shape[0], c1 - c0
        kp = kslots[:, c0 * C : (c1 + 1) * C]  # (N, (g+1)*C) positions, T = dummy/padding
        kok = (
            torch.gather(valid, 1, kp).view(N, g + 1, C).transpose(0, 1).unsqueeze(-2)
        )  # (g+1, N, 1, C)
        cids = [
            torch.gather(chunk_of[:, rp], 1, kp).view(N, g + 1, C).transpose(0, 1).unsqueeze(-2)
            for rp in range(r)
        ]  # chunk of each key slot in the earlier rounds
        kp = kp.to(torch.int32).view(N, g + 1, C).transpose(0, 1).unsqueeze(-2)  # (g+1, N, 1, C)
        qp = kp[1:].transpose(-1, -2)  # (g, N, C, 1)
        out = []
        for h in (0, 1):  # previous chunk, own chunk
            kh = kp[h : h + g]  # (g, N, 1, C)
            bad = (kh >= qp) if causal else (kh == qp)  # later keys / the query itself
            bad |= ~kok[h : h + g]
            for cid in cids:  # keys already seen in an earlier round
                cq = cid[1:].transpose(-1, -2) - 0.5  # (g, N, C, 1)
                bad |= (
                    cid[h : h + g] - cq
                ).abs_() < 1  # key chunk == query chunk or the one before
            if c1 * C > T:  # padding slots as queries: nothing allowed
                bad[-1, :, T - (c1 - 1) * C :] = True
            out.append(bad)
        return out

    @staticmethod
    def _prepare(q, perm, key_valid, C):
        N, T, _ = q.shape
        valid = torch.ones(N, T + 1, dtype=torch.bool, device=q.device)  # (N, T+1), T: dummy
        valid[:, T] = False
        if key_valid is not None:
            valid[:, :T] = key_valid
        kslots = F.pad(perm, (C, 0), value=T)  # (N, nh, C + Tp): a dummy chunk, then the slots
        return valid, kslots

    @staticmethod
    def forward(ctx, q, k, v, perm, rank, key_valid, causal, C, scale):
        """Returns the attention output over the union of all rounds' keys (N, T, Dv) and
        its log-sum-exp (N, T), -inf for a query with no key."""
        N, T, D = q.shape
        Dv = v.shape[-1]
        nh, Tp = perm.shape[1], perm.shape[2]
        nC = Tp // C
        valid, kslots = _LSHCore._prepare(q, perm, key_valid, C)
        # chunk of every position in every round; the dummy row T is far from every chunk
        chunk_of = F.pad((rank // C).to(q.dtype), (0, 1), value=-4.0)  # (N, nh, T+1)
        o = lse = None  # the rounds merged so far: (N, T, Dv), (N, T)
        tiny = torch.finfo(q.dtype).tiny
        masks = []
        keep = any(ctx.needs_input_grad[:3])  # the masks are kept for the backward pass only
        for r in range(nh):
            ks_r = kslots[:, r]  # (N, C + Tp)
            o_s = q.new_empty(nC, N, C, Dv)  # sorted, chunk-major
            lse_s = q.new_empty(nC, N, C, 1)
            for c0, c1 in _LSHCore._blocks(N, nC, C):
                g = c1 - c0
                qs, ks, vs = _LSHCore._block_inputs(c0, c1, ks_r, q, k, v, C, scale)
                bad = _LSHCore._masks(c0, c1, r, ks_r, valid, chunk_of, causal, T, C)
                s0 = torch.matmul(qs, ks[:g].transpose(-1, -2)).masked_fill_(bad[0], float("-inf"))
                s1 = torch.matmul(qs, ks[1:].transpose(-1, -2)).masked_fill_(bad[1], float("-inf"))
                m = torch.maximum(
                    s0.amax(-1, keepdim=True), s1.amax(-1, keepdim=True)
                )  # (g, N, C, 1)
                m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
                p0, p1 = torch.exp_(s0.sub_(m)), torch.exp_(s1.sub_(m))
                den = p0.sum(-1, keepdim=True).add_(p1.sum(-1, keepdim=True))
                out = o_s[c0:c1]  # contiguous slice, written in place
                torch.matmul(p0, vs[:g], out=out)
                out.view(g * N, C, Dv).baddbmm_(p1.view(g * N, C, C), vs[1:].reshape(g * N, C, Dv))
                out.div_(den.clamp_min(tiny))
                torch.add(den.log_(), m, out=lse_s[c0:c1])  # -inf where nothing is allowed
                if keep:
                    masks.append(bad)
            o_r = _LSHCore._unsort(o_s, rank[:, r], C)  # (N, T, Dv) position order
            lse_r = _LSHCore._unsort(lse_s, rank[:, r], C).squeeze(-1)  # (N, T)
            o, lse = (o_r, lse_r) if o is None else _merge(o, lse, o_r, lse_r)
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
        valid, kslots = _LSHCore._prepare(q, perm, key_valid, C)
        # every round's probabilities are relative to the merged log-sum-exp
        delta = (do * o).sum(-1) - dlse  # (N, T)
        lse_safe = torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))
        aux = torch.cat([do, lse_safe.unsqueeze(-1), delta.unsqueeze(-1)], -1).reshape(
            N * T, Dv + 2
        )
        dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
        for r in range(nh):
            ks_r = kslots[:, r]  # (N, C + Tp)
            dqs = q.new_empty(nC, N, C, D)  # sorted, chunk-major
            dks = q.new_zeros(nC + 1, N, C, D)  # behind the dummy chunk
            dvs = q.new_zeros(nC + 1, N, C, Dv)
            for c0, c1 in _LSHCore._blocks(N, nC, C):
                g = c1 - c0
                bad = next(masks)
                qs, ks, vs = _LSHCore._block_inputs(c0, c1, ks_r, q, k, v, C, scale)
                aux_c = aux.index_select(
                    0, _LSHCore._rows(ks_r[:, (c0 + 1) * C : (c1 + 1) * C], T, C)
                )
                aux_c = aux_c.view(g, N, C, Dv + 2)
                doc, lse_c, delta_c = aux_c[..., :Dv], aux_c[..., Dv : Dv + 1], aux_c[..., Dv + 1 :]
                dq_c = dqs[c0:c1]
                for h in (0, 1):  # previous chunk, own chunk
                    kh, vh = ks[h : h + g], vs[h : h + g]
                    s = torch.matmul(qs, kh.transpose(-1, -2)).masked_fill_(bad[h], float("-inf"))
                    p = torch.exp_(s.sub_(lse_c))  # (g, N, C, C)
                    dvs[c0 + h : c1 + h] += torch.matmul(p.transpose(-1, -2), doc)
                    ds = p.mul_(torch.matmul(doc, vh.transpose(-1, -2)).sub_(delta_c))  # dL/ds
                    dks[c0 + h : c1 + h] += torch.matmul(ds.transpose(-1, -2), qs)
                    if h == 0:
                        torch.matmul(ds, kh, out=dq_c)
                    else:
                        dq_c.view(g * N, C, D).baddbmm_(
                            ds.view(g * N, C, C), kh.reshape(g * N, C, D)
                        )
                dq_c.mul_(scale)
            dq += _LSHCore._unsort(dqs, rank[:, r], C)
            dk += _LSHCore._unsort(dks[1:], rank[:, r], C)
            dv += _LSHCore._unsort(dvs[1:], rank[:, r], C)
        return dq, dk, dv, None, None, None, None, None, None


def _merge(o1: Tensor, lse1: Tensor, o2: Tensor, lse2: Tensor) -> tuple[Tensor, Tensor]:
    """Combine two normalised softmax outputs over disjoint key sets: (N, T, Dv), (N, T)."""
    top = torch.maximum(lse1, lse2)
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    w1, w2 = torch.exp(lse1 - top), torch.exp(lse2 - top)  # (N, T), 0 for an empty set
    den = w1 + w2
    safe = torch.where(den > 0, den, torch.ones_like(den))
    # per-row factors first (small), then two passes over the outputs instead of four
    o = (o1 * (w1 / safe).unsqueeze(-1)).addcmul_(o2, (w2 / safe).unsqueeze(-1))
    return o, den.log_().add_(top)
