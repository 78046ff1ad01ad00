"""Numerics under stress, each result against a float64 implementation written here.

* Half-precision attention (bfloat16, float16) with scores of about 1e4 in every backend, with
  and without causality and masks: finite, and within a tolerance derived from the dtype.
* The windowed backend's fast banded path (interior blocks through the fused CPU flash kernel)
  at T = 1000-1024 with windows of 256-300, causal and bidirectional, float32 and bfloat16 (and
  half precision with scores of 1e4), forward and backward, each with a check that the fast
  path really ran.
* The native skinny product (attnkit.native): its error against float64 stays within the
  float32 error growth of a K-term sum, a bound tight enough that bfloat16-level errors fail it.
"""

from __future__ import annotations

import math
import os

import pytest
import torch

from attnkit import native
from attnkit.attention import attention, explain
from attnkit.attention.backends import windowed

# unit roundoff (half the spacing at 1.0) of each dtype
U = {
    torch.bfloat16: 2.0**-8,
    torch.float16: 2.0**-11,
    torch.float32: 2.0**-24,
}
U32 = U[torch.float32]
EPS32 = torch.finfo(torch.float32).eps  # 2^-23 = 2 * U32


# ------------------------------------------------------------------------------- reference
def reference(q, k, v, *, causal=False, window=None, mask=None, valid_key_mask=None, docs=None):
    """Attention in float64 from the definition: softmax(q k^T / sqrt(D) + mask) v, queries at
    the last Tq key positions, a query that may attend to nothing gives zeros. Also returns
    the largest |score| over allowed pairs (the tolerance depends on it)."""
    q, k, v = (t.double() for t in (q, k, v))
    rep = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(rep, dim=1)
    v = v.repeat_interleave(rep, dim=1)
    s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])  # (B, H, Tq, Tk)
    tq, tk = s.shape[-2:]
    i = torch.arange(tq)[:, None] + (tk - tq)  # query positions
    j = torch.arange(tk)[None, :]
    ok = torch.ones(s.shape, dtype=torch.bool)
    if causal:
        ok &= j <= i
    if window is not None:
        ok &= (i - j < window) & (j - i < (1 if causal else window))
    if mask is not None:
        ok &= mask
    if valid_key_mask is not None:
        ok &= valid_key_mask[:, None, None, :]
    if docs is not None:
        ok &= docs[:, None, tk - tq :, None] == docs[:, None, None, :]
    s = s.masked_fill(~ok, -math.inf)
    m = s.amax(-1, keepdim=True)
    p = torch.exp(s - torch.where(torch.isfinite(m), m, torch.zeros_like(m)))
    denom = p.sum(-1, keepdim=True)
    out = (p / torch.where(denom > 0, denom, torch.ones_like(denom))) @ v
    return out, s.masked_fill(~ok, 0).abs().max().item()


def score_error(max_score: float, norm_product: float = 0.0, head_dim: int = 64) -> float:
    """A bound on how far a backend's float32 score may be from the exact one.

    Rounding a score of size S, and the fused kernels' exp2(s * log2 e - max * log2 e), move it
    by a few float32 roundings: 2 * u32 * S. Unless the inputs make q.k exact in float32 (the
    half-precision tests below), the D-term product adds the usual float32 error growth of a
    sum, about sqrt(D) roundings of its largest terms: sqrt(D) * u32 * scale * |q_i| |k_j|
    (``norm_product`` = the largest scale * |q_i| |k_j|; the same law as the native product's
    tolerance at the end of this file)."""
    return 2.0 * U32 * max_score + math.sqrt(head_dim) * U32 * norm_product


def attention_tolerance(dtype: torch.dtype, score_err: float, max_v: float) -> float:
    """The largest error a correct backend may make, from the precision it works in.

    * the scores: every backend computes them and exp(s - max) in float32; a score error of
      ``score_err`` (see `score_error`) changes the weights, relatively, by at most about
      2 * score_err, and the output, a convex combination of the values, by that times max|v|;
    * the low-precision steps: the fused kernels round the weights to the dtype before the
      product with v (u, the dtype's unit roundoff), and every backend rounds the output to
      the dtype (u): 2 * u * max|v|.

    A factor 2 on the whole is the margin. With scores up to 3.5e4 and |v| <= 4.3 this is about
    0.13 for bfloat16 and 0.07 for float16 (errors measured: 0.004-0.008 and 0.0005-0.001, the
    rounding of the output); a score rounded to bfloat16 (spacing 64 at 1e4) or overflowing
    float16 misses it by orders of magnitude (2.6 and NaN before the windowed backend computed
    its scores in float32).
    """
    return 2.0 * (2.0 * U[dtype] + 2.0 * score_err) * max_v


