"""attention() and explain() with every argument drawn by hypothesis, good and bad.

Each case draws a call (shapes, dtypes, masks, document ids, windows, bias, dropout, scale,
backend, weights) and then, half of the time, one corruption of it (a wrong shape, dtype,
type, device or value). The call must either raise ValueError/TypeError with a one-line message
(a corrupted call always must), or return the right shape; a valid call on finite inputs must
match a float64 reference written here, and is never NaN. Empty batches, queries and keys
(B, Tq, Tk = 0) are valid: the result is empty, or zeros for queries with no keys.

NaN or inf inside q, k or v follows IEEE arithmetic (the outputs it reaches hold NaN or inf;
checking would cost a host sync on every call), with one exception PyTorch's fused CPU kernel
makes: a query whose scores are all NaN gets zeros, as if fully masked. With ``ATTNKIT_DEBUG=1``
attention() refuses non-finite q/k/v with a ValueError. All of this is checked here.

FlexAttention compiles for each new shape (seconds on CPU), so its calls are planned with
explain(), which validates exactly as attention() does; the slow profile runs a few for real.
"""

from __future__ import annotations

import math

import pytest
import torch
from _fuzz import SLOW, fuzz_settings, one_line, record
from hypothesis import given
from hypothesis import strategies as st

from attnkit._util.env import refresh_debug
from attnkit.attention import attention, explain

DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
BACKENDS = ["auto", "math", "sdpa", "windowed", "flex"]
TOL = {torch.float32: 2e-4, torch.float64: 1e-9, torch.bfloat16: 6e-2, torch.float16: 6e-3}

# the corruptions: each makes the call invalid, so it must be refused
CORRUPTIONS = [
    "q_list",
    "q_3d",
    "q_5d",
    "q_int",
    "k_dtype",
    "k_meta",
    "k_head_dim",
    "v_len",
    "batch",
    "heads_not_multiple",
    "zero_heads",
    "zero_head_dim",
    "mask_float",
    "mask_shape",
    "mask_5d",
    "mask_meta",
    "mask_list",
    "vkm_shape",
    "vkm_int",
    "doc_float",
    "doc_bool",
    "doc_shape",
    "doc_meta",
    "bias_int",
    "bias_shape",
    "bias_word",
    "bias_list",
    "bias_meta",
    "window_zero",
    "window_negative",
    "window_bool",
    "window_float",
    "window_str",
    "dropout_negative",
    "dropout_one",
    "dropout_nan",
    "dropout_str",
    "scale_zero",
    "scale_negative",
    "scale_nan",
    "scale_inf",
    "scale_str",
    "scale_bool",
    "scale_overflows_dtype",
    "backend_unknown",
    "backend_int",
    "causal_int",
    "causal_str",
    "weights_from_fused",
]


def broadcast_shape(draw, full: tuple[int, ...]) -> tuple[int, ...]:
    """A shape broadcastable to ``full`` (B, H, Tq, Tk), of 2 to 4 dims."""
    ndim = draw(st.integers(2, 4))
    tail = full[4 - ndim :]
    return tuple(d if draw(st.booleans()) else 1 for d in tail)


@st.composite
def calls(draw):
    B = draw(st.integers(0, 3))
    Hkv = draw(st.integers(1, 3))
    Hq = Hkv * draw(st.integers(1, 3))
    Tk = draw(st.integers(0, 9))
    Tq = draw(st.integers(0, Tk + 2))
    D = draw(st.integers(1, 8))
    Dv = draw(st.integers(1, 8))
    dtype = draw(st.sampled_from(DTYPES))
    kw: dict = {}
    kw["causal"] = draw(st.booleans())
    if draw(st.booleans()):
        kw["window"] = draw(st.one_of(st.integers(1, 12), st.integers(2**31, 2**80)))
    if draw(st.booleans()):
        kw["mask"] = ("mask", broadcast_shape(draw, (B, Hq, Tq, Tk)))
    if draw(st.booleans()):
        kw["valid_key_mask"] = ("vkm", (B, Tk))
    if draw(st.booleans()):
        kw["document_ids"] = ("doc", (B, Tk), draw(st.sampled_from([torch.int64, torch.int32])))
    bias = draw(st.sampled_from([None, "alibi", "tensor"]))
    if bias == "alibi":
        kw["bias"] = "alibi"
    elif bias == "tensor":
        kw["bias"] = ("bias", broadcast_shape(draw, (B, Hq, Tq, Tk)))
    if draw(st.booleans()):
        kw["dropout_p"] = draw(st.sampled_from([0.0, 0.1, 0.5, 0.999]))
    if draw(st.booleans()):
        kw["scale"] = draw(st.floats(0.01, 10.0))
    kw["backend"] = draw(st.sampled_from(BACKENDS))
    kw["return_weights"] = draw(st.booleans()) and draw(st.booleans())
    corruption = draw(st.sampled_from(CORRUPTIONS)) if draw(st.booleans()) else None
    seed = draw(st.integers(0, 2**16))
    return (B, Hq, Hkv, Tq, Tk, D, Dv, dtype), kw, corruption, seed


