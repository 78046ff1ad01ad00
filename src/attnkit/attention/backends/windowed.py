"""The windowed backend: a blocked band kernel for sliding windows with its own backward
(flash-style recomputation), so memory is O(N * w) in training as well as inference.

One cohesive job kept whole (about 420 lines): the band geometry, the fused interior blocks, the
masked edge blocks and the forward and backward passes share their data structures.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from attnkit.attention.backends._common import NEG_INF, repeat_kv, softmax_dtype
from attnkit.attention.masks import MaskSpec

# ---------------------------------------------------------------------------- windowed
# Query rows per block: the band window of a block holds block + window - 1 keys, so a smaller
# block wastes fewer products on masked keys but gives the fused kernels smaller tiles. By
# measurement at N=16384, w=512, causal, fp32 (2 threads): forward 97 / 99 / 110 / 124 ms for
# blocks of 32 / 64 / 128 / 256, forward+backward 665 / 602 / 527 / 537 ms.
WINDOW_QUERY_BLOCK = 128  # when a gradient is needed
WINDOW_QUERY_BLOCK_INFERENCE = 64  # when none is
_CHUNK_BYTES = 32 * 2**20  # scores per chunk of query blocks


class _Band:
    """Geometry of the blocked band: query block b sees padded keys [b*c, b*c + L)."""

    def __init__(self, spec: MaskSpec, block: int):
        w = spec.window
        if w is None:
            raise ValueError("the windowed backend needs window=<int>, got window=None")
        self.w = w
        self.c = block
        self.left = w - 1
        self.right = 0 if spec.causal else w - 1
        self.L = self.c + self.left + self.right
        self.nb = -(-spec.q_len // self.c)
        self.tq, self.tk, self.off = spec.q_len, spec.k_len, spec.offset
        # padded key axis: `left` zeros, the keys, then enough zeros for the last block
        self.pad_right = self.nb * self.c - self.tq + self.right
        self.start = self.off  # padded index of block 0's first key

    def windows(self, x: Tensor, b0: int, b1: int) -> Tensor:
        """Key windows of blocks b0..b1-1 from unpadded keys x (B, H, Tk, D): (B, H, n, L, D).

        Only the keys these blocks touch are sliced out; zeros stand in past either end.
        """
        a = self.start + b0 * self.c - self.left  # first key position touched
        e = self.start + (b1 - 1) * self.c + self.L - self.left  # one past the last
        seg = x[:, :, max(a, 0) : min(e, self.tk)]
        if a < 0 or e > self.tk:
            seg = F.pad(seg, (0, 0, max(0, -a), max(0, e - self.tk)))
        return seg.unfold(2, self.L, self.c).transpose(-1, -2)

    def query_blocks(self, x: Tensor, b0: int, b1: int) -> Tensor:
        """Queries (or per-query rows) of blocks b0..b1-1: (B, H, n, c, D), zero-padded at the end."""
        seg = x[:, :, b0 * self.c : min(b1 * self.c, self.tq)]
        short = (b1 - b0) * self.c - seg.shape[2]
        if short:
            seg = F.pad(seg, (0, 0, 0, short))
        return seg.reshape(seg.shape[0], seg.shape[1], b1 - b0, self.c, seg.shape[-1])

    def key_index(self, b0: int, b1: int, device) -> Tensor:
        """(n, L) padded key indices of blocks b0..b1-1."""
        base = self.start + torch.arange(b0, b1, device=device)[:, None] * self.c
        return base + torch.arange(self.L, device=device)[None, :]


def _band_static(spec: MaskSpec, band: _Band, device) -> Tensor:
    """(c, L) allowed pattern inside any block: depends only on relative offsets."""
    i = torch.arange(band.c, device=device)[:, None]
    j = torch.arange(band.L, device=device)[None, :]
    rel = i + band.left - j  # query position minus key position
    if spec.causal:
        return (rel >= 0) & (rel < band.w)
    return rel.abs() < band.w


class _WindowedFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, spec, slopes, scale, dropout_p, seed, block):
        band = _Band(spec, block)
        fast = _FastBand.build(q, spec, band, slopes, dropout_p)
        out, lse = _windowed_forward(q, k, v, spec, band, slopes, scale, dropout_p, seed, fast)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.args = (spec, band, slopes, scale, dropout_p, seed, fast)
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, lse = ctx.saved_tensors
        spec, band, slopes, scale, dropout_p, seed, fast = ctx.args
        dq, dk, dv = _windowed_backward(
            q, k, v, out, lse, dout, spec, band, slopes, scale, dropout_p, seed, fast
        )
        return dq, dk, dv, None, None, None, None, None, None


_FLASH_CPU = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
_FLASH_CPU_BWD = getattr(
    torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu_backward", None
)


class _FastBand:
    """Interior blocks of a plain sliding window, computed with the fused CPU flash kernel.

    Query block b (first query position s) reads the keys of its band window
    [s - left, s - left + L) as one strided view of the keys (no copy), with the band's
    (c, L) pattern as an additive mask shared by every block: one fused call covers all the
    interior blocks.  Every row of the window has at least one key.  Blocks whose window
    crosses the sequence ends go through the general masked path.

    One call with a mask was measured against splitting the window into unmasked and
    triangular parts merged by log-sum-exp: at N=16384, w=512 the single call's forward took
    92 ms against 162 ms (the merge re-reads every partial output).
    """

    def __init__(self, spec: MaskSpec, band: _Band, lo: int, hi: int, device, dtype):
        self.lo, self.hi, self.c, self.L = lo, hi, band.c, band.L
        allowed = _band_static(spec, band, device)  # (c, L)
        zero = torch.zeros((), dtype=dtype, device=device)
        self.mask = torch.where(allowed, zero, torch.full((), NEG_INF, dtype=dtype, device=device))
        self.first = spec.offset + lo * band.c - band.left  # first key of the first window

    @staticmethod
    def build(q, spec: MaskSpec, band: _Band, slopes, dropout_p) -> _FastBand | None:
        if (
            _FLASH_CPU is None
            or q.device.type != "cpu"
            or not spec.structural_only
            or slopes is not None
            or dropout_p > 0
        ):
            return None
        c, w, off, tq, tk = band.c, band.w, spec.offset, spec.q_len, spec.k_len
        lo = max(0, -(-(w - 1 - off) // c))  # the first window starts at a key >= 0
        hi = tq // c
        if not spec.causal:
            # the last key of block b's window is off + b*c + c - 1 + w - 1 <= tk - 1
            hi = min(hi, (tk + 1 - off - w - c) // c + 1)
        if hi - lo < 1:
            return None
        return _FastBand(spec, band, lo, hi, q.device, q.dtype)

    def ranges(self, nb: int):
        """Block ranges left to the general path."""
        out = []
        if self.lo > 0:
            out.append((0, self.lo))
        if self.hi < nb:
            out.append((self.hi, nb))
        return out

    def views(self, q3, k3, v3):
        """Strided views of the interior queries (BH, n, c, D) and key/value windows (BH, n, L, D)."""
        bh, tq, d = q3.shape
        tk, dv = k3.shape[1], v3.shape[2]
        n, c, L = self.hi - self.lo, self.c, self.L
        qv = q3.as_strided((bh, n, c, d), (tq * d, c * d, d, 1), self.lo * c * d)
        kv = k3.as_strided((bh, n, L, d), (tk * d, c * d, d, 1), self.first * d)
        vv = v3.as_strided((bh, n, L, dv), (tk * dv, c * dv, dv, 1), self.first * dv)
        return qv, kv, vv

    def forward(self, q3, k3, v3, scale):
        qv, kv, vv = self.views(q3, k3, v3)
        out, lse = _FLASH_CPU(qv, kv, vv, 0.0, False, attn_mask=self.mask, scale=scale)
        return out, lse  # (BH, n, c, Dv), (BH, n, c)

    def backward(self, q3, k3, v3, out_v, lse_v, dout_v, scale, dk3, dv3):
        """Gradients of the interior blocks; dK/dV are accumulated into dk3/dv3 (BH, Tk, D).

        Processed in chunks of blocks so that the per-window key gradients, which overlap
        by (L - c) keys, never exist for the whole sequence at once.
        """
        qv, kv, vv = self.views(q3, k3, v3)
        n, c, L = self.hi - self.lo, self.c, self.L
        bh, d = q3.shape[0], q3.shape[2]
        per_block = bh * L * (d + v3.shape[2]) * 4
        step = max(1, _CHUNK_BYTES // max(per_block, 1))
        dq = torch.empty_like(qv)
        offsets = torch.arange(L, device=q3.device)[None, :]
        for b0 in range(0, n, step):
            b1 = min(n, b0 + step)
            sl = slice(b0, b1)
            gq, gk, gv = _FLASH_CPU_BWD(
                dout_v[:, sl],
                qv[:, sl],
                kv[:, sl],
                vv[:, sl],
                out_v[:, sl],
                lse_v[:, sl],
                0.0,
                False,
                attn_mask=self.mask,
                scale=scale,
            )
            base = self.first + torch.arange(b0, b1, device=q3.device)[:, None] * c
            idx = (base + offsets).reshape(-1)
            dk3.index_add_(1, idx, gk.reshape(bh, -1, d).to(dk3.dtype))
            dv3.index_add_(1, idx, gv.reshape(bh, -1, gv.shape[-1]).to(dv3.dtype))
            dq[:, sl] = gq
        return dq


def _chunks(band: _Band, batch: int, heads: int, ranges):
    """Split block ranges into chunks whose scores stay under _CHUNK_BYTES."""
    per_block = batch * heads * band.c * band.L * 4
    n = max(1, _CHUNK_BYTES // max(per_block, 1))
    for lo, hi in ranges:
        for b0 in range(lo, hi, n):
            yield b0, min(hi, b0 + n)


def _chunk_blocks(band: _Band, q: Tensor, k_rep: Tensor, v_rep: Tensor, ranges):
    """For each chunk of ``_chunks``: its block range b0:b1, key and value windows
    (B, H, n, L, D) and query blocks (B, H, n, c, D)."""
    for b0, b1 in _chunks(band, q.shape[0], q.shape[1], ranges):
        kw = band.windows(k_rep, b0, b1)  # (B, H, n, L, D)
        vw = band.windows(v_rep, b0, b1)  # (B, H, n, L, Dv)
        yield b0, b1, kw, vw, band.query_blocks(q, b0, b1)  # qb: (B, H, n, c, D)


class _BandContext:
    """Per-call tensors shared by forward and backward: padded keys, validity, bias."""

    def __init__(self, q, k, spec: MaskSpec, band: _Band, slopes: Tensor | None):
        device = q.device
        self.static = _band_static(spec, band, device)  # (c, L)
        kvalid = torch.ones(k.shape[0], spec.k_len, dtype=torch.bool, device=device)
        if spec.valid_key_mask is not None:
            kvalid = kvalid & spec.valid_key_mask.to(device)
        self.kvalid = F.pad(kvalid, (band.left, band.pad_right), value=False)  # (B, Tk')
        self.doc_k = self.doc_q = None
        if spec.document_ids is not None:
            doc = spec.document_ids.to(device)
            self.doc_k = F.pad(doc, (band.left, band.pad_right), value=-1)
            self.doc_q = F.pad(doc[:, spec.offset :], (0, band.nb * band.c - spec.q_len), value=-2)
        self.bias = None
        if slopes is not None:
            i = torch.arange(band.c, device=device)[:, None]
            j = torch.arange(band.L, device=device)[None, :]
            dist = (i + band.left - j).abs().to(torch.float32)
            self.bias = -(
                slopes.to(device=device, dtype=torch.float32)[:, None, None] * dist
            )  # (H, c, L)

    def allowed(self, band: _Band, b0: int, b1: int) -> Tensor:
        """(B, 1, n, c, L) bool."""
        idx = band.key_index(b0, b1, self.kvalid.device)  # (n, L)
        ok = self.static[None, None] & self.kvalid[:, idx][:, :, None, :]  # (B, n, c, L)
        if self.doc_k is not None and self.doc_q is not None:
            dk = self.doc_k[:, idx]  # (B, n, L)
            dq = self.doc_q[:, b0 * band.c : b1 * band.c].reshape(dk.shape[0], b1 - b0, band.c)
            ok = ok & (dq[..., :, None] == dk[..., None, :])
        return ok[:, None]


def _dropout_keep(shape, p: float, seed: int, chunk: int, device) -> Tensor:
    gen = torch.Generator(device=device)
    gen.manual_seed(seed * 1000003 + chunk)
    return torch.rand(shape, generator=gen, device=device) >= p


def _chunk_probs(ctx_t: _BandContext, band, qb, kw, b0, b1, scale, lse=None):
    """Scores -> probabilities for one chunk.  Returns (p, lse) in float32/64."""
    ct = softmax_dtype(qb.dtype)
    # the products in float32 (as the math backend and the fused kernels do): a bf16/fp16
    # product rounds large scores by far more than they differ (bf16 spacing at 1e4 is 64) and
    # overflows fp16 before the scale is applied (|q.k| = 1e4 * sqrt(64) > 65504)
    s = torch.matmul(qb.to(ct), kw.to(ct).transpose(-1, -2)) * scale  # (B, H, n, c, L)
    if ctx_t.bias is not None:
        s = s + ctx_t.bias[None, :, None].to(ct)
    allowed = ctx_t.allowed(band, b0, b1)
    s = s.masked_fill(~allowed, NEG_INF)
    if lse is None:
        m = s.amax(-1, keepdim=True)
        m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
        p = torch.exp(s - m)
        denom = p.sum(-1, keepdim=True)
        p = p / torch.where(denom > 0, denom, torch.ones_like(denom))
        lse = torch.where(denom > 0, m + torch.log(denom), torch.full_like(m, NEG_INF))
        return p, lse
    safe = torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))
    p = torch.exp(s - safe)  # masked entries are exp(-inf) = 0, empty rows are all 0
    return p, lse


def _windowed_forward(q, k, v, spec, band, slopes, scale, dropout_p, seed, fast):
    B, H, _, D = q.shape
    n_rep = H // k.shape[1]
    k_rep = repeat_kv(k, n_rep).contiguous()
    v_rep = repeat_kv(v, n_rep).contiguous()
    dv = v.shape[-1]
    out = torch.empty(B, H, band.nb, band.c, dv, dtype=q.dtype, device=q.device)
    lse = torch.empty(B, H, band.nb, band.c, 1, dtype=softmax_dtype(q.dtype), device=q.device)
    ranges = [(0, band.nb)]
    if fast is not None:
        q3 = q.contiguous().view(B * H, band.tq, D)
        o_f, l_f = fast.forward(q3, k_rep.view(B * H, -1, D), v_rep.view(B * H, -1, dv), scale)
        out[:, :, fast.lo : fast.hi] = o_f.view(B, H, -1, band.c, dv)
        lse[:, :, fast.lo : fast.hi] = l_f.view(B, H, -1, band.c, 1).to(lse.dtype)
        ranges = fast.ranges(band.nb)
    if ranges:
        ctx_t = _BandContext(q, k, spec, band, slopes)
        for b0, b1, kw, vw, qb in _chunk_blocks(band, q, k_rep, v_rep, ranges):
            p, chunk_lse = _chunk_probs(ctx_t, band, qb, kw, b0, b1, scale)
            if dropout_p > 0:
                p = p * _dropout_keep(p.shape, dropout_p, seed, b0, q.device) / (1 - dropout_p)
            # float32 sums, like the math backend
            out[:, :, b0:b1] = torch.matmul(p, vw.to(p.dtype))
            lse[:, :, b0:b1] = chunk_lse
    out = out.view(B, H, band.nb * band.c, dv)[:, :, : band.tq]
    return out, lse


def _windowed_backward(q, k, v, out, lse, dout, spec, band, slopes, scale, dropout_p, seed, fast):
    B, H, _, D = q.shape
    hkv = k.shape[1]
    n_rep = H // hkv
    dvd = v.shape[-1]
    ct = softmax_dtype(q.dtype)
    k_rep = repeat_kv(k, n_rep).contiguous()
    v_rep = repeat_kv(v, n_rep).contiguous()
    left = band.left
    # gradients w.r.t. the padded keys: [left zeros | keys | right zeros]
    dkp = torch.zeros(B, H, left + spec.k_len + band.pad_right, D, dtype=ct, device=q.device)
    dvp = torch.zeros(B, H, dkp.shape[2], dvd, dtype=ct, device=q.device)
    dq = torch.zeros(B, H, band.nb, band.c, D, dtype=ct, device=q.device)
    dout = dout.contiguous()
    ranges = [(0, band.nb)]
    if fast is not None:
        bh = B * H
        q3 = q.contiguous().view(bh, band.tq, D)
        n = fast.hi - fast.lo
        sl = slice(fast.lo * band.c, fast.hi * band.c)
        out_v = out.contiguous().view(bh, band.tq, dvd)[:, sl].reshape(bh, n, band.c, dvd)
        dout_v = dout.view(bh, band.tq, dvd)[:, sl].reshape(bh, n, band.c, dvd)
        lse_v = (
            lse[:, :, fast.lo : fast.hi]
            .reshape(bh, n, band.c)
            .to(torch.float32 if q.dtype != torch.float64 else q.dtype)
        )
        dk3 = dkp.view(bh, -1, D)[:, left : left + spec.k_len]
        dv3 = dvp.view(bh, -1, dvd)[:, left : left + spec.k_len]
        gq = fast.backward(
            q3,
            k_rep.view(bh, -1, D),
            v_rep.view(bh, -1, dvd),
            out_v,
            lse_v,
            dout_v,
            scale,
            dk3,
            dv3,
        )
        dq[:, :, fast.lo : fast.hi] = gq.view(B, H, n, band.c, D).to(ct)
        ranges = fast.ranges(band.nb)
    if ranges:
        ctx_t = _BandContext(q, k, spec, band, slopes)
        for b0, b1, kw, vw, qb in _chunk_blocks(band, q, k_rep, v_rep, ranges):
            p, _ = _chunk_probs(ctx_t, band, qb, kw, b0, b1, scale, lse=lse[:, :, b0:b1])
            do = band.query_blocks(dout, b0, b1).to(ct)
            delta = (do * band.query_blocks(out, b0, b1).to(ct)).sum(
                -1, keepdim=True
            )  # (B, H, n, c, 1)
            dp = torch.matmul(do, vw.to(ct).transpose(-1, -2))  # (B, H, n, c, L)
            if dropout_p > 0:
                keep = _dropout_keep(p.shape, dropout_p, seed, b0, q.device).to(ct) / (
                    1 - dropout_p
                )
                p_used = p * keep
                dp = dp * keep
            else:
                p_used = p
            ds = p * (dp - delta) * scale  # (B, H, n, c, L)
            dq[:, :, b0:b1] = torch.matmul(ds, kw.to(ct))
            dkw = torch.matmul(ds.transpose(-1, -2), qb.to(ct))  # (B, H, n, L, D)
            dvw = torch.matmul(p_used.transpose(-1, -2), do)
            idx = band.key_index(b0, b1, q.device).reshape(-1)
            dkp.index_add_(2, idx, dkw.reshape(B, H, -1, D))
            dvp.index_add_(2, idx, dvw.reshape(B, H, -1, dvw.shape[-1]))
    dq = dq.view(B, H, -1, D)[:, :, : band.tq].to(q.dtype)
    sl = slice(left, left + spec.k_len)
    dk = dkp[:, :, sl]
    dv = dvp[:, :, sl]
    if n_rep > 1:
        dk = dk.reshape(B, hkv, n_rep, spec.k_len, D).sum(2)
        dv = dv.reshape(B, hkv, n_rep, spec.k_len, dvd).sum(2)
    return dq, dk.to(k.dtype), dv.to(v.dtype)


def windowed_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    spec: MaskSpec,
    *,
    alibi_slopes: Tensor | None,
    scale: float,
    dropout_p: float,
    block: int | None = None,
) -> Tensor:
    """Sliding-window attention over blocks of queries; memory O(N * (window + block)).

    Args:
        q: queries (B, H, Tq, D).
        k: keys (B, Hkv, Tk, D); H a multiple of Hkv.
        v: values (B, Hkv, Tk, Dv).
        spec: the mask; ``spec.window`` must be set and ``spec.mask`` unset.
        alibi_slopes: (H,) ALiBi slopes, or None.
        scale: multiplies the scores.
        dropout_p: dropout on the attention weights.
        block: query rows per block; None: :data:`WINDOW_QUERY_BLOCK` when a gradient is
            needed, :data:`WINDOW_QUERY_BLOCK_INFERENCE` when none is (the faster by
            measurement for each).

    Examples:
        >>> out = windowed_attention(q, k, v, MaskSpec(T, T, causal=True, window=512), alibi_slopes=None, scale=D**-0.5, dropout_p=0.0)  # q, k, v (B, H, T, D)
    """
    if spec.window is None or spec.mask is not None:
        raise ValueError("windowed backend needs window=int and no dense mask")
    seed = int(torch.randint(0, 2**31 - 1, (1,)).item()) if dropout_p > 0 else 0
    if block is None:
        needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
        block = WINDOW_QUERY_BLOCK if needs_grad else WINDOW_QUERY_BLOCK_INFERENCE
    block = max(16, min(block, 1 << max(4, math.ceil(math.log2(max(spec.q_len, 1))))))
    return _WindowedFn.apply(q, k, v, spec, alibi_slopes, scale, dropout_p, seed, block)