def _large_score_inputs(dtype, B=2, Hq=4, Hkv=2, T=80, D=64, seed=0):
    """q, k, v whose scores q.k / sqrt(D) are about 1e4 (standard deviation 6e3, largest 3.5e4).

    q = 256 * (integers in [-8, 8]), k = integers in [-8, 8]: exact in bfloat16 and float16, and
    every partial sum of q.k is an integer below 2^24, so q.k is exact in float32 and
    1/sqrt(64) = 1/8 is exact: only the softmax and the rounding to the dtype can err. The
    product before scaling reaches 2.5e5-2.8e5, beyond float16's 65504.
    """
    g = torch.Generator().manual_seed(seed)
    q = 256.0 * torch.randint(-8, 9, (B, Hq, T, D), generator=g)
    k = torch.randint(-8, 9, (B, Hkv, T, D), generator=g).double()
    v = torch.randn(B, Hkv, T, D, generator=g, dtype=torch.float64)
    return q.to(dtype), k.to(dtype), v.to(dtype)


def _masks(kind: str, B: int, Hq: int, T: int):
    """Keyword arguments of ``attention`` (and of ``reference``) for a mask kind."""
    g = torch.Generator().manual_seed(1)
    if kind == "none":
        return {}, {}
    if kind == "mask":  # dense (B, 1, Tq, Tk), one query with no key at all
        m = torch.rand(B, 1, T, T, generator=g) > 0.3
        m[0, 0, 5] = False
        return {"mask": m}, {"mask": m}
    if kind == "padding":  # the second sequence is padded after 50 tokens
        vkm = torch.ones(B, T, dtype=torch.bool)
        vkm[1, 50:] = False
        return {"valid_key_mask": vkm}, {"valid_key_mask": vkm}
    if kind == "documents":  # packed documents of 30, 20 and 30 tokens
        docs = torch.tensor([0] * 30 + [1] * 20 + [2] * 30).repeat(B, 1)
        return {"document_ids": docs}, {"docs": docs}
    raise AssertionError(kind)


def _check_large_scores(dtype, backend, causal, masks, window=None):
    q, k, v = _large_score_inputs(dtype)
    B, Hq, T, _ = q.shape
    kw, ref_kw = _masks(masks, B, Hq, T)
    with torch.no_grad():
        out = attention(q, k, v, causal=causal, window=window, backend=backend, **kw)
    ref, max_score = reference(q, k, v, causal=causal, window=window, **ref_kw)
    assert out.dtype == dtype and out.shape == ref.shape
    assert torch.isfinite(out).all(), f"{backend} {dtype}: non-finite output"
    assert max_score > 1e4, max_score  # the stress is there
    err = (out.double() - ref).abs().max().item()
    tol = attention_tolerance(dtype, score_error(max_score), v.abs().max().item())
    assert err <= tol, f"{backend} {dtype} causal={causal} {masks}: error {err:.3g} > {tol:.3g}"
    return err, tol


DTYPES = [torch.bfloat16, torch.float16]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("backend", ["math", "sdpa"])
@pytest.mark.parametrize("causal", [False, True], ids=["bidirectional", "causal"])
@pytest.mark.parametrize("masks", ["none", "mask", "padding", "documents"])
def test_large_scores_dense_backends(dtype, backend, causal, masks):
    _check_large_scores(dtype, backend, causal, masks)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("causal", [False, True], ids=["bidirectional", "causal"])
@pytest.mark.parametrize("masks", ["none", "padding", "documents"])
def test_large_scores_windowed_backend(dtype, causal, masks):
    _check_large_scores(dtype, "windowed", causal, masks, window=24)


FLEX_DEFAULT = [(torch.bfloat16, True, "none"), (torch.float16, False, "padding")]


@pytest.mark.parametrize(
    "dtype,causal,masks",
    [
        pytest.param(
            d,
            c,
            m,
            marks=() if (d, c, m) in FLEX_DEFAULT else pytest.mark.slow,
            id=f"{str(d)[6:]}-{'causal' if c else 'bidirectional'}-{m}",
        )
        for d in DTYPES
        for c in (False, True)
        for m in ("none", "mask", "padding", "documents")
    ],
)
def test_large_scores_flex_backend(dtype, causal, masks, request):
    """Each case compiles FlexAttention once (seconds): two in the default run, all slow."""
    if request.node.get_closest_marker("slow"):
        # past torch.compile's recompile limit (8 graphs: one per shape and mask kind) flex
        # would run uncompiled; start afresh so that the compiled kernel is what is tested
        torch._dynamo.reset()
    _check_large_scores(dtype, "flex", causal, masks)