def build(shapes, kw, corruption, seed):
    """Real tensors for a drawn call, with ``corruption`` applied."""
    B, Hq, Hkv, Tq, Tk, D, Dv, dtype = shapes
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, dt=dtype):
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(dt)

    q, k, v = rand(B, Hq, Tq, D), rand(B, Hkv, Tk, D), rand(B, Hkv, Tk, Dv)
    kw = dict(kw)
    if isinstance(kw.get("mask"), tuple):
        kw["mask"] = torch.rand(kw["mask"][1], generator=g) < 0.7
    if isinstance(kw.get("valid_key_mask"), tuple):
        kw["valid_key_mask"] = torch.rand(B, Tk, generator=g) < 0.8
    if isinstance(kw.get("document_ids"), tuple):
        ids = torch.randint(0, 3, (B, Tk), generator=g).sort(-1).values
        kw["document_ids"] = ids.to(kw["document_ids"][2])
    if isinstance(kw.get("bias"), tuple):
        kw["bias"] = rand(*kw["bias"][1])
    c = corruption
    meta = torch.device("meta")
    if c == "q_list":
        q = q.tolist()
    elif c == "q_3d":
        q = q[0] if B else torch.zeros(Hq, Tq, D, dtype=dtype)
    elif c == "q_5d":
        q = q[None]
    elif c == "q_int":
        q = q.to(torch.int64)
    elif c == "k_dtype":
        k = k.to(torch.float64 if dtype != torch.float64 else torch.float32)
    elif c == "k_meta":
        k = k.to(meta)
    elif c == "k_head_dim":
        k = rand(B, Hkv, Tk, D + 1)
    elif c == "v_len":
        v = rand(B, Hkv, Tk + 1, Dv)
    elif c == "batch":
        k, v = rand(B + 1, Hkv, Tk, D), rand(B + 1, Hkv, Tk, Dv)
    elif c == "heads_not_multiple":
        k, v = rand(B, Hq + 1, Tk, D), rand(B, Hq + 1, Tk, Dv)
    elif c == "zero_heads":
        q, k, v = rand(B, 0, Tq, D), rand(B, 0, Tk, D), rand(B, 0, Tk, Dv)
    elif c == "zero_head_dim":
        q, k = rand(B, Hq, Tq, 0), rand(B, Hkv, Tk, 0)
    elif c == "mask_float":
        kw["mask"] = torch.ones(Tq, Tk)
    elif c == "mask_shape":
        kw["mask"] = torch.ones(Tq + 2, Tk + 3, dtype=torch.bool)
    elif c == "mask_5d":
        kw["mask"] = torch.ones(2, max(B, 1), Hq, Tq, Tk, dtype=torch.bool)
    elif c == "mask_meta":
        kw["mask"] = torch.ones(Tq, Tk, dtype=torch.bool, device=meta)
    elif c == "mask_list":
        kw["mask"] = [[True] * Tk] * Tq
    elif c == "vkm_shape":
        kw["valid_key_mask"] = torch.ones(B, Tk + 1, dtype=torch.bool)
    elif c == "vkm_int":
        kw["valid_key_mask"] = torch.ones(B, Tk, dtype=torch.int64)
    elif c == "doc_float":
        kw["document_ids"] = torch.zeros(B, Tk)
    elif c == "doc_bool":
        kw["document_ids"] = torch.zeros(B, Tk, dtype=torch.bool)
    elif c == "doc_shape":
        kw["document_ids"] = torch.zeros(B, Tk + 2, dtype=torch.long)
    elif c == "doc_meta":
        kw["document_ids"] = torch.zeros(B, Tk, dtype=torch.long, device=meta)
    elif c == "bias_int":
        kw["bias"] = torch.zeros(Tq, Tk, dtype=torch.int64)
    elif c == "bias_shape":
        kw["bias"] = torch.zeros(Tq + 1, Tk + 2)
    elif c == "bias_word":
        kw["bias"] = "relative"
    elif c == "bias_list":
        kw["bias"] = [0.0] * Tk
    elif c == "bias_meta":
        kw["bias"] = torch.zeros(Tq, Tk, device=meta)
    elif c == "window_zero":
        kw["window"] = 0
    elif c == "window_negative":
        kw["window"] = -3
    elif c == "window_bool":
        kw["window"] = True
    elif c == "window_float":
        kw["window"] = 2.0
    elif c == "window_str":
        kw["window"] = "4"
    elif c == "dropout_negative":
        kw["dropout_p"] = -0.1
    elif c == "dropout_one":
        kw["dropout_p"] = 1.0
    elif c == "dropout_nan":
        kw["dropout_p"] = math.nan
    elif c == "dropout_str":
        kw["dropout_p"] = "0.1"
    elif c == "scale_zero":
        kw["scale"] = 0.0
    elif c == "scale_negative":
        kw["scale"] = -1.0
    elif c == "scale_nan":
        kw["scale"] = math.nan
    elif c == "scale_inf":
        kw["scale"] = math.inf
    elif c == "scale_str":
        kw["scale"] = "0.5"
    elif c == "scale_bool":
        kw["scale"] = True
    elif c == "scale_overflows_dtype":
        kw["scale"] = 1e39 if dtype != torch.float64 else math.inf  # above the dtype's max
    elif c == "backend_unknown":
        kw["backend"] = "cuda"
    elif c == "backend_int":
        kw["backend"] = 1
    elif c == "causal_int":
        kw["causal"] = 1
    elif c == "causal_str":
        kw["causal"] = "yes"
    elif c == "weights_from_fused":
        kw["backend"], kw["return_weights"] = "sdpa", True
    return q, k, v, kw


