"""Every registered attention variant and MultiHeadAttention, with arguments drawn by hypothesis.

Variants: construction parameters (unknown names, wrong types, out-of-range values) and forward
inputs (shapes, dtypes, devices, key masks, empty batches and sequences, extras a variant does
not take). MultiHeadAttention: every construction argument, and forward inputs (x, masks,
document ids, positions, a cache). Each case raises ValueError/TypeError with a one-line
message, or returns the expected shape with finite values.

The exact variants (bigbird, local: exact softmax under the mask ``dense_mask`` describes) are
also checked against a float64 reference over that mask.
"""

from __future__ import annotations

import math

import torch
from _fuzz import fuzz_settings, one_line, record
from hypothesis import given
from hypothesis import strategies as st

from attnkit.attention import MultiHeadAttention, variants
from attnkit.attention.kv_cache import KVCache

NAMES = variants.names()

BAD_VALUES = st.sampled_from(
    [0, -1, -(2**40), True, False, 1.5, math.nan, math.inf, "4", None, [2], object()]
)
GOOD_INTS = st.integers(1, 6)


def mostly(good, bad=BAD_VALUES):
    """``good`` three times in four."""
    return st.one_of(good, good, good, bad)


@st.composite
def variant_params(draw):
    name = draw(st.one_of(st.sampled_from(NAMES), st.sampled_from(["", "LSH", "flash", 3, None])))
    params: dict = {}
    if name in NAMES:
        valid = variants.params(name)
        for p, default in valid.items():
            if draw(st.booleans()):
                if p == "seed":
                    params[p] = draw(st.integers(0, 100))
                elif p == "flex_min_len" or default is None:
                    params[p] = draw(st.one_of(st.none(), GOOD_INTS))
                else:
                    params[p] = draw(GOOD_INTS)
        if draw(st.booleans()) and valid:
            params[draw(st.sampled_from(sorted(valid)))] = draw(BAD_VALUES)
        if draw(st.integers(0, 5)) == 0:
            params["window"] = 4  # not a parameter of any variant
    return name, params


def _refused(surface: str, e: Exception) -> None:
    assert one_line(str(e)), repr(e)
    record(surface, "refused")


@given(variant_params())
@fuzz_settings(120)
def test_variant_construction(case):
    name, params = case
    try:
        kernel = variants.get(name, **params)
    except (ValueError, TypeError) as e:
        _refused("variants.get()", e)
        return
    assert kernel.name == name
    record("variants.get()", "accepted")


def reference(q, k, v, allowed):
    scores = q.double() @ k.double().transpose(-1, -2) / math.sqrt(q.shape[-1])
    w = torch.softmax(scores.masked_fill(~allowed, -math.inf), -1).nan_to_num(0.0)
    return w @ v.double()


FORWARD_BAD = [
    *[None] * 8,
    "q_3d",
    "k_shape",
    "v_len",
    "q_int",
    "k_dtype",
    "k_meta",
    "vkm_shape",
    "vkm_float",
    "causal_int",
    "mask",
    "document_ids",
    "return_weights",
    "window",
    "alibi",
    "zero_head_dim",
    "heads_not_multiple",
]


