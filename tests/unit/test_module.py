"""MultiHeadAttention and KVCache against a float64 reference written out here."""

import math

import pytest
import torch

from attnkit.attention.kv_cache import KVCache
from attnkit.attention.module import MultiHeadAttention


# ------------------------------------------------------------------------------- reference
def ref_rope_half(x, pos, base=10000.0):
    """HF Llama rotate_half RoPE in float64; pos (T,) or (B, T)."""
    d = x.shape[-1]
    inv_freq = 1.0 / (base ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
    freqs = pos.double()[..., None] * inv_freq  # (..., T, d/2)
    emb = torch.cat((freqs, freqs), dim=-1)
    if emb.dim() == 3:
        emb = emb[:, None]  # (B, 1, T, d)
    x1, x2 = x[..., : d // 2], x[..., d // 2 :]
    return x * emb.cos() + torch.cat((-x2, x1), dim=-1) * emb.sin()


def ref_rope_interleaved(x, pos, base=10000.0):
    d = x.shape[-1]
    theta = base ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    rot = torch.polar(
        torch.ones(len(pos), d // 2, dtype=torch.float64), torch.outer(pos.double(), theta)
    )
    xc = torch.view_as_complex(x.reshape(*x.shape[:-1], d // 2, 2).contiguous())
    return torch.view_as_real(xc * rot).reshape(x.shape)


def ref_alibi_slopes(h):
    """Power-of-two head counts only: 2^(-8/h), 2^(-16/h), ..."""
    assert h & (h - 1) == 0
    return torch.tensor([2.0 ** (-8.0 * (i + 1) / h) for i in range(h)], dtype=torch.float64)


def reference_mha(m, x, *, valid_key_mask=None, positions=None, document_ids=None, extra_mask=None):
    """Explicit float64 attention with the module's own weights and RoPE settings."""
    x = x.double()
    B, T, _ = x.shape
    H, Hkv = m.n_heads, m.n_kv_heads
    D = m.head_dim
    W = m.qkv_proj.weight.double()
    b = m.qkv_proj.bias.double() if m.qkv_proj.bias is not None else 0.0
    qkv = x @ W.T + b
    q = qkv[..., : H * D].reshape(B, T, H, D).permute(0, 2, 1, 3)
    k = qkv[..., H * D : (H + Hkv) * D].reshape(B, T, Hkv, D).permute(0, 2, 1, 3)
    v = qkv[..., (H + Hkv) * D :].reshape(B, T, Hkv, D).permute(0, 2, 1, 3)
    if m.positional == "rope":
        pos = torch.arange(T) if positions is None else positions
        rope = ref_rope_half if m.rotary.layout == "half" else ref_rope_interleaved
        q, k = rope(q, pos, m.rotary.base), rope(k, pos, m.rotary.base)
    # grouped heads: query head h uses kv head h // (H // Hkv)
    idx = torch.arange(H) // (H // Hkv)
    k, v = k[:, idx], v[:, idx]
    scores = q @ k.transpose(-1, -2) / math.sqrt(D)  # (B, H, T, T)
    i = torch.arange(T)[:, None]
    j = torch.arange(T)[None, :]
    if m.positional == "alibi":
        scores = scores - ref_alibi_slopes(H)[:, None, None] * (i - j).abs()
    allowed = torch.ones(B, 1, T, T, dtype=torch.bool)
    if m.causal:
        allowed &= j <= i
    if m.window is not None:
        allowed &= ((i - j) < m.window) if m.causal else ((i - j).abs() < m.window)
    if valid_key_mask is not None:
        allowed &= valid_key_mask[:, None, None, :]
    if document_ids is not None:
        allowed &= (document_ids[:, :, None] == document_ids[:, None, :])[:, None]
    if extra_mask is not None:
        allowed &= extra_mask
    scores = scores.masked_fill(~allowed, float("-inf"))
    p = torch.softmax(scores, dim=-1)
    p = torch.nan_to_num(p, nan=0.0)  # fully masked rows -> zero output
    y = (p @ v).permute(0, 2, 1, 3).reshape(B, T, H * D)
    out = y @ m.out_proj.weight.double().T
    if m.out_proj.bias is not None:
        out = out + m.out_proj.bias.double()
    return out, p


CONFIGS = {
    "plain": dict(),
    "causal": dict(causal=True),
    "gqa": dict(n_kv_heads=2, causal=True),
    "mqa": dict(n_kv_heads=1),
    "rope": dict(positional="rope", causal=True),
    "rope_interleaved_gqa": dict(
        positional="rope", rope_layout="interleaved", n_kv_heads=2, rope_base=100.0
    ),
    "alibi": dict(positional="alibi", causal=True),
    "alibi_bidirectional": dict(positional="alibi"),
    "window_causal": dict(window=3, causal=True),
    "window_bidirectional": dict(window=3),
    "no_bias_head_dim": dict(bias=False, head_dim=6, causal=True),
}


def make(cfg, d_model=32, n_heads=8, seed=0, **extra):
    torch.manual_seed(seed)
    return MultiHeadAttention(d_model, n_heads, **{**CONFIGS[cfg], **extra}).eval()


# ------------------------------------------------------------------------------- forward
@pytest.mark.parametrize("cfg", list(CONFIGS))
def test_forward_matches_reference_float64(cfg):
    m = make(cfg).double()
    x = torch.randn(2, 12, 32, dtype=torch.float64)
    out = m(x)
    assert out.shape == (2, 12, 32) and out.dtype == torch.float64
    ref, _ = reference_mha(m, x)
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=0)


@pytest.mark.parametrize("cfg", ["causal", "gqa", "rope", "alibi", "window_bidirectional"])
def test_forward_matches_reference_float32(cfg):
    m = make(cfg)
    x = torch.randn(2, 12, 32)
    ref, _ = reference_mha(m, x)
    torch.testing.assert_close(m(x).double(), ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("cfg", ["plain", "causal", "gqa", "alibi"])
def test_valid_key_mask_matches_reference(cfg):
    m = make(cfg).double()
    x = torch.randn(3, 9, 32, dtype=torch.float64)
    kpm = torch.ones(3, 9, dtype=torch.bool)
    kpm[0, 6:] = False  # right padding
    kpm[1, :2] = False  # left padding
    out = m(x, valid_key_mask=kpm)
    ref, _ = reference_mha(m, x, valid_key_mask=kpm)
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=0)
    # padded keys really are ignored: changing them leaves the real positions unchanged
    x2 = x.clone()
    x2[0, 6:] += 5.0
    out2 = m(x2, valid_key_mask=kpm)
    torch.testing.assert_close(out2[0, :6], out[0, :6], atol=1e-10, rtol=0)


def test_return_weights_are_the_softmax_probabilities():
    m = make("gqa").double()
    x = torch.randn(2, 7, 32, dtype=torch.float64)
    out, w = m(x, return_weights=True)
    ref_out, ref_p = reference_mha(m, x)
    assert w.shape == (2, 8, 7, 7)
    torch.testing.assert_close(out, ref_out, atol=1e-10, rtol=0)
    torch.testing.assert_close(w, ref_p, atol=1e-12, rtol=0)


def test_packed_documents_with_restarting_rope_positions_equal_separate_runs():
    m = make("rope").double()
    a = torch.randn(1, 5, 32, dtype=torch.float64)
    b = torch.randn(1, 7, 32, dtype=torch.float64)
    packed = torch.cat([a, b], dim=1)  # (1, 12, C)
    doc = torch.tensor([[0] * 5 + [1] * 7])
    pos = torch.tensor([list(range(5)) + list(range(7))])  # (1, 12)
    out = m(packed, document_ids=doc, positions=pos)
    torch.testing.assert_close(out[:, :5], m(a), atol=1e-10, rtol=0)
    torch.testing.assert_close(out[:, 5:], m(b), atol=1e-10, rtol=0)
    ref, _ = reference_mha(m, packed, positions=pos, document_ids=doc)
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=0)


def test_user_mask_is_applied():
    m = make("plain").double()
    x = torch.randn(1, 6, 32, dtype=torch.float64)
    # a causal mask given explicitly must equal causal=True with the same weights
    tril = torch.ones(6, 6, dtype=torch.bool).tril()
    causal = MultiHeadAttention(32, 8, causal=True).double().eval()
    causal.load_state_dict(m.state_dict())
    torch.testing.assert_close(m(x, mask=tril), causal(x), atol=1e-10, rtol=0)


def test_gradients_flow_to_all_parameters():
    m = make("rope_interleaved_gqa")
    x = torch.randn(2, 5, 32, requires_grad=True)
    m(x).square().sum().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert x.grad.abs().sum() > 0


# ------------------------------------------------------------------------------- KV cache
DECODE_CONFIGS = ["causal", "gqa", "mqa", "rope", "rope_interleaved_gqa", "alibi", "window_causal"]


@pytest.mark.parametrize("chunk", [1, 3])
@pytest.mark.parametrize("cfg", DECODE_CONFIGS)
def test_incremental_decoding_equals_full_pass(cfg, chunk):
    m = make(cfg, causal=True)  # decoding is causal: a new token cannot change earlier ones
    T = 10
    x = torch.randn(2, T, 32)
    with torch.no_grad():
        full = m(x)
        cache = KVCache(max_len=T)
        steps = [m(x[:, s : s + chunk], cache=cache) for s in range(0, T, chunk)]
    assert cache.length == T
    inc = torch.cat(steps, dim=1)
    assert (inc - full).abs().max() <= 1e-5
    # and the full pass is right in the first place
    ref, _ = reference_mha(m, x)
    assert (full.double() - ref).abs().max() <= 1e-5


def test_incremental_decoding_with_left_padding():
    m = make("rope")
    T = 8
    x = torch.randn(2, T, 32)
    kpm = torch.ones(2, T, dtype=torch.bool)
    kpm[1, :3] = False  # second sequence is left padded
    with torch.no_grad():
        full = m(x, valid_key_mask=kpm)
        cache = KVCache()
        steps = [m(x[:, :4], cache=cache, valid_key_mask=kpm[:, :4])]  # prompt
        for t in range(4, T):  # then one token at a time; the mask covers all keys so far
            steps.append(m(x[:, t : t + 1], cache=cache, valid_key_mask=kpm[:, : t + 1]))
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=0)


def test_cached_weights_cover_all_keys():
    m = make("alibi").double()
    x = torch.randn(1, 6, 32, dtype=torch.float64)
    _, w_full = m(x, return_weights=True)
    cache = KVCache()
    m(x[:, :4], cache=cache)
    out, w = m(x[:, 4:], cache=cache, return_weights=True)
    assert w.shape == (1, 8, 2, 6)
    torch.testing.assert_close(w, w_full[:, :, 4:], atol=1e-12, rtol=0)


def test_kv_cache_growth_overflow_and_reset():
    torch.manual_seed(0)
    cache = KVCache()  # grows on demand
    ks = [torch.randn(2, 3, n, 4) for n in (5, 14, 1)]
    vs = [torch.randn(2, 3, n, 4) for n in (5, 14, 1)]
    for k, v in zip(ks, vs):
        k_all, v_all = cache.update(k, v)
    torch.testing.assert_close(k_all, torch.cat(ks, dim=2), atol=0, rtol=0)
    torch.testing.assert_close(v_all, torch.cat(vs, dim=2), atol=0, rtol=0)
    assert cache.length == 20 and cache.capacity >= 20
    cache.truncate(6)
    k_all, _ = cache.update(ks[2], vs[2])
    torch.testing.assert_close(k_all, torch.cat([ks[0], ks[1][:, :, :1], ks[2]], 2), atol=0, rtol=0)
    cache.reset()
    assert cache.length == 0
    k_all, _ = cache.update(torch.ones(1, 3, 2, 4), torch.ones(1, 3, 2, 4))  # new batch size
    assert k_all.shape == (1, 3, 2, 4)

    fixed = KVCache(max_len=4)
    fixed.update(torch.zeros(1, 2, 3, 4), torch.zeros(1, 2, 3, 4))
    with pytest.raises(ValueError, match=r"5 > max_len=4"):
        fixed.update(torch.zeros(1, 2, 2, 4), torch.zeros(1, 2, 2, 4))
    with pytest.raises(ValueError, match=r"\(B, Hkv, Dk, Dv\)"):
        fixed.update(torch.zeros(1, 5, 1, 4), torch.zeros(1, 5, 1, 4))
    with pytest.raises(ValueError, match="max_len"):
        KVCache(max_len=0)
    assert len(KVCache.for_layers(3, max_len=8)) == 3


# ------------------------------------------------------------------------------- dropout
def test_dropout_train_is_random_eval_is_deterministic():
    torch.manual_seed(0)
    m = MultiHeadAttention(32, 4, dropout=0.5, causal=True)
    x = torch.randn(2, 6, 32)
    m.train()
    assert (m(x) - m(x)).abs().max() > 1e-3
    # the attention weights are dropped too, not only the output
    m.out_dropout = torch.nn.Identity()
    assert (m(x) - m(x)).abs().max() > 1e-3
    m.eval()
    out = m(x)
    torch.testing.assert_close(m(x), out, atol=0, rtol=0)
    ref, _ = reference_mha(m, x)
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("causal", [False, True])
def test_dropout_keeps_the_expected_value(causal):
    """Inverted dropout is unbiased on the attention weights and on the output, and the layer
    is linear in both, so E[train output] = eval output. With N independent samples each
    element's sample mean is within a few standard errors (std / sqrt(N)) of its expectation;
    we allow 5 standard errors (false alarm ~6e-7 per element, ~2e-5 for the 40 elements),
    and check the samples really vary so the tolerance is not vacuous."""
    torch.manual_seed(1)
    m = MultiHeadAttention(8, 2, dropout=0.3, causal=causal)
    x = torch.randn(1, 5, 8)
    m.eval()
    with torch.no_grad():
        expected = m(x)[0]  # (T, C)
        m.train()
        N = 4000
        samples = m(x.expand(N, 5, 8).contiguous())  # (N, T, C), independent masks per row
    mean = samples.mean(0)
    se = samples.std(0) / math.sqrt(N)
    assert samples.std(0).mean() > 0.05
    assert ((mean - expected).abs() <= 5 * se + 1e-6).all(), ((mean - expected).abs() / se).max()


# ------------------------------------------------------------------------------- errors, repr
@pytest.mark.parametrize(
    "kwargs,pattern",
    [
        (dict(d_model=32, n_heads=8, n_kv_heads=3), r"n_heads=8.*n_kv_heads=3"),
        (dict(d_model=30, n_heads=8), r"d_model=30.*n_heads=8"),
        (dict(d_model=32, n_heads=0), r"n_heads.*0"),
        (dict(d_model=32, n_heads=4, positional="learned"), r"'learned'"),
        (dict(d_model=32, n_heads=4, dropout=1.5), r"1\.5"),
        (dict(d_model=32, n_heads=4, window=0), r"window.*0"),
        (dict(d_model=32, n_heads=4, positional="rope", rope_layout="diagonal"), r"'diagonal'"),
        (dict(d_model=10, n_heads=2, positional="rope"), r"head_dim=5"),
        (dict(d_model=32, n_heads=4, variant_params={"k": 1}), r"variant_params"),
    ],
)
def test_bad_constructor_args_raise(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        MultiHeadAttention(**kwargs)


def test_bad_forward_args_raise():
    m = make("causal")
    with pytest.raises(ValueError, match=r"\(2, 5, 16\)"):
        m(torch.randn(2, 5, 16))
    with pytest.raises(ValueError, match="positions.*rope"):
        m(torch.randn(1, 3, 32), positions=torch.arange(3))
    with pytest.raises(TypeError, match="KVCache"):
        m(torch.randn(1, 3, 32), cache={})
    cache = KVCache(max_len=4)
    with pytest.raises(ValueError, match="max_len=4"):
        m(torch.randn(1, 5, 32), cache=cache)
    m(torch.randn(1, 2, 32), cache=cache)
    with pytest.raises(ValueError, match=r"cover all keys.*\(B, 3\).*\(1, 1\)"):
        m(torch.randn(1, 1, 32), cache=cache, valid_key_mask=torch.ones(1, 1, dtype=torch.bool))
    assert cache.length == 2  # a rejected call leaves the cache as it was


def test_repr_shows_settings():
    m = MultiHeadAttention(
        64, 8, n_kv_heads=2, causal=True, window=16, positional="rope", dropout=0.1
    )
    r = repr(m)
    for s in [
        "d_model=64",
        "n_heads=8",
        "n_kv_heads=2",
        "head_dim=8",
        "causal=True",
        "window=16",
        "positional='rope'",
        "dropout=0.1",
        "backend='auto'",
    ]:
        assert s in r, s
    assert m.qkv_proj.weight.shape == ((8 + 2 * 2) * 8, 64)
    assert m.out_proj.weight.shape == (64, 64)


# ------------------------------------------------------------------------------- variants
def _variants_registry():
    try:
        from attnkit.attention import variants
    except ImportError:
        return None
    return variants if hasattr(variants, "get") and hasattr(variants, "names") else None


VARIANTS = _variants_registry()
needs_variants = pytest.mark.skipif(
    VARIANTS is None, reason="attnkit.attention.variants registry not available"
)
# small blocks/chunks so that T=8 or 16 spans several of them
SMALL_PARAMS = {
    "bigbird": dict(block_size=2, num_random_blocks=1),
    "local": dict(block_size=4),
    "lsh": dict(chunk_size=4),
    "linear": dict(chunk_size=4),
    "performer": dict(chunk_size=4),
}


def _variant_names():
    return VARIANTS.names() if VARIANTS is not None else []


@needs_variants
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("name", [n for n in _variant_names() if VARIANTS.variant_class(n).exact])
def test_exact_variant_matches_reference_with_its_mask(name, causal):
    """Exact variants are softmax attention under a fixed mask: compare the whole layer
    (with GQA) against the float64 reference restricted to that mask."""
    torch.manual_seed(0)
    m = MultiHeadAttention(
        32,
        8,
        n_kv_heads=2,
        causal=causal,
        positional="rope",
        variant=name,
        variant_params=SMALL_PARAMS.get(name, {}),
    )
    m = m.double().eval()
    T = 16
    x = torch.randn(2, T, 32, dtype=torch.float64)
    kpm = torch.ones(2, T, dtype=torch.bool)
    kpm[1, 13:] = False
    out = m(x, valid_key_mask=kpm)
    pattern = m.kernel.dense_mask(T, causal)  # (T, T)
    ref, _ = reference_mha(m, x, valid_key_mask=kpm, extra_mask=pattern)
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=0)
    assert not pattern.all()  # the pattern really restricts something


@needs_variants
@pytest.mark.parametrize("name", _variant_names())
def test_variant_path_wiring(name):
    """Projections, RoPE, kv-head repetition and the output projection around the variant."""
    torch.manual_seed(0)
    m = (
        MultiHeadAttention(
            32,
            8,
            n_kv_heads=2,
            causal=True,
            positional="rope",
            variant=name,
            variant_params=SMALL_PARAMS.get(name, {}),
        )
        .double()
        .eval()
    )
    x = torch.randn(2, 8, 32, dtype=torch.float64)
    torch.manual_seed(1)  # same random stream for both calls, in case the variant samples
    out = m(x)
    B, T, H, D = 2, 8, 8, 4
    qkv = m.qkv_proj(x)
    q = qkv[..., : H * D].reshape(B, T, H, D).transpose(1, 2)  # (B, H, T, D)
    k = qkv[..., H * D : H * D + 2 * D].reshape(B, T, 2, D).transpose(1, 2)  # (B, 2, T, D)
    v = qkv[..., H * D + 2 * D :].reshape(B, T, 2, D).transpose(1, 2)
    q, k = ref_rope_half(q, torch.arange(T)), ref_rope_half(k, torch.arange(T))
    k, v = k.repeat_interleave(4, dim=1), v.repeat_interleave(4, dim=1)  # head h -> kv h // 4
    torch.manual_seed(1)
    y = m.kernel(q, k, v, causal=True, valid_key_mask=None)
    ref = m.out_proj(y.transpose(1, 2).reshape(B, T, H * D))
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=0)


@needs_variants
def test_variant_rejects_unsupported_options():
    name = _variant_names()[0]
    m = MultiHeadAttention(32, 8, variant=name, variant_params=SMALL_PARAMS.get(name, {}))
    x = torch.randn(1, 8, 32)
    with pytest.raises(ValueError, match="cache"):
        m(x, cache=KVCache())
    with pytest.raises(ValueError, match="return_weights"):
        m(x, return_weights=True)
    with pytest.raises(ValueError, match="mask"):
        m(x, mask=torch.ones(8, 8, dtype=torch.bool))
    with pytest.raises(ValueError, match="window=4"):
        MultiHeadAttention(32, 8, variant=name, window=4)
    with pytest.raises(ValueError, match="alibi"):
        MultiHeadAttention(32, 8, variant=name, positional="alibi")
    with pytest.raises(ValueError, match="'no-such-variant'"):
        MultiHeadAttention(32, 8, variant="no-such-variant")


# ------------------------------------------------------------------------------- the kernel seam
def test_set_kernel_and_recording_leave_no_new_attributes():
    """Swapping and capturing go through set_kernel: the module's attribute set is unchanged."""
    from attnkit.attention import variants
    from attnkit.attention.kernel import ExactKernel
    from attnkit.attention.recording import RecordingKernel, recording

    m = MultiHeadAttention(32, 4, causal=True, positional="rope").eval()
    keys, children = set(vars(m)), set(m._modules)
    x = torch.randn(2, 8, 32)
    old = m.set_kernel(variants.get("local", block_size=4))
    assert isinstance(old, ExactKernel) and m.kernel.name == "local"
    assert set(vars(m)) == keys and set(m._modules) == children
    calls = []
    with torch.no_grad(), recording([m], lambda i, call: calls.append((i, call))):
        assert isinstance(m.kernel, RecordingKernel) and m.kernel.inner.name == "local"
        m(x)
        assert set(vars(m)) == keys and set(m._modules) == children
    assert m.kernel.name == "local" and not isinstance(m.kernel, RecordingKernel)
    assert len(calls) == 1 and calls[0][0] == 0 and calls[0][1].q.shape == (2, 4, 8, 8)
    assert m.set_kernel(old).name == "local" and m.kernel is old
    assert set(vars(m)) == keys and set(m._modules) == children
    for gone in ("variant", "variant_attn", "capture_hook"):
        assert not hasattr(m, gone), gone
    with pytest.raises(TypeError, match="AttentionKernel"):
        m.set_kernel(torch.nn.Identity())
    alibi = MultiHeadAttention(32, 4, positional="alibi")
    with pytest.raises(ValueError, match="alibi"):
        alibi.set_kernel(variants.get("local"))
    assert isinstance(alibi.kernel, ExactKernel)  # a refused kernel leaves the old one


def test_kernel_argument_and_no_key_padding_mask():
    from attnkit.attention.kernel import ExactKernel

    torch.manual_seed(0)
    a = MultiHeadAttention(32, 4, causal=True, kernel=ExactKernel("math")).eval()
    assert a.kernel.backend == "math"
    x = torch.randn(2, 6, 32)
    vkm = torch.ones(2, 6, dtype=torch.bool)
    vkm[1, 4:] = False
    with torch.no_grad():
        a(x, valid_key_mask=vkm)
    # torch.nn.MultiheadAttention's key_padding_mask means the opposite (True = ignore): the
    # name is not accepted, so a mask of that polarity cannot slip in under it
    with pytest.raises(TypeError, match="key_padding_mask"):
        a(x, key_padding_mask=~vkm)
    with pytest.raises(ValueError, match="not both"):
        MultiHeadAttention(32, 4, kernel=ExactKernel(), variant="local")
    with pytest.raises(ValueError, match="backend must be one of.*'fast'"):
        ExactKernel("fast")


@pytest.mark.parametrize("n_kv_heads, padded", [(4, False), (2, True), (1, False)])
def test_one_token_decoding_matches_the_float64_reference(n_kv_heads, padded):
    """Prefill, then one token at a time through the kernel (SDPA, planned once per shape):
    every step equals the float64 reference of the full sequence at that position."""
    from attnkit.attention.functional import explain

    torch.manual_seed(0)
    m = MultiHeadAttention(32, 4, n_kv_heads=n_kv_heads, causal=True, positional="rope").eval()
    T = 9
    x = torch.randn(2, T, 32)
    vkm = torch.ones(2, T, dtype=torch.bool)
    if padded:
        vkm[1, :2] = False  # left padding
    ref, _ = reference_mha(m, x, valid_key_mask=vkm if padded else None)
    cache = KVCache()
    with torch.no_grad():
        m(x[:, :5], cache=cache, valid_key_mask=vkm[:, :5] if padded else None)
        for t in range(5, T):
            kw = {"valid_key_mask": vkm[:, : t + 1]} if padded else {}
            y = m(x[:, t : t + 1], cache=cache, **kw)  # (B, 1, C)
            real = vkm[:, t]
            assert (y[:, 0][real].double() - ref[:, t][real]).abs().max() <= 1e-5
    q = torch.empty(2, 4, 1, 8, device="meta")
    k = torch.empty(2, n_kv_heads, T, 8, device="meta")
    plan = explain(q, k, k, valid_key_mask=vkm.to("meta") if padded else None)
    assert plan.backend == "sdpa"


def test_state_dicts_with_the_old_variant_key_still_load():
    """A variant's buffers were saved under <layer>.variant_attn. before the kernel seam."""
    m = MultiHeadAttention(32, 4, variant="performer", variant_params=dict(head_dim=8, seed=1))
    old = {k.replace("kernel.", "variant_attn."): v for k, v in m.state_dict().items()}
    assert "variant_attn.projection" in old
    fresh = MultiHeadAttention(32, 4, variant="performer", variant_params=dict(head_dim=8, seed=2))
    fresh.load_state_dict(old)
    assert torch.equal(fresh.kernel.projection, m.kernel.projection)