def reference(q, k, v, kw):
    """float64 attention with the allowed pairs built from explicit positions."""
    q, k, v = q.double(), k.double(), v.double()
    B, Hq, Tq, D = q.shape
    Hkv, Tk = k.shape[1], k.shape[2]
    k = k.repeat_interleave(Hq // Hkv, dim=1)
    v = v.repeat_interleave(Hq // Hkv, dim=1)
    off = Tk - Tq
    p = torch.arange(Tq)[:, None] + off
    j = torch.arange(Tk)[None, :]
    allowed = torch.ones(B, Hq, Tq, Tk, dtype=torch.bool)
    if kw.get("causal"):
        allowed &= j <= p
    w = kw.get("window")
    if w is not None:
        w = min(w, Tq + Tk + 1)  # a torch comparison takes no int beyond int64
        allowed &= (p - j < w) if kw.get("causal") else ((p - j).abs() < w)
    if kw.get("valid_key_mask") is not None:
        allowed &= kw["valid_key_mask"][:, None, None, :]
    doc = kw.get("document_ids")
    if doc is not None:
        allowed &= (doc[:, off:, None] == doc[:, None, :])[:, None]
    if kw.get("mask") is not None:
        allowed &= kw["mask"]
    scale = kw.get("scale") or 1 / math.sqrt(D)
    scores = q @ k.transpose(-1, -2) * scale
    bias = kw.get("bias")
    if isinstance(bias, str):
        n = 2 ** int(math.log2(Hq))
        geo = [2.0 ** (-8.0 * (i + 1) / n) for i in range(n)]
        slopes = geo + [2.0 ** (-8.0 * (i + 1) / (2 * n)) for i in range(2 * n)][0::2][: Hq - n]
        scores = scores - torch.tensor(slopes, dtype=torch.float64)[:, None, None] * (p - j).abs()
    elif bias is not None:
        scores = scores + bias.double()
    scores = scores.masked_fill(~allowed, -math.inf)
    weights = torch.softmax(scores, dim=-1).nan_to_num(0.0)
    return weights @ v, weights


def run(q, k, v, kw):
    if kw.get("backend") == "flex" and not SLOW:
        return explain(q, k, v, **kw)
    return attention(q, k, v, **kw)


@given(calls())
@fuzz_settings(300)
def test_attention_refuses_bad_arguments_and_computes_good_ones(call):
    shapes, kw, corruption, seed = call
    q, k, v, kw = build(shapes, kw, corruption, seed)
    try:
        out = run(q, k, v, kw)
    except (ValueError, TypeError) as e:
        assert one_line(str(e)), repr(e)
        record("attention()", "refused")
        return
    assert corruption is None, f"{corruption} was accepted: {kw}"
    record("attention()", "accepted")
    if not isinstance(out, (torch.Tensor, tuple)):  # explain(): a Plan
        assert out.backend and out.reason
        return
    B, Hq, _, Tq, Tk, _, Dv, dtype = shapes
    got, weights = out if isinstance(out, tuple) else (out, None)
    assert got.shape == (B, Hq, Tq, Dv) and got.dtype == dtype
    if kw.get("dropout_p", 0.0) > 0:  # random: only finiteness can be checked
        assert torch.isfinite(got.float()).all()
        return
    want, want_w = reference(q, k, v, kw)
    tol = TOL[dtype]
    if kw.get("bias") is not None and dtype in (torch.bfloat16, torch.float16):
        tol *= 4  # the bias is rounded to the low precision before it is added
    if kw.get("bias") == "alibi":
        tol = max(tol, 2e-6)  # attnkit.positional.alibi_slopes are float32, even for float64
    torch.testing.assert_close(got.double(), want, atol=tol * 10, rtol=tol * 10)
    if weights is not None:
        assert weights.shape == (B, Hq, Tq, Tk)
        torch.testing.assert_close(weights.double(), want_w, atol=tol * 10, rtol=tol * 10)


@given(
    value=st.sampled_from(["nan", "inf", "-inf"]),
    where=st.sampled_from(["q", "k", "v"]),
    backend=st.sampled_from(["auto", "math", "sdpa"]),
    causal=st.booleans(),
)
@fuzz_settings(25)
def test_non_finite_inputs_follow_ieee_and_debug_mode_refuses_them(
    value, where, backend, causal, monkeypatch
):
    g = torch.Generator().manual_seed(0)
    t = {n: torch.randn(1, 2, 5, 4, generator=g) for n in "qkv"}
    t[where][0, 0, 2, 1] = float(value)
    with monkeypatch.context() as m:
        m.delenv("ATTNKIT_DEBUG", raising=False)
        refresh_debug()
        out = attention(t["q"], t["k"], t["v"], causal=causal, backend=backend)
    assert out.shape == (1, 2, 5, 4)
    want, _ = reference(t["q"], t["k"], t["v"], {"causal": causal})
    torch.testing.assert_close(out[0, 1].double(), want[0, 1], atol=1e-4, rtol=1e-4)
    fused = explain(t["q"], t["k"], t["v"], causal=causal, backend=backend).backend == "sdpa"
    if value == "nan" and where == "q" and fused:
        # PyTorch's fused CPU kernel treats a query whose scores are all NaN as fully masked
        assert (out[0, 0, 2] == 0).all(), "documented: zeros for that query"
    else:
        assert not torch.isfinite(out[0, 0]).all(), "a non-finite input vanished without a trace"
    record("attention() non-finite", "accepted")
    with monkeypatch.context() as m:
        m.setenv("ATTNKIT_DEBUG", "1")
        refresh_debug()
        try:
            with pytest.raises(ValueError, match=f"{where} holds"):
                attention(t["q"], t["k"], t["v"], causal=causal, backend=backend)
        finally:
            m.delenv("ATTNKIT_DEBUG")
            refresh_debug()
    record("attention() non-finite", "refused")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(0, 2, 4, 4), (1, 2, 0, 4), (1, 2, 4, 0), (1, 2, 0, 0)])