@given(
    name=st.sampled_from(NAMES),
    B=st.integers(0, 2),
    Hkv=st.integers(1, 2),
    rep=st.integers(1, 2),
    T=st.integers(0, 40),
    D=st.sampled_from([1, 4, 8]),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    causal=st.booleans(),
    with_vkm=st.booleans(),
    bad=st.sampled_from(FORWARD_BAD),
)
@fuzz_settings(100)
def test_variant_forward(name, B, Hkv, rep, T, D, dtype, causal, with_vkm, bad):
    small = {"bigbird": {"block_size": 4}, "local": {"block_size": 4}, "lsh": {"chunk_size": 4}}
    kernel = variants.get(name, **small.get(name, {}))
    g = torch.Generator().manual_seed(T * 7 + B)
    H = Hkv * rep
    q = torch.randn(B, H, T, D, generator=g).to(dtype)
    k = torch.randn(B, Hkv, T, D, generator=g).to(dtype)
    v = torch.randn(B, Hkv, T, D, generator=g).to(dtype)
    kw: dict = {"causal": causal}
    if with_vkm:
        vkm = torch.rand(B, T, generator=g) < 0.8
        kw["valid_key_mask"] = vkm
    meta = torch.device("meta")
    if bad == "q_3d":
        q = q.reshape(B * H, T, D)
    elif bad == "k_shape":
        k = torch.randn(B, Hkv, T + 1, D)
    elif bad == "v_len":
        v = torch.randn(B, Hkv, T + 2, D)
    elif bad == "q_int":
        q = q.long()
    elif bad == "k_dtype":
        k = k.half()
    elif bad == "k_meta":
        k = k.to(meta)
    elif bad == "vkm_shape":
        kw["valid_key_mask"] = torch.ones(B, T + 1, dtype=torch.bool)
    elif bad == "vkm_float":
        kw["valid_key_mask"] = torch.ones(B, T)
    elif bad == "causal_int":
        kw["causal"] = 1
    elif bad == "mask":
        kw["mask"] = torch.ones(T, T, dtype=torch.bool)
    elif bad == "document_ids":
        kw["document_ids"] = torch.zeros(B, T, dtype=torch.long)
    elif bad == "return_weights":
        kw["return_weights"] = True
    elif bad == "window":
        kw["window"] = 3
    elif bad == "alibi":
        kw["alibi"] = True
    elif bad == "zero_head_dim":
        q, k, v = q[..., :0], k[..., :0], v[..., :0]
    elif bad == "heads_not_multiple":
        k, v = torch.randn(B, H + 1, T, D).to(dtype), torch.randn(B, H + 1, T, D).to(dtype)
    try:
        with torch.no_grad():
            out = kernel(q, k, v, **kw)
    except (ValueError, TypeError) as e:
        _refused("variant forward", e)
        return
    assert bad is None, f"{bad} was accepted by {name}"
    assert out.shape == (B, H, T, D)
    assert torch.isfinite(out).all(), f"{name} gave non-finite output for finite input"
    if kernel.exact and T:
        allowed = kernel.dense_mask(T, causal).to(torch.bool)  # (T, T)
        allowed = allowed.expand(B, H, T, T).clone()
        if with_vkm:
            allowed &= kw["valid_key_mask"][:, None, None, :]
        want = reference(q, k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1), allowed)
        torch.testing.assert_close(out.double(), want, atol=1e-4, rtol=1e-4)
    record("variant forward", "accepted")


MHA_GOOD = {
    "d_model": st.sampled_from([8, 12, 16]),
    "n_heads": st.sampled_from([1, 2, 4]),
    "n_kv_heads": st.sampled_from([None, 1, 2]),
    "causal": st.booleans(),
    "window": st.one_of(st.none(), GOOD_INTS),
    "positional": st.sampled_from([None, "rope", "alibi"]),
    "dropout": st.sampled_from([0.0, 0.1]),
    "backend": st.sampled_from(["auto", "math", "sdpa"]),
    "rope_layout": st.sampled_from(["half", "interleaved"]),
    "head_dim": st.sampled_from([None, 2, 4]),
    "variant": st.sampled_from([None, *NAMES]),
    "variant_params": st.sampled_from([None, {}]),
}
MHA_BAD = {
    "d_model": BAD_VALUES,
    "n_heads": BAD_VALUES,
    "n_kv_heads": st.one_of(BAD_VALUES, st.just(3)),
    "causal": st.sampled_from([1, "yes", None]),
    "window": BAD_VALUES.filter(lambda x: x is not None),
    "positional": st.sampled_from(["learned", 1, "ROPE"]),
    "dropout": st.one_of(BAD_VALUES, st.just(1.0)),
    "backend": st.sampled_from([3, None, b"auto"]),
    "rope_layout": st.sampled_from(["full", 2]),
    "head_dim": BAD_VALUES.filter(lambda x: x is not None),
    "variant": st.sampled_from(["nope", 5]),
    "variant_params": st.sampled_from([{"unknown": 2}, "x", [1]]),
    "kernel": st.sampled_from(["exact", object()]),
}


