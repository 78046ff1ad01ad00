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
counted once (its score is lowered by log of the number of rounds that saw it), so more rounds
can only add keys and the result tends to dense shared-QK attention.

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
from ._gathered import GatherSpec, gathered_attention


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
            buckets = F.pad(buckets, (0, Tp - T), value=n_buckets)  # padding sorts last
            perm = torch.sort(buckets, dim=-1, stable=True).indices  # (N, nh, Tp) sorted -> position
            rank = torch.empty_like(perm).scatter_(-1, perm, torch.arange(Tp, device=dev).expand_as(perm))
            pos = torch.where(perm < T, perm, torch.full_like(perm, -1)).view(N, nh, nC, C)
            qpos = pos.reshape(N, nh * nC, C)  # (N, G, C)
            if nC > 1:  # each chunk also looks one chunk back, within its round
                prev = torch.cat([torch.full_like(pos[:, :, :1], -1), pos[:, :, :-1]], 2)
                kpos = torch.cat([prev, pos], -1).reshape(N, nh * nC, 2 * C)  # (N, G, 2C)
            else:
                kpos = qpos
            chunk_of = rank[..., :T] // C  # (N, nh, T) chunk of each position in each round

        bias_fn = None
        if nh > 1:
            def bias_fn(g0, g1, qp, kp):
                # -log(number of rounds in which key kp is visible to query qp)
                n, g, cq, ck = qp.shape[0], qp.shape[1], qp.shape[2], kp.shape[2]
                qpc, kpc = qp.clamp_min(0).reshape(n, -1), kp.clamp_min(0).reshape(n, -1)
                count = torch.zeros(n, g, cq, ck, dtype=qf.dtype, device=dev)  # (N, g, Cq, Ck)
                for r in range(nh):
                    cq_r = torch.gather(chunk_of[:, r], 1, qpc).view(n, g, cq, 1)
                    ck_r = torch.gather(chunk_of[:, r], 1, kpc).view(n, g, 1, ck)
                    diff = cq_r - ck_r
                    count += (diff == 0) | (diff == 1)
                return count.clamp_min_(1).log_().neg_()

        spec = GatherSpec(scale=default_scale(D), causal=causal, exclude_self=True, bias_fn=bias_fn)
        o, lse = gathered_attention(qf, kf, vf, qpos, kpos, kv, spec)  # (N, G, C, Dv), (N, G, C)

        # back to positions: row (n, r, rank[n, r, t]) of the sorted results holds position t
        idx = (torch.arange(N * nh, device=dev).view(N, nh, 1) * Tp + rank[..., :T]).reshape(-1)
        o = o.reshape(N * nh * Tp, Dv).index_select(0, idx).view(N, nh, T, Dv)
        lse = lse.reshape(N * nh * Tp).index_select(0, idx).view(N, nh, T)

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