def test_empty_batch_queries_or_keys_give_empty_or_zero_results(backend, shape):
    B, H, Tq, Tk = shape
    q, k, v = torch.randn(B, H, Tq, 8), torch.randn(B, H, Tk, 8), torch.randn(B, H, Tk, 3)
    kw = {"window": 2} if backend == "windowed" else {}
    if kw and Tq > Tk:  # a window places the queries at the last Tq of the Tk positions
        with pytest.raises(ValueError, match="longer than keys"):
            attention(q, k, v, backend=backend, **kw)
        record("attention() empty", "refused")
        return
    out = attention(q, k, v, backend=backend, **kw)  # even flex: nothing to compile
    assert out.shape == (B, H, Tq, 3)
    assert (out == 0).all()
    if backend in ("auto", "math"):
        q.requires_grad_(True)
        out, w = attention(q, k, v, backend=backend, return_weights=True)
        assert w.shape == (B, H, Tq, Tk) and (w == 0).all()
        out.sum().backward()
        assert q.grad is not None and (q.grad == 0).all()
    record("attention() empty", "accepted")


@pytest.mark.gpu
@given(
    where=st.sampled_from(["k", "v", "mask", "valid_key_mask", "document_ids", "bias"]),
    backend=st.sampled_from(["auto", "math", "sdpa"]),
)
@fuzz_settings(20)
def test_a_tensor_on_another_device_is_refused(where, backend):
    if not torch.cuda.is_available():
        pytest.fail("marked gpu: needs CUDA")
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    q, k, v = (torch.randn(1, 2, 4, 8, device=cuda) for _ in range(3))
    kw = {
        "mask": torch.ones(4, 4, dtype=torch.bool, device=cuda),
        "valid_key_mask": torch.ones(1, 4, dtype=torch.bool, device=cuda),
        "document_ids": torch.zeros(1, 4, dtype=torch.long, device=cuda),
        "bias": torch.zeros(4, 4, device=cuda),
    }
    if where in ("k", "v"):
        k, v = (k.to(cpu), v) if where == "k" else (k, v.to(cpu))
        kw = {}
    else:
        kw = {where: kw[where].to(cpu)}
    with pytest.raises(ValueError, match="device|is on"):
        attention(q, k, v, backend=backend, **kw)
    record("attention() devices", "refused")