@st.composite
def mha_kwargs(draw):
    kw = {}
    for name, strat in MHA_GOOD.items():
        if name in ("d_model", "n_heads") or draw(st.booleans()):
            kw[name] = draw(strat)
    if draw(st.booleans()):
        name = draw(st.sampled_from(sorted(MHA_BAD)))
        kw[name] = draw(MHA_BAD[name])
    return kw


@given(mha_kwargs())
@fuzz_settings(100)
def test_multihead_attention_construction(kw):
    try:
        layer = MultiHeadAttention(**kw)
    except (ValueError, TypeError) as e:
        _refused("MultiHeadAttention()", e)
        return
    assert isinstance(kw["d_model"], int) and not isinstance(kw["d_model"], bool)
    x = torch.randn(2, 5, kw["d_model"])
    with torch.no_grad():
        out = layer(x)
    assert out.shape == x.shape and torch.isfinite(out).all()
    record("MultiHeadAttention()", "accepted")


FORWARD_INPUTS = [
    *[None] * 6,
    "x_2d",
    "x_width",
    "x_int",
    "x_list",
    "vkm_shape",
    "vkm_int",
    "mask_float",
    "mask_shape",
    "doc_float",
    "doc_shape",
    "positions_without_rope",
    "cache_wrong_type",
    "cache_mask_short",
    "weights_from_sdpa",
]


@given(
    causal=st.booleans(),
    positional=st.sampled_from([None, "rope", "alibi"]),
    backend=st.sampled_from(["auto", "math", "sdpa"]),
    B=st.integers(0, 2),
    T=st.integers(0, 7),
    use_cache=st.booleans(),
    bad=st.sampled_from(FORWARD_INPUTS),
)
@fuzz_settings(100)
def test_multihead_attention_forward(causal, positional, backend, B, T, use_cache, bad):
    layer = MultiHeadAttention(
        16, 4, n_kv_heads=2, causal=causal, positional=positional, backend=backend
    ).eval()
    x = torch.randn(B, T, 16)
    kw: dict = {}
    cache = KVCache(max_len=64) if use_cache else None
    if cache is not None and B == 0:
        cache = None
    if cache is not None:
        kw["cache"] = cache
    if bad == "x_2d":
        x = x.reshape(B * T, 16)
    elif bad == "x_width":
        x = torch.randn(B, T, 15)
    elif bad == "x_int":
        x = x.long()
    elif bad == "x_list":
        x = x.tolist()
    elif bad == "vkm_shape":
        kw["valid_key_mask"] = torch.ones(B, T + 3, dtype=torch.bool)
    elif bad == "vkm_int":
        kw["valid_key_mask"] = torch.ones(B, T, dtype=torch.int32)
    elif bad == "mask_float":
        kw["mask"] = torch.ones(T, T)
    elif bad == "mask_shape":
        kw["mask"] = torch.ones(T + 1, T + 2, dtype=torch.bool)
    elif bad == "doc_float":
        kw["document_ids"] = torch.zeros(B, T)
    elif bad == "doc_shape":
        kw["document_ids"] = torch.zeros(B, T + 2, dtype=torch.long)
    elif bad == "positions_without_rope":
        kw["positions"] = torch.arange(T)
        if positional == "rope":
            bad = None  # valid there
    elif bad == "cache_wrong_type":
        kw["cache"] = {"k": None}
    elif bad == "cache_mask_short":
        if cache is None:
            bad = None
        else:
            kw["valid_key_mask"] = torch.ones(B, T + 1, dtype=torch.bool)  # Tk is T here
    elif bad == "weights_from_sdpa":
        kw["return_weights"] = True
        if backend != "sdpa":
            bad = None  # auto and math give the weights
    try:
        with torch.no_grad():
            out = layer(x, **kw)
    except (ValueError, TypeError) as e:
        _refused("MultiHeadAttention.forward", e)
        return
    assert bad is None, f"{bad} was accepted: {kw}"
    y = out[0] if isinstance(out, tuple) else out
    assert y.shape == (B, T, 16) and torch.isfinite(y).all()
    record("MultiHeadAttention.forward", "accepted")