# ------------------------------------------------------------------ the fast banded path
@pytest.fixture
def fast_band_runs(monkeypatch):
    """The (first, last + 1) interior blocks of every forward of the windowed backend's fast
    path (``_FastBand``: one fused CPU flash call over the band windows, with the band's pattern
    as its mask), in order."""
    runs: list[tuple[int, int]] = []
    real = windowed._FastBand.forward

    def counting(self, *args, **kwargs):
        runs.append((self.lo, self.hi))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(windowed._FastBand, "forward", counting)
    return runs


def _check_fast_band(q, k, v, causal, window, runs, exact_products=False):
    """The windowed backend on (q, k, v) against the float64 reference, through the fast path
    for at least two interior blocks."""
    assert explain(q, k, v, causal=causal, window=window).backend == "windowed"
    with torch.no_grad():
        out = attention(q, k, v, causal=causal, window=window)
    blocks = -(-q.shape[2] // windowed.WINDOW_QUERY_BLOCK_INFERENCE)  # under no_grad
    assert len(runs) == 1, f"the fast path ran {len(runs)} times, expected once"
    lo, hi = runs[0]
    assert 0 < lo and hi - lo >= 2 and hi <= blocks, (lo, hi, blocks)
    ref, max_score = reference(q, k, v, causal=causal, window=window)
    assert out.dtype == q.dtype and torch.isfinite(out).all()
    score_err = score_error(max_score)
    if not exact_products:  # general inputs: the product's error growth counts too
        scale = 1.0 / math.sqrt(q.shape[-1])
        norms = scale * q.double().norm(dim=-1).max() * k.double().norm(dim=-1).max()
        score_err = score_error(max_score, norms.item(), q.shape[-1])
    tol = attention_tolerance(q.dtype, score_err, v.abs().max().item())
    err = (out.double() - ref).abs().max().item()
    assert err <= tol, f"fast band {q.dtype} causal={causal} w={window}: {err:.3g} > {tol:.3g}"
    return err, tol


def _band_inputs(T, seed, D=64):
    g = torch.Generator().manual_seed(seed)
    # scores of a few units (std 2): attention spread over tens of keys, each of which counts
    q = 2.0 * torch.randn(1, 2, T, D, generator=g)
    k, v = torch.randn(1, 2, T, D, generator=g), torch.randn(1, 2, T, D, generator=g)
    return q, k, v, torch.randn(1, 2, T, D, generator=g)


# (T, window, dtype); T = 1000 ends in a partial block; a window of 48 is narrower than a query
# block (64 without a gradient, 128 with one); the rest of the grid runs as slow
BAND_DEFAULT = {
    (1024, 256, "float32"),
    (1024, 256, "bfloat16"),
    (1000, 280, "float32"),
    (1024, 48, "float32"),
}
BAND_CASES = [
    pytest.param(
        T,
        w,
        getattr(torch, d),
        marks=() if (T, w, d) in BAND_DEFAULT else pytest.mark.slow,
        id=f"{T}-{w}-{d}",
    )
    for T, w in [(1024, 256), (1024, 300), (1000, 280), (1024, 48), (1000, 129)]
    for d in ("float32", "bfloat16")
]


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
@pytest.mark.parametrize("T,window,dtype", BAND_CASES)
def test_fast_band_path_matches_float64(dtype, causal, T, window, fast_band_runs):
    q, k, v, _ = _band_inputs(T, window + causal)
    _check_fast_band(q.to(dtype), k.to(dtype), v.to(dtype), causal, window, fast_band_runs)


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
@pytest.mark.parametrize(
    "T,window", [(1024, 256), (1024, 48), pytest.param(1000, 280, marks=pytest.mark.slow)]
)
def test_fast_band_path_gradients_match_float64(causal, T, window, monkeypatch):
    """The fast path's own backward (fused CPU flash backward over the band windows) against
    float64 autograd through the reference."""
    runs = []
    real = windowed._FastBand.backward
    monkeypatch.setattr(
        windowed._FastBand, "backward", lambda self, *a: runs.append(1) or real(self, *a)
    )
    q, k, v, dout = _band_inputs(T, window + causal)
    mine = [t.clone().requires_grad_() for t in (q, k, v)]
    attention(*mine, causal=causal, window=window).backward(dout)
    assert len(runs) == 1, "the fast path's backward did not run"
    exact = [t.double().requires_grad_() for t in (q, k, v)]
    reference(*exact, causal=causal, window=window)[0].backward(dout.double())
    for name, a, b in zip("qkv", mine, exact):
        # each gradient entry sums about 2 * window float32 terms (keys for dq, queries for
        # dk and dv): sqrt(2w) roundings of the largest, 4 for the chain of products
        tol = 4.0 * math.sqrt(2 * window) * EPS32 * b.grad.abs().max().item()
        err = (a.grad.double() - b.grad).abs().max().item()
        assert err <= tol, f"d{name}: error {err:.3g} > {tol:.3g}"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
def test_fast_band_path_with_large_scores(dtype, causal, fast_band_runs):
    q, k, v = _large_score_inputs(dtype, B=1, Hq=2, Hkv=1, T=1024, seed=3)  # and GQA
    _check_fast_band(q, k, v, causal, 256, fast_band_runs, exact_products=True)


# ------------------------------------------------------------------- the native product
def _native_or_skip() -> None:
    """The compiled kernel, or: a failure under CI=true (a CI machine has a compiler, so a
    missing kernel there is a broken build, not a reason to test less), a skip elsewhere."""
    if native.available():
        return
    why = f"the native kernel is unavailable: {native.status()}"
    if os.environ.get("CI", "").strip().lower() in ("1", "true", "yes"):
        pytest.fail(why + " (CI=true: the kernel must build here)")
    pytest.skip(why)


def native_tolerance(x, w, bias=None, scale=None):
    """Per element (N, M): sqrt(K) * eps32 * (|x| |w|^T * |scale| + |bias|)_ij.

    A float32 sum of K products errs by at most about K * eps32/2 times the sum of the
    products' magnitudes, and, with rounding errors of either sign, typically by sqrt(K) of
    them: the kernel's blocked FMA sums do (measured: 0.3 of this at K = 8, 0.002 at K = 16384).
    The result rounded to bfloat16 errs by up to 2^-8 |y_ij|, at least 3.8 times this
    everywhere tested (see the test), so this tolerance tells float32 sums from bfloat16 ones.
    """
    mag = x.double().abs() @ w.double().abs().T  # (N, M)
    if scale is not None:
        mag = mag * scale.double().abs()
    if bias is not None:
        mag = mag + bias.double().abs()
    return math.sqrt(x.shape[1]) * EPS32 * mag


def _within(got, ref, tol) -> bool:
    return bool(((got.double() - ref).abs() <= tol).all())


@pytest.mark.parametrize("K", [8, 13, 64, 771, 3072, 8192, 16384])
@pytest.mark.parametrize("wtype", ["float32", "bfloat16", "int8"])
@pytest.mark.parametrize("N", [1, 4, 9])
def test_native_product_error_grows_like_float32(K, wtype, N):
    _native_or_skip()
    M = 67  # odd: the two-row blocks and the row left over
    g = torch.Generator().manual_seed(K * 10 + N)
    x = torch.randn(N, K, generator=g)
    bias = torch.randn(M, generator=g)
    scale = None
    if wtype == "int8":  # weight-only int8: one scale per output row
        w = torch.randint(-127, 128, (M, K), generator=g, dtype=torch.int8)
        scale = torch.rand(M, generator=g) / 100 + 1e-3
    else:
        w = torch.randn(M, K, generator=g).to(getattr(torch, wtype))
    got = native.skinny_linear(x, w, bias, scale)
    assert got is not None and got.dtype == torch.float32 and got.shape == (N, M)
    ref = x.double() @ w.double().T  # (N, M), from the same (rounded) weights
    if scale is not None:
        ref = ref * scale.double()
    ref = ref + bias.double()
    tol = native_tolerance(x, w, bias, scale)
    err = (got.double() - ref).abs()
    assert _within(got, ref, tol), f"worst error {(err / tol).max().item():.3g} x the tolerance"
    # the check has teeth: float32 sums rounded through bfloat16 fail it at this K
    through_bf16 = got.to(torch.bfloat16)
    assert not _within(through_bf16, ref, tol), "a bfloat16-level result passed the tolerance"
    # and so do the kernel's results with the bias left out
    assert _within(native.skinny_linear(x, w, None, scale), ref - bias.double(), tol)
