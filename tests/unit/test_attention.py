"""attnkit.attention.attention against a float64 reference written here, independent of attnkit.

The reference builds the allowed (query, key) pairs with explicit position arithmetic and runs
softmax attention in float64; rows with nothing to attend to are defined as zeros.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attnkit.attention import attention, explain

ALL_BACKENDS = ["math", "sdpa", "windowed", "auto"]


# ----------------------------------------------------------------------------- reference
def ref_slopes(h: int) -> torch.Tensor:
    def geo(n):
        return [2.0 ** (-8.0 * (i + 1) / n) for i in range(n)]

    p = 2 ** int(math.log2(h))
    s = geo(p) + geo(2 * p)[0::2][: h - p]
    return torch.tensor(s, dtype=torch.float64)


def ref_allowed(
    B, H, Tq, Tk, causal=False, window=None, valid_key_mask=None, document_ids=None, mask=None
):
    off = Tk - Tq
    p = torch.arange(Tq)[:, None] + off  # query positions
    j = torch.arange(Tk)[None, :]  # key positions
    allowed = torch.ones(Tq, Tk, dtype=torch.bool)
    if causal:
        allowed &= j <= p
    if window is not None:
        allowed &= (p - j < window) if causal else ((p - j).abs() < window)
    allowed = allowed.expand(B, H, Tq, Tk).clone()
    if valid_key_mask is not None:
        allowed &= valid_key_mask[:, None, None, :]
    if document_ids is not None:
        allowed &= (document_ids[:, off:, None] == document_ids[:, None, :])[:, None]
    if mask is not None:
        allowed &= mask
    return allowed


def reference(
    q,
    k,
    v,
    *,
    causal=False,
    window=None,
    valid_key_mask=None,
    document_ids=None,
    mask=None,
    bias=None,
    scale=None,
):
    """float64 attention; returns (out, weights)."""
    q, k, v = q.double(), k.double(), v.double()
    B, H, Tq, D = q.shape
    Tk = k.shape[2]
    rep = H // k.shape[1]
    k = k.repeat_interleave(rep, dim=1)
    v = v.repeat_interleave(rep, dim=1)
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    s = torch.einsum("bhqd,bhkd->bhqk", q, k) * scale
    if isinstance(bias, str):
        qpos = torch.arange(Tq, dtype=torch.float64)[:, None] + (Tk - Tq)
        kpos = torch.arange(Tk, dtype=torch.float64)[None, :]
        s = s - ref_slopes(H)[:, None, None] * (qpos - kpos).abs()
    elif bias is not None:
        s = s + bias.double()
    allowed = ref_allowed(B, H, Tq, Tk, causal, window, valid_key_mask, document_ids, mask)
    s = s.masked_fill(~allowed, float("-inf"))
    w = torch.softmax(s, dim=-1)
    w = torch.where(allowed.any(-1, keepdim=True), w, torch.zeros_like(w))
    return torch.einsum("bhqk,bhkd->bhqd", w, v), w


def make(B, Hq, Hkv, Tq, Tk, D, dtype=torch.float32, requires_grad=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, Hq, Tq, D, generator=g).to(dtype)
    k = torch.randn(B, Hkv, Tk, D, generator=g).to(dtype)
    v = torch.randn(B, Hkv, Tk, D, generator=g).to(dtype)
    for t in (q, k, v):
        t.requires_grad_(requires_grad)
    return q, k, v


def tol(dtype, backend):
    if dtype == torch.bfloat16:
        return 2e-2
    return 1e-5 if backend == "math" else 2e-5


# ----------------------------------------------------------------------------- forward
CASES = [
    # B, Hq, Hkv, Tq, Tk, D, kwargs
    (2, 4, 4, 1, 1, 8, dict()),
    (2, 4, 4, 17, 17, 8, dict(causal=True)),
    (1, 4, 2, 113, 113, 59, dict(causal=True)),
    (2, 2, 1, 267, 267, 64, dict()),
    (2, 4, 2, 17, 113, 64, dict(causal=True)),  # KV-cache alignment, Tq < Tk
    (1, 4, 4, 1, 267, 8, dict(causal=True)),
    (2, 4, 2, 113, 113, 59, dict(causal=True, window=9)),
    (1, 2, 2, 267, 267, 64, dict(causal=False, window=33)),
    (1, 2, 1, 267, 267, 64, dict(causal=True, window=130)),
    (2, 4, 1, 17, 113, 8, dict(causal=True, window=40)),
    (2, 3, 3, 113, 113, 64, dict(causal=True, bias="alibi")),
    (2, 6, 2, 17, 17, 59, dict(bias="alibi")),
    (2, 4, 4, 113, 113, 64, dict(causal=True, window=20, bias="alibi")),
]


def _extra(kind, B, Tq, Tk, H, seed=1):
    g = torch.Generator().manual_seed(seed)
    if kind == "none":
        return {}
    if kind == "padding":
        kpm = torch.rand(B, Tk, generator=g) > 0.25
        kpm[:, -1] = True
        return dict(valid_key_mask=kpm)
    if kind == "documents":
        doc = torch.sort(torch.randint(0, 4, (B, Tk), generator=g), dim=-1).values
        return dict(document_ids=doc)
    if kind == "mask":
        return dict(mask=torch.rand(B, 1, Tq, Tk, generator=g) > 0.3)
    raise AssertionError(kind)


def _applicable(backend, case_kw, extra=None):
    """The windowed backend serves sliding windows without dense masks; the others serve all."""
    return backend != "windowed" or (case_kw.get("window") is not None and extra != "mask")


FORWARD_PARAMS = [
    (backend, extra, case)
    for case, c in enumerate(CASES)
    for extra in ["none", "padding", "documents", "mask"]
    for backend in ALL_BACKENDS
    if _applicable(backend, c[-1], extra)
]


@pytest.mark.parametrize("backend,extra,case", FORWARD_PARAMS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_forward_matches_float64_reference(backend, extra, case, dtype):
    B, Hq, Hkv, Tq, Tk, D, kw = CASES[case]
    kw = dict(kw, **_extra(extra, B, Tq, Tk, Hq))
    q, k, v = make(B, Hq, Hkv, Tq, Tk, D, dtype)
    out = attention(q, k, v, backend=backend, **kw)
    ref, _ = reference(q, k, v, **kw)
    assert out.dtype == dtype and out.shape == (B, Hq, Tq, D)
    err = (out.double() - ref).abs().max().item()
    assert err <= tol(dtype, backend), f"{backend} max abs error {err:.3g}"


@pytest.mark.parametrize("backend", ["math", "sdpa", "auto"])
def test_float_bias_tensor(backend):
    q, k, v = make(2, 4, 2, 17, 17, 8)
    bias = torch.randn(2, 1, 17, 17)
    out = attention(q, k, v, bias=bias, causal=True, backend=backend)
    ref, _ = reference(q, k, v, bias=bias, causal=True)
    assert (out.double() - ref).abs().max().item() <= 2e-5


def test_custom_scale():
    q, k, v = make(1, 2, 2, 17, 17, 59)
    for backend in ("math", "sdpa"):
        out = attention(q, k, v, scale=0.3, backend=backend)
        ref, _ = reference(q, k, v, scale=0.3)
        assert (out.double() - ref).abs().max().item() <= 2e-5


def test_return_weights():
    q, k, v = make(2, 4, 2, 17, 30, 8)
    kpm = torch.rand(2, 30, generator=torch.Generator().manual_seed(3)) > 0.3
    out, w = attention(q, k, v, causal=True, valid_key_mask=kpm, return_weights=True)
    ref, ref_w = reference(q, k, v, causal=True, valid_key_mask=kpm)
    assert w.shape == (2, 4, 17, 30)
    assert (w.double() - ref_w).abs().max().item() <= 1e-6
    assert (out.double() - ref).abs().max().item() <= 1e-5
    rows = w.sum(-1)
    assert torch.allclose(rows[rows > 0], torch.ones_like(rows[rows > 0]), atol=1e-6)


def test_kv_cache_alignment_equals_slice_of_full_pass():
    q, k, v = make(2, 4, 2, 50, 50, 16)
    full = attention(q, k, v, causal=True, window=12)
    last = attention(q[:, :, -7:], k, v, causal=True, window=12)
    assert (full[:, :, -7:] - last).abs().max().item() <= 1e-6


def test_document_ids_equal_separate_sequences():
    """Packed documents attend exactly as if each were run alone (independent reference)."""
    lengths = [5, 11, 3, 17]
    T = sum(lengths)
    q, k, v = make(1, 2, 2, T, T, 8)
    doc = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))[None]
    for backend in ("math", "sdpa"):
        out = attention(q, k, v, causal=True, document_ids=doc, backend=backend)
        start = 0
        for n in lengths:
            sl = slice(start, start + n)
            alone = attention(q[:, :, sl], k[:, :, sl], v[:, :, sl], causal=True, backend="math")
            assert (out[:, :, sl] - alone).abs().max().item() <= 1e-6
            start += n


# ----------------------------------------------------------------------------- gradients
GRAD_CASES = [
    (2, 4, 2, 17, 17, 8, dict(causal=True)),
    (1, 2, 1, 113, 113, 59, dict(causal=True, window=9)),
    (2, 2, 2, 267, 267, 64, dict(causal=False, window=130)),
    (1, 4, 4, 17, 113, 8, dict(causal=True, window=40, bias="alibi")),
    (2, 4, 2, 113, 113, 16, dict(bias="alibi")),
]


@pytest.mark.parametrize(
    "backend,case",
    [(b, i) for i, c in enumerate(GRAD_CASES) for b in ALL_BACKENDS if _applicable(b, c[-1])],
)
@pytest.mark.parametrize("extra", ["none", "padding", "documents"])
def test_gradients_match_float64_reference(backend, extra, case):
    B, Hq, Hkv, Tq, Tk, D, kw = GRAD_CASES[case]
    kw = dict(kw, **_extra(extra, B, Tq, Tk, Hq))
    q, k, v = make(B, Hq, Hkv, Tq, Tk, D, requires_grad=True)
    go = torch.randn(B, Hq, Tq, D, generator=torch.Generator().manual_seed(7))
    out = attention(q, k, v, backend=backend, **kw)
    grads = torch.autograd.grad(out, (q, k, v), go)
    q64, k64, v64 = (t.detach().double().requires_grad_(True) for t in (q, k, v))
    ref, _ = reference(q64, k64, v64, **kw)
    ref_grads = torch.autograd.grad(ref, (q64, k64, v64), go.double())
    for name, g, r in zip("qkv", grads, ref_grads):
        err = (g.double() - r).abs().max().item()
        assert err <= 5e-5, f"d{name} max abs error {err:.3g}"


GRADCHECK_KW = [
    dict(causal=True),
    dict(causal=True, window=3, bias="alibi"),
    dict(causal=False, window=4),
    dict(causal=True, window=5, document_ids=torch.tensor([[0, 0, 0, 1, 1, 1, 1, 2, 2]])),
    dict(causal=True, document_ids=torch.tensor([[0, 0, 0, 1, 1, 1, 1, 2, 2]])),
]


@pytest.mark.parametrize(
    "kw,backend",
    [(kw, b) for kw in GRADCHECK_KW for b in ("math", "windowed") if _applicable(b, kw)],
)
def test_gradcheck_float64(kw, backend):
    q, k, v = make(1, 2, 1, 9, 9, 5, torch.float64, requires_grad=True)
    kpm = torch.tensor([[True] * 8 + [False]])
    fn = lambda q, k, v: attention(q, k, v, valid_key_mask=kpm, backend=backend, **kw)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (q, k, v))


def test_gradcheck_windowed_fast_path_float64():
    """Long enough for the fused interior blocks: window >= 2 blocks of 16 queries."""
    import attnkit.attention.backends.windowed as b

    q, k, v = make(1, 1, 1, 80, 80, 4, torch.float64, requires_grad=True)
    for causal in (True, False):
        fn = lambda q, k, v, causal=causal: b.windowed_attention(  # noqa: E731
            q,
            k,
            v,
            b.MaskSpec(80, 80, causal=causal, window=33),
            alibi_slopes=None,
            scale=0.5,
            dropout_p=0.0,
            block=16,
        )
        spec = b.MaskSpec(80, 80, causal=causal, window=33)
        assert b._FastBand.build(q, spec, b._Band(spec, 16), None, 0.0) is not None
        assert torch.autograd.gradcheck(fn, (q, k, v))


# ----------------------------------------------------------------------------- empty rows
@pytest.mark.parametrize("backend", ["math", "sdpa", "windowed", "auto"])
def test_fully_masked_rows_are_zero_with_zero_gradients(backend):
    q, k, v = make(2, 2, 2, 40, 40, 8, requires_grad=True)
    kpm = torch.ones(2, 40, dtype=torch.bool)
    kpm[1] = False  # batch 1: every key is padding
    kpm[0, :10] = False  # batch 0: the first 10 queries (causal) see only padding
    out = attention(q, k, v, causal=True, window=20, valid_key_mask=kpm, backend=backend)
    assert not torch.isnan(out).any()
    assert torch.equal(out[1], torch.zeros_like(out[1]))
    assert torch.equal(out[0, :, :10], torch.zeros_like(out[0, :, :10]))
    assert out[0, :, 10:].abs().sum() > 0
    gq, gk, gv = torch.autograd.grad(out.sum(), (q, k, v))
    for g in (gq, gk, gv):
        assert not torch.isnan(g).any()
    assert torch.equal(gq[1], torch.zeros_like(gq[1]))
    assert torch.equal(gq[0, :, :10], torch.zeros_like(gq[0, :, :10]))
    assert torch.equal(gk[1], torch.zeros_like(gk[1])) and torch.equal(
        gv[1], torch.zeros_like(gv[1])
    )


def test_fully_masked_rows_user_mask_sdpa():
    q, k, v = make(1, 2, 2, 6, 6, 8, requires_grad=True)
    mask = torch.ones(1, 1, 6, 6, dtype=torch.bool)
    mask[..., 2, :] = False
    out = attention(q, k, v, mask=mask, backend="sdpa")
    assert torch.equal(out[:, :, 2], torch.zeros_like(out[:, :, 2]))
    (gq,) = torch.autograd.grad(out.sum(), (q,))
    assert torch.equal(gq[:, :, 2], torch.zeros_like(gq[:, :, 2]))


# ----------------------------------------------------------------------------- dropout
@pytest.mark.parametrize(
    "backend,kw",
    [("math", {}), ("sdpa", {}), ("windowed", dict(window=6)), ("math", dict(window=6))],
)
def test_dropout_keeps_expected_value(backend, kw):
    """Averaged over many independent draws, dropout on the weights leaves the output unbiased."""
    torch.manual_seed(0)
    q, k, v = make(1, 2, 2, 12, 12, 8)
    n = 4000
    qb, kb, vb = (t.expand(n, -1, -1, -1).contiguous() for t in (q, k, v))
    p = 0.3
    dropped = attention(qb, kb, vb, causal=True, dropout_p=p, backend=backend, **kw)
    clean = attention(q, k, v, causal=True, backend="math", **kw)
    assert not torch.allclose(dropped[0], clean[0], atol=1e-3)  # dropout did something
    mean = dropped.mean(0, keepdim=True)
    # standard error of the mean, from the empirical spread of the draws
    se = dropped.std(0, keepdim=True) / math.sqrt(n)
    z = ((mean - clean).abs() / (se + 1e-6)).max().item()
    assert z < 6.0, f"dropout mean off by {z:.1f} standard errors"


def test_windowed_dropout_backward_uses_forward_mask():
    """Same seed -> same mask: the analytic gradient matches finite differences."""
    q, k, v = make(1, 1, 1, 40, 40, 4, torch.float64, requires_grad=True)

    def fn(q, k, v):
        torch.manual_seed(123)
        return attention(q, k, v, causal=True, window=8, dropout_p=0.4, backend="windowed")

    assert torch.autograd.gradcheck(fn, (q, k, v))


# ----------------------------------------------------------------------------- flex
@pytest.fixture(scope="module")
def flex_inputs():
    return make(2, 4, 2, 300, 300, 16)


@pytest.mark.parametrize(
    "kw",
    [
        dict(causal=True, window=40),
        dict(causal=False, bias="alibi", valid_key_mask="pad"),
    ],
)
def test_flex_matches_reference(flex_inputs, kw):
    q, k, v = flex_inputs
    kw = dict(kw)
    if kw.get("valid_key_mask") == "pad":
        kpm = torch.rand(2, 300, generator=torch.Generator().manual_seed(5)) > 0.2
        kpm[1] = False  # a fully padded sequence: zeros, not NaN
        kw["valid_key_mask"] = kpm
    with torch.no_grad():
        out = attention(q, k, v, backend="flex", **kw)
    ref, _ = reference(q, k, v, **kw)
    assert not torch.isnan(out).any()
    assert (out.double() - ref).abs().max().item() <= 2e-5


# ----------------------------------------------------------------------------- properties
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    B=st.integers(1, 2),
    hkv=st.integers(1, 2),
    rep=st.integers(1, 3),
    tq=st.integers(1, 24),
    extra_k=st.integers(0, 10),
    D=st.sampled_from([1, 3, 8, 16]),
    causal=st.booleans(),
    window=st.one_of(st.none(), st.integers(1, 12)),
    use_pad=st.booleans(),
    alibi=st.booleans(),
    seed=st.integers(0, 10_000),
)
def test_property_backends_agree_with_reference(
    B, hkv, rep, tq, extra_k, D, causal, window, use_pad, alibi, seed
):
    tk = tq + extra_k
    q, k, v = make(B, hkv * rep, hkv, tq, tk, D, seed=seed)
    kw = dict(causal=causal, window=window, bias="alibi" if alibi else None)
    if use_pad:
        kw["valid_key_mask"] = (
            torch.rand(B, tk, generator=torch.Generator().manual_seed(seed)) > 0.3
        )
    ref, _ = reference(q, k, v, **kw)
    backends = ["math", "sdpa", "auto"] + (["windowed"] if window is not None else [])
    for backend in backends:
        out = attention(q, k, v, backend=backend, **kw)
        assert not torch.isnan(out).any()
        assert (out.double() - ref).abs().max().item() <= 2e-5, backend


# ----------------------------------------------------------------------------- errors
def _err(exc, match, *args, **kwargs):
    with pytest.raises(exc, match=match):
        attention(*args, **kwargs)


def test_errors_name_the_bad_value():
    q, k, v = make(2, 4, 2, 5, 5, 8)
    _err(ValueError, r"q must be 4-D.*\(4, 5, 8\)", q[0], k, v)
    _err(TypeError, "q must be a torch.Tensor", [1, 2], k, v)
    _err(TypeError, "floating tensor.*torch.int64", q.long(), k, v)
    _err(TypeError, "share a dtype.*float64", q, k.double(), v)
    _err(
        ValueError,
        r"multiple of key/value heads \(3\)",
        q,
        torch.randn(2, 3, 5, 8),
        torch.randn(2, 3, 5, 8),
    )
    _err(ValueError, "head dims differ.*D=7", q, torch.randn(2, 2, 5, 7), v)
    _err(ValueError, "batch sizes differ", q, k[:1], v[:1])
    _err(ValueError, "must be on one device.*meta", q, k.to("meta"), v)
    _err(ValueError, "window must be a positive int.*0", q, k, v, window=0)
    _err(ValueError, "window must be a positive int.*True", q, k, v, window=True)
    _err(ValueError, "dropout_p.*1.5", q, k, v, dropout_p=1.5)
    _err(ValueError, "scale.*-1", q, k, v, scale=-1.0)
    _err(ValueError, "backend must be one of.*'fast'", q, k, v, backend="fast")
    _err(TypeError, "mask must be a bool tensor.*float32", q, k, v, mask=torch.ones(5, 5))
    _err(
        ValueError,
        r"mask of shape \(3, 5\) is not broadcastable",
        q,
        k,
        v,
        mask=torch.ones(3, 5, dtype=torch.bool),
    )
    _err(
        ValueError,
        r"valid_key_mask must have shape \(B, Tk\) = \(2, 5\).*\(2, 4\)",
        q,
        k,
        v,
        valid_key_mask=torch.ones(2, 4, dtype=torch.bool),
    )
    _err(
        TypeError,
        "valid_key_mask must be a bool tensor",
        q,
        k,
        v,
        valid_key_mask=torch.ones(2, 5),
    )
    _err(
        TypeError, "document_ids must be an integer tensor", q, k, v, document_ids=torch.ones(2, 5)
    )
    _err(ValueError, "bias must be 'alibi'.*'rope'", q, k, v, bias="rope")
    _err(ValueError, r"bias of shape \(7,\)", q, k, v, bias=torch.ones(7))
    _err(
        ValueError,
        "does not materialise attention weights",
        q,
        k,
        v,
        backend="sdpa",
        return_weights=True,
    )
    _err(ValueError, "windowed' needs window", q, k, v, backend="windowed")
    _err(
        ValueError,
        r"queries \(5\) longer than keys \(3\)",
        q,
        k[:, :, :3],
        v[:, :, :3],
        causal=True,
    )
    qg, kg, vg = make(2, 4, 2, 5, 5, 8, requires_grad=True)
    _err(ValueError, "no backward pass on CPU", qg, kg, vg, backend="flex", causal=True)


# ----------------------------------------------------------------------------- explain
def meta(B, H, T, D=64, hkv=None, grad=False):
    q = torch.empty(B, H, T, D, device="meta", requires_grad=grad)
    k = torch.empty(B, hkv or H, T, D, device="meta", requires_grad=grad)
    return q, k, k


def test_explain_picks_the_documented_backend():
    assert explain(*meta(1, 8, 4096), causal=True).backend == "sdpa"
    assert explain(*meta(1, 8, 16384), causal=True, window=512).backend == "windowed"
    assert explain(*meta(1, 8, 16384, grad=True), causal=True, window=512).backend == "windowed"
    assert explain(*meta(1, 8, 128), causal=True, return_weights=True).backend == "math"
    # a large ALiBi bias at inference goes to FlexAttention, in training to SDPA with a dense bias
    assert explain(*meta(1, 8, 16384), causal=True, bias="alibi").backend == "flex"
    assert explain(*meta(1, 8, 16384, grad=True), causal=True, bias="alibi").backend == "sdpa"
    plan = explain(*meta(1, 8, 64), causal=True, window=512)
    assert plan.backend == "sdpa" and "mask" in plan.reason
    assert "fused" in str(explain(*meta(1, 8, 64)))


# ----------------------------------------------------------------------------- plan cache
def test_plan_cache_returns_the_same_plan_for_a_repeated_decode_step():
    from attnkit._util.env import debug
    from attnkit.attention import planner

    if debug():
        pytest.skip("ATTNKIT_DEBUG=1 plans every call afresh")
    q, k, v = make(1, 12, 12, 1, 257, 64)  # one query against 257 cached keys
    with torch.no_grad():
        first = explain(q, k, v)
        out = attention(q, k, v)
        again = explain(q, k, v)
    assert first is again and first.backend == "sdpa"
    assert first == planner.Plan("sdpa", "no mask: fused scaled_dot_product_attention")
    ref, _ = reference(q, k, v)
    assert (out.double() - ref).abs().max().item() <= 1e-5
    # a different flag is a different signature, and a bad call is never served from the cache
    assert explain(q, k, v, causal=True) is not first
    _err(ValueError, "window must be a positive int.*True", q, k, v, window=True)
    explain(q, k, v, window=1)
    _err(ValueError, "window must be a positive int.*True", q, k, v, window=True)


def test_explain_gives_the_same_plans_as_before():
    """Backend and reason of the documented cases, as the planner gave them before plans were
    cached (asked twice: planned, then from the cache)."""
    cases = [
        (
            meta(1, 8, 4096),
            dict(causal=True),
            "sdpa",
            "plain causal mask: fused scaled_dot_product_attention with is_causal",
        ),
        (
            meta(1, 8, 16384),
            dict(causal=True, window=512),
            "windowed",
            "sliding window 512 << "
            "16384 keys: blocked band kernel, O(N*w) time and memory, with its own backward",
        ),
        (
            meta(1, 8, 128),
            dict(causal=True, return_weights=True),
            "math",
            "attention weights were requested; only the math backend materialises them",
        ),
        (
            meta(1, 8, 16384),
            dict(causal=True, bias="alibi"),
            "flex",
            "a dense mask/bias would "
            "take 8192 MiB; FlexAttention skips empty blocks and computes the mask per block",
        ),
        (
            meta(1, 8, 16384, grad=True),
            dict(causal=True, bias="alibi"),
            "sdpa",
            "fused scaled_dot_product_attention with a dense mask/bias (8192.0 MiB)",
        ),
        (
            meta(1, 8, 64),
            dict(causal=True, window=512),
            "sdpa",
            "fused scaled_dot_product_attention with a dense mask/bias (0.0 MiB)",
        ),
        (meta(1, 8, 64), dict(), "sdpa", "no mask: fused scaled_dot_product_attention"),
        (meta(1, 8, 64), dict(backend="math"), "math", "requested explicitly"),
    ]
    for args, kw, backend, reason in cases:
        for _ in range(2):
            plan = explain(*args, **kw)
            assert (plan.backend, plan.reason) == (backend, reason), kw
