"""Attention variants against float64 references written out here."""

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from attnkit.attention import variants

NAMES = ["bigbird", "linear", "local", "lsh", "performer"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These tensors are tiny: one thread avoids paying thread wake-ups on every small op
    (costly on a shared machine); the previous count is restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# small settings that exercise several blocks / chunks / groups on short sequences
SMALL = {
    "bigbird": dict(block_size=4, num_random_blocks=1),
    "linear": dict(chunk_size=4),
    "local": dict(block_size=4),
    "lsh": dict(chunk_size=4, n_hashes=2, n_buckets=4),
    "performer": dict(chunk_size=4, nb_features=8),
}


def small(name, **extra):
    mod = variants.get(name, **{**SMALL[name], **extra})
    if hasattr(mod, "group_tokens"):
        mod.group_tokens = 8  # several checkpointed groups even for short inputs
    return mod


def qkv(B=2, H=2, T=23, D=8, Dv=None, dtype=torch.float64, scale=1.0):
    q = torch.randn(B, H, T, D, dtype=dtype) * scale  # (B, H, T, D)
    k = torch.randn(B, H, T, D, dtype=dtype) * scale  # (B, H, T, D)
    v = torch.randn(B, H, T, Dv or D, dtype=dtype)  # (B, H, T, Dv)
    return q, k, v


def padding(B, T, lengths):
    mask = torch.zeros(B, T, dtype=torch.bool)  # (B, T), True = real token
    for b, n in enumerate(lengths):
        mask[b, :n] = True
    return mask


def tril(T):
    return torch.ones(T, T, dtype=torch.bool).tril()


# ------------------------------------------------------------------------------- references
def ref_masked_softmax(scores, allowed):
    """Row softmax over the allowed entries; a row with none allowed is all zeros."""
    scores = scores.double().masked_fill(~allowed, float("-inf"))
    top = scores.amax(-1, keepdim=True)
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    w = torch.exp(scores - top)
    den = w.sum(-1, keepdim=True)
    return w / torch.where(den > 0, den, torch.ones_like(den))


def ref_attention(q, k, v, allowed):
    """Exact softmax attention in float64; allowed: bool broadcastable to (B, H, T, T)."""
    s = q.double() @ k.double().transpose(-1, -2) / math.sqrt(q.shape[-1])
    return ref_masked_softmax(s, allowed) @ v.double()


def full_allowed(B, T, causal, kpm):
    allowed = torch.ones(B, 1, T, T, dtype=torch.bool)
    if kpm is not None:
        allowed = allowed & kpm[:, None, None, :]
    if causal:
        allowed = allowed & tril(T)
    return allowed


def ref_shared_qk(q, v, allowed):
    """Shared-QK attention: key j = q_j / |q_j|; the query itself only when nothing else is
    allowed (and it is allowed itself)."""
    q = q.double()
    keys = q / q.norm(dim=-1, keepdim=True)
    s = q @ keys.transpose(-1, -2) / math.sqrt(q.shape[-1])
    T = q.shape[-2]
    eye = torch.eye(T, dtype=torch.bool)
    others = allowed & ~eye
    alone = ~others.any(-1, keepdim=True)
    final = torch.where(alone, allowed & eye, others)
    return ref_masked_softmax(s, final) @ v.double()


def ref_kernelised(phi_q, phi_k, v, allowed):
    """Quadratic form of kernelised attention: (phi_q phi_k^T masked) v / row sums."""
    A = (phi_q.double() @ phi_k.double().transpose(-1, -2)) * allowed
    den = A.sum(-1, keepdim=True)
    return (A @ v.double()) / torch.where(den > 0, den, torch.ones_like(den))


def mean_rel_err(o, ref):
    return ((o.double() - ref).norm(dim=-1) / ref.norm(dim=-1).clamp_min(1e-12)).mean().item()


# ------------------------------------------------------------------------------- registry
def test_registry_lists_every_variant():
    assert variants.names() == NAMES
    for name in NAMES:
        mod = variants.get(name)
        assert isinstance(mod, torch.nn.Module)
        assert isinstance(type(mod).exact, bool) and type(mod).description
    assert [n for n in NAMES if variants.variant_class(n).exact] == ["bigbird", "local"]


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(ValueError) as e:
        variants.get("reformerr")
    assert "'reformerr'" in str(e.value)
    for name in NAMES:
        assert name in str(e.value)


def test_unknown_parameter_lists_the_valid_ones():
    with pytest.raises(TypeError) as e:
        variants.get("lsh", n_hash=4)
    msg = str(e.value)
    assert "n_hash" in msg and "n_hashes" in msg and "chunk_size" in msg and "'lsh'" in msg


@pytest.mark.parametrize(
    "name, params, exc, text",
    [
        ("lsh", dict(n_buckets=3), ValueError, "3"),
        ("lsh", dict(chunk_size=0), ValueError, "chunk_size"),
        ("lsh", dict(n_hashes=2.5), TypeError, "2.5"),
        ("bigbird", dict(block_size=-4), ValueError, "-4"),
        ("local", dict(block_size="8"), TypeError, "'8'"),
        ("performer", dict(nb_features=0), ValueError, "nb_features"),
        ("linear", dict(chunk_size=True), TypeError, "True"),
    ],
)
def test_bad_values_are_named(name, params, exc, text):
    with pytest.raises(exc) as e:
        variants.get(name, **params)
    assert text in str(e.value)


def test_bad_inputs_are_named():
    mod = variants.get("local")
    q, k, v = qkv(T=8)
    with pytest.raises(ValueError, match=r"\(2, 2, 8, 8\)"):
        mod(q, k[:, :, :5], v)
    with pytest.raises(ValueError, match="must have shape"):
        mod(q[0], k[0], v[0])
    with pytest.raises(ValueError, match=r"\(B, T\) = \(2, 8\)"):
        mod(q, k, v, valid_key_mask=torch.ones(2, 7, dtype=torch.bool))
    with pytest.raises(TypeError, match="bool"):
        mod(q, k, v, valid_key_mask=torch.ones(2, 8))
    with pytest.raises(TypeError, match="dtype"):
        mod(q, k.float(), v)


def test_register_adds_a_variant_once():
    class Mean(variants.VariantAttention):
        exact = False
        description = "mean of the values"

        def _attend(self, q, k, v, causal, key_valid):
            return v.mean(-2, keepdim=True).expand_as(v)

    try:
        variants.register("mean-test", Mean)
        assert "mean-test" in variants.names()
        with pytest.raises(ValueError, match="already registered"):
            variants.register("mean-test", Mean)
    finally:
        variants._REGISTRY.pop("mean-test", None)


# ------------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("T", [1, 5, 13])
def test_shapes_and_value_dim(name, T):
    q, k, v = qkv(B=2, H=3, T=T, D=8, Dv=5, dtype=torch.float32)
    for causal in (False, True):
        out = small(name)(q, k, v, causal=causal)
        assert out.shape == (2, 3, T, 5) and out.dtype == torch.float32
        assert torch.isfinite(out).all()


# ------------------------------------------------------------------------------- exact variants
@pytest.mark.parametrize("padded", [True, False])  # unpadded bidirectional: dense global rows
@pytest.mark.parametrize("causal", [False, True])
def test_bigbird_equals_exact_masked_attention(causal, padded):
    B, T = 2, 45  # 12 blocks of 4, the last one partial
    mod = variants.get(
        "bigbird", block_size=4, num_global_blocks=1, window_radius=1, num_random_blocks=2, seed=3
    )
    q, k, v = qkv(B=B, T=T, dtype=torch.float32)
    kpm = padding(B, T, [T, 30]) if padded else None
    out = mod(q, k, v, causal=causal, valid_key_mask=kpm)
    allowed = mod.dense_mask(T, causal)[None, None] & full_allowed(B, T, causal, kpm)
    torch.testing.assert_close(out.double(), ref_attention(q, k, v, allowed), atol=1e-5, rtol=0)


def test_bigbird_pattern_follows_its_rules():
    g, w, r, nb = 2, 1, 2, 16
    mod = variants.get(
        "bigbird", block_size=8, num_global_blocks=g, window_radius=w, num_random_blocks=r, seed=7
    )
    layout = mod.pattern(nb * 8)
    assert layout.shape == (nb, nb)
    assert layout[:g].all() and layout[:, :g].all()
    for i in range(g, nb):
        row = set(layout[i].nonzero().flatten().tolist())
        fixed = set(range(g)) | {j for j in range(i - w, i + w + 1) if 0 <= j < nb}
        assert fixed <= row
        assert len(row - fixed) == r  # random blocks are new blocks, exactly r of them
    # deterministic for a seed, different for another
    again = variants.get(
        "bigbird", block_size=8, num_global_blocks=g, window_radius=w, num_random_blocks=r, seed=7
    )
    other = variants.get(
        "bigbird", block_size=8, num_global_blocks=g, window_radius=w, num_random_blocks=r, seed=8
    )
    assert torch.equal(again.pattern(nb * 8), layout)
    assert not torch.equal(other.pattern(nb * 8), layout)
    # causal: no block above the diagonal, random blocks drawn from the past
    lower = mod.pattern(nb * 8, causal=True)
    assert not lower.triu(1).any()
    assert all(lower[i].sum() == min(i + 1, g + w + 1 + r) for i in range(g, nb))
    # the dense mask expands the layout to tokens
    dense = mod.dense_mask(nb * 8)
    assert torch.equal(dense[::8, ::8], layout) and torch.equal(dense[5::8, 3::8], layout)


def test_bigbird_flex_path_is_for_long_inference_only():
    mod = variants.get("bigbird", block_size=8, flex_min_len=64)
    q, k, v = qkv(B=1, H=1, T=64, dtype=torch.float32)
    assert mod.uses_flex(q, k, v)
    assert not mod.uses_flex(q[:, :, :63], k[:, :, :63], v[:, :, :63])  # shorter than flex_min_len
    assert not mod.uses_flex(q.requires_grad_(), k, v)  # gradients take the blocked path
    with torch.no_grad():
        assert mod.uses_flex(q, k, v)
    assert not variants.get("bigbird", block_size=8).uses_flex(q.detach(), k, v)


@pytest.mark.slow  # compiles FlexAttention: tens of seconds on a CPU
def test_bigbird_flex_equals_blocked_path():
    B, T = 2, 150
    q, k, v = qkv(B=B, T=T, dtype=torch.float32)
    kpm = padding(B, T, [T, 90])
    flex = variants.get("bigbird", block_size=32, num_random_blocks=1, flex_min_len=128)
    blocked = variants.get("bigbird", block_size=32, num_random_blocks=1)
    with torch.no_grad():
        out = flex(q, k, v, causal=True, valid_key_mask=kpm)
        ref = blocked(q, k, v, causal=True, valid_key_mask=kpm)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("causal", [False, True])
def test_local_equals_exact_block_attention(causal):
    B, T, bs = 2, 30, 8
    q, k, v = qkv(B=B, T=T, dtype=torch.float32)
    kpm = padding(B, T, [T, 17])
    out = variants.get("local", block_size=bs)(q, k, v, causal=causal, valid_key_mask=kpm)
    blocks = torch.arange(T) // bs
    allowed = (blocks[:, None] == blocks[None, :]) & full_allowed(B, T, causal, kpm)
    torch.testing.assert_close(out.double(), ref_attention(q, k, v, allowed), atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------- LSH
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize(
    "params", [dict(n_buckets=1, chunk_size=4), dict(n_buckets=4, chunk_size=64, n_hashes=3)]
)
def test_lsh_one_bucket_or_one_chunk_is_dense_shared_qk(causal, params):
    B, T = 2, 19
    if params["n_buckets"] == 1:
        params = dict(params, chunk_size=T)  # one bucket and one chunk: every key is seen
    q, k, v = qkv(B=B, T=T)
    kpm = padding(B, T, [T, 11])
    out = variants.get("lsh", **params)(q, k, v, causal=causal, valid_key_mask=kpm)
    ref = ref_shared_qk(q, v, full_allowed(B, T, causal, kpm))
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=0)


def lsh_union_allowed(mod, q, causal, kpm):
    """Which keys each query sees in any round, rebuilt from the module's buckets with Python
    sorting and chunking: (B, H, T, T) bool, before the self rule."""
    B, H, T, D = q.shape
    C = min(mod.chunk_size, T)
    buckets = mod.hash(q.reshape(B * H, T, D), mod.buckets_for(T)).view(B, H, mod.n_hashes, T)
    seen = torch.zeros(B, H, T, T, dtype=torch.bool)
    for b in range(B):
        for h in range(H):
            for r in range(mod.n_hashes):
                order = sorted(range(T), key=lambda t: (int(buckets[b, h, r, t]), t))
                chunk = {pos: i // C for i, pos in enumerate(order)}
                for i in range(T):
                    for j in range(T):
                        if chunk[j] in (chunk[i], chunk[i] - 1):
                            seen[b, h, i, j] = True
    return seen & full_allowed(B, T, causal, kpm)


@pytest.mark.parametrize("causal", [False, True])
def test_lsh_is_attention_over_the_union_of_its_buckets(causal):
    B, H, T = 2, 2, 26
    mod = variants.get("lsh", n_buckets=4, n_hashes=3, chunk_size=4, seed=5)
    q, k, v = qkv(B=B, H=H, T=T)
    kpm = padding(B, T, [T, 20])
    out = mod(q, k, v, causal=causal, valid_key_mask=kpm)
    ref = ref_shared_qk(q, v, lsh_union_allowed(mod, q, causal, kpm))
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=0)


def test_lsh_hash_is_deterministic_and_scale_free():
    mod = variants.get("lsh", n_buckets=8, n_hashes=3, seed=11)
    x = torch.randn(4, 50, 16)
    b = mod.hash(x)
    assert b.shape == (4, 3, 50) and b.min() >= 0 and b.max() < 8
    assert torch.equal(variants.get("lsh", n_buckets=8, n_hashes=3, seed=11).hash(x), b)
    assert torch.equal(mod.hash(x * 3.7), b)  # argmax of [xR, -xR] ignores positive scale
    assert torch.equal(mod.hash(-x), (b + 4) % 8)  # -x falls in the opposite bucket
    assert not torch.equal(variants.get("lsh", n_buckets=8, n_hashes=3, seed=12).hash(x), b)


@pytest.mark.parametrize("causal", [False, True])
def test_lsh_error_falls_as_rounds_are_added(causal):
    B, H, T = 1, 2, 64
    errs = []
    for n_hashes in (1, 2, 4, 8):
        e = 0.0
        for seed in range(6):
            torch.manual_seed(100 + seed)
            q, k, v = qkv(B=B, H=H, T=T)
            mod = variants.get("lsh", n_buckets=8, chunk_size=8, n_hashes=n_hashes, seed=seed)
            ref = ref_shared_qk(q, v, full_allowed(B, T, causal, None))
            e += mean_rel_err(mod(q, k, v, causal=causal), ref) / 6
        errs.append(e)
    assert all(a > b for a, b in zip(errs, errs[1:])), errs
    assert errs[-1] < 0.6 * errs[0], errs


# ------------------------------------------------------------------------------- kernelised
def performer_phi(mod, q, k, kpm=None):
    B, H, T, D = q.shape
    phi_q = mod.query_features(q)
    valid = None if kpm is None else kpm[:, None, :].expand(B, H, T)
    phi_k, _ = mod.key_features(k, valid)
    return phi_q, phi_k


@pytest.mark.parametrize("causal", [False, True])
def test_performer_equals_its_quadratic_form(causal):
    B, T = 2, 37
    mod = small("performer", nb_features=16)
    q, k, v = qkv(B=B, T=T, dtype=torch.float32)
    # keys grow along the sequence, so the running stabiliser is raised group after group
    k = k * torch.linspace(0.5, 3.0, T)[:, None]
    kpm = padding(B, T, [T, 25])
    out = mod(q, k, v, causal=causal, valid_key_mask=kpm)
    phi_q, phi_k = performer_phi(mod, q.double(), k.double(), kpm)
    ref = ref_kernelised(phi_q, phi_k, v, full_allowed(B, T, causal, kpm))
    torch.testing.assert_close(out.double(), ref, atol=1e-4, rtol=1e-4)


def test_performer_features_estimate_the_softmax_kernel():
    mod = variants.get("performer", nb_features=4096, seed=1)
    D = 8
    x, y = (
        torch.randn(6, D, dtype=torch.float64) * 0.3,
        torch.randn(5, D, dtype=torch.float64) * 0.3,
    )
    # phi without stabilisers: exp(W x' - |x'|^2 / 2) / sqrt(m), x' = x / D^(1/4)
    mod.redraw(D)
    W = mod.projection.double()
    xs, ys = x * D**-0.25, y * D**-0.25
    phi = lambda z: torch.exp(z @ W.T - 0.5 * (z * z).sum(-1, keepdim=True)) / math.sqrt(W.shape[0])  # noqa: E731
    est = phi(xs) @ phi(ys).T
    torch.testing.assert_close(est, torch.exp(x @ y.T / math.sqrt(D)), rtol=0.1, atol=0)
    # rows of one block are orthogonal
    block = W[:D]
    gram = block @ block.T
    torch.testing.assert_close(
        gram - torch.diag(torch.diagonal(gram)),
        torch.zeros(D, D, dtype=torch.float64),
        atol=1e-5,
        rtol=0,
    )  # stored in float32


@pytest.mark.parametrize("causal", [False, True])
def test_performer_error_falls_as_features_grow(causal):
    B, H, T, D = 1, 2, 48, 16
    errs = []
    for m in (8, 32, 128, 512):
        e = 0.0
        for seed in range(4):
            torch.manual_seed(200 + seed)
            q, k, v = qkv(B=B, H=H, T=T, D=D, scale=0.5)
            mod = variants.get("performer", nb_features=m, seed=seed)
            e += (
                mean_rel_err(
                    mod(q, k, v, causal=causal),
                    ref_attention(q, k, v, full_allowed(B, T, causal, None)),
                )
                / 4
            )
        errs.append(e)
    assert all(a > b for a, b in zip(errs, errs[1:])), errs
    assert errs[-1] < 0.35 * errs[0], errs


def test_performer_default_features_redraw_and_seed():
    mod = variants.get("performer", seed=4)
    q, k, v = qkv(B=1, H=1, T=6, D=16)
    out1 = mod(q, k, v)
    assert mod.projection.shape == (int(16 * math.log(16)), 16)
    assert torch.equal(variants.get("performer", seed=4)(q, k, v), out1)
    first = mod.projection.clone()
    mod.redraw()
    assert not torch.equal(mod.projection, first)
    # redraw every 2 training steps
    mod = variants.get("performer", seed=4, redraw_interval=2).train()
    seen = []
    for _ in range(5):
        mod(q, k, v)
        seen.append(mod.projection.clone())
    assert torch.equal(seen[0], seen[1]) and not torch.equal(seen[1], seen[2])
    assert torch.equal(seen[2], seen[3]) and not torch.equal(seen[3], seen[4])
    mod.eval()
    mod(q, k, v)
    assert torch.equal(mod.projection, seen[4])  # no redraw in eval mode
    # the features travel with the state dict
    fresh = variants.get("performer", seed=99)
    fresh.load_state_dict(mod.state_dict())
    torch.testing.assert_close(fresh(q, k, v), mod(q, k, v))


@pytest.mark.parametrize("causal", [False, True])
def test_linear_equals_its_quadratic_form(causal):
    B, T = 2, 29
    q, k, v = qkv(B=B, T=T, dtype=torch.float32)
    kpm = padding(B, T, [T, 14])
    out = small("linear")(q, k, v, causal=causal, valid_key_mask=kpm)
    phi = lambda x: torch.where(x > 0, x + 1.0, torch.exp(x))  # elu(x) + 1  # noqa: E731
    ref = ref_kernelised(phi(q.double()), phi(k.double()), v, full_allowed(B, T, causal, kpm))
    torch.testing.assert_close(out.double(), ref, atol=1e-4, rtol=1e-4)


# ------------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("causal", [False, True])
def test_gradcheck(name, causal):
    torch.manual_seed(0)
    mod = small(name)
    q, k, v = (t.requires_grad_() for t in qkv(B=1, H=1, T=10, D=3))
    kpm = padding(1, 10, [8])
    f = lambda q, k, v: mod(q, k, v, causal=causal, valid_key_mask=kpm)  # noqa: E731
    assert torch.autograd.gradcheck(f, (q, k, v), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("causal", [False, True])
def test_gradcheck_bigbird_unpadded(causal):
    mod = variants.get(
        "bigbird", block_size=3, num_global_blocks=2, window_radius=1, num_random_blocks=1, seed=1
    )
    q, k, v = (t.requires_grad_() for t in qkv(B=2, H=2, T=13, D=3))
    f = lambda q, k, v: mod(q, k, v, causal=causal)  # noqa: E731
    assert torch.autograd.gradcheck(f, (q, k, v), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("causal", [False, True])
def test_rows_without_keys_give_zeros_and_zero_gradients(name, causal):
    mod = small(name)
    B, T = 2, 14
    q, k, v = (t.requires_grad_() for t in qkv(B=B, T=T, dtype=torch.float32))
    kpm = padding(B, T, [0, T])  # the first sequence is all padding
    out = mod(q, k, v, causal=causal, valid_key_mask=kpm)
    assert torch.isfinite(out).all()
    assert torch.equal(out[0], torch.zeros_like(out[0]))
    (out * torch.randn_like(out)).sum().backward()
    for t in (q, k, v):
        if t.grad is not None:
            assert torch.isfinite(t.grad).all()
            assert torch.equal(t.grad[0], torch.zeros_like(t.grad[0]))
    assert v.grad[1].abs().sum() > 0  # the real sequence still learns


@pytest.mark.parametrize("name", ["bigbird", "local", "lsh"])
def test_causal_left_padding_rows_before_any_key_are_zero(name):
    mod = small(name)
    T = 12
    q, k, v = qkv(B=1, T=T, dtype=torch.float32)
    kpm = torch.arange(T)[None] >= 5  # left padding: keys 0..4 are padding
    out = mod(q, k, v, causal=True, valid_key_mask=kpm)
    assert torch.equal(out[0, :, :5], torch.zeros_like(out[0, :, :5]))
    assert torch.isfinite(out).all()


# ------------------------------------------------------------------------------- devices
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", NAMES)
def test_cuda_matches_cpu(name):
    q, k, v = qkv(B=1, H=2, T=40, D=8, dtype=torch.float32)
    kpm = padding(1, 40, [33])
    cpu = small(name)
    gpu = small(name).cuda()
    for causal in (False, True):
        ref = cpu(q, k, v, causal=causal, valid_key_mask=kpm)
        out = gpu(q.cuda(), k.cuda(), v.cuda(), causal=causal, valid_key_mask=kpm.cuda())
        torch.testing.assert_close(out.cpu(), ref, atol=1e-4, rtol=1e-4)


# ------------------------------------------------------------------------------- benchmark
def test_bench_variants_runs_and_writes_results(tmp_path, capsys):
    import json

    from attnkit.cli import main

    status = main(
        [
            "bench",
            "variants",
            "--sizes",
            "64,128",
            "--variants",
            "local,lsh",
            "--causal",
            "yes",
            "--error-n",
            "64",
            "--no-memory",
            "--no-sweep",
            "--exact-max",
            "64",
            "--heads",
            "2",
            "--head-dim",
            "8",
            "--repeat",
            "1",
            "--minilm-windows",
            "0",
            "--system-malloc",
            "--out",
            str(tmp_path),
        ]
    )
    assert status == 0
    data = json.loads((tmp_path / "variants.json").read_text())
    assert (
        data["environment"]["malloc"] == "system default"
    )  # this test process keeps glibc's defaults
    rows = {(r["name"], r["n"]): r for r in data["rows"]}
    assert set(rows) == {(n, s) for n in ("exact", "local", "lsh") for s in (64, 128)}
    assert rows[("exact", 128)]["skipped"].startswith("N > --exact-max")
    assert rows[("lsh", 64)]["seconds"]["fwd_bwd"] > 0 and rows[("lsh", 64)]["speedup"] > 0
    err = data["errors"]["causal"]
    assert 0 < err["lsh"]["rel_err"] and -1 <= err["local"]["cos"] <= 1
    assert (tmp_path / "variants.png").stat().st_size > 0
    assert all(t["ok"] is None for t in data["targets"])  # no target N in this run
    out = capsys.readouterr().out
    assert "lsh" in out and "approx" in out and "exact" in out


def test_bench_targets_pass_and_fail():
    from attnkit.bench import variants as bench

    s = bench.VariantsSettings(
        sizes=[16384, 65536],
        names=["lsh", "linear", "performer"],
        params={},
        shape=(1, 8, 64),
        dtype="float32",
        device=torch.device("cpu"),
        causal_modes=[True],
        exact_max=16384,
        error_n=64,
        repeat=1,
        max_seconds=1.0,
        memory=True,
        sweep=False,
        seed=0,
    )

    def row(name, n, fwd, fb, peak, speedup=None):
        r = bench.Row(name, n, True, False)
        r.seconds = {"fwd": fwd, "fwd_bwd": fb}
        r.peak_bytes = {"fwd": peak, "fwd_bwd": peak}
        r.speedup = speedup
        return r

    good = [row(n, 16384, 1.0, 2.0, 100, 5.0) for n in s.names] + [
        row(n, 65536, 4.0, 8.0, 2**30) for n in s.names
    ]
    assert [c.passed for c in bench.evaluate_checks(good, s)] == [True, None, True, True]
    slow = good[:-1] + [row("performer", 65536, 4.0, 11.0, 2**30)]  # fwd+bwd grew 5.5x
    assert [c.passed for c in bench.evaluate_checks(slow, s)] == [False, None, True, True]
    big = good[:-1] + [row("performer", 65536, 4.0, 8.0, 3 * 2**30)]
    assert [c.passed for c in bench.evaluate_checks(big, s)] == [True, None, False, True]
    lagging = [row("lsh", 16384, 1.0, 2.0, 100, 3.9)] + good[1:]
    assert [c.passed for c in bench.evaluate_checks(lagging, s)] == [True, None, True, False]
    # bigbird's growth from 4096 to 16384 is checked too, causal and bidirectional
    s = dataclasses.replace(
        s, names=["bigbird"], sizes=[4096, 16384, 65536], causal_modes=[True, False]
    )

    def bb(n, fwd, fb, causal):
        r = row("bigbird", n, fwd, fb, 100)
        r.causal = causal
        return r

    four = [bb(n, f, 2 * f, c) for c in (True, False) for n, f in ((4096, 1.0), (16384, 4.0))]
    far = [bb(65536, 16.0, 32.0, c) for c in (True, False)]
    checks = bench.evaluate_checks(four + far, s)
    assert [c.key for c in checks][:2] == ["scaling", "bigbird_scaling"]
    assert [c.passed for c in checks][:2] == [True, True]
    assert "bigbird (bidirectional) fwd_bwd 4.00" in checks[1].measured
    grew = four[:-1] + [bb(16384, 4.0, 10.2, False)] + far  # bidirectional fwd+bwd grew 5.1x
    assert [c.passed for c in bench.evaluate_checks(grew, s)][:2] == [True, False]
    # growth is the median of per-round ratios: one quiet round at the small N does not fail it
    lo, hi = row("linear", 16384, 1.0, 2.0, 100), row("linear", 65536, 5.5, 11.0, 2**30)
    lo.samples = {"fwd": [1.0, 2.0, 2.0], "fwd_bwd": [2.0, 4.0, 4.0]}
    hi.samples = {"fwd": [5.5, 8.0, 8.0], "fwd_bwd": [11.0, 16.0, 16.0]}
    assert bench.growth(lo, hi, "fwd") == pytest.approx(4.0)
    assert bench.growth(lo, hi, "fwd_bwd") == pytest.approx(4.0)
    lo.samples = {"fwd": [], "fwd_bwd": []}
    assert bench.growth(lo, hi, "fwd") == pytest.approx(5.5)


def test_bench_rounds_alternate_the_size_order():
    from attnkit.bench import variants as bench

    s = bench.VariantsSettings(
        sizes=[64, 128, 256],
        names=["local"],
        params={},
        shape=(1, 1, 4),
        dtype="float32",
        device=torch.device("cpu"),
        causal_modes=[True],
        exact_max=0,
        error_n=64,
        repeat=3,
        max_seconds=100.0,
        memory=False,
        sweep=False,
        seed=0,
    )
    calls = []
    points = []
    for n in s.sizes:
        rows = [
            bench.Row(bench.EXACT, n, True, True, skipped="too long"),
            bench.Row("local", n, True, True),
        ]
        ops = {
            mode: {"local": (lambda n=n, mode=mode: calls.append((mode, n)))}
            for mode in bench.MODES
        }
        points.append((rows, ops))
    bench.time_points(points, s)
    up, down = [64, 128, 256], [256, 128, 64]
    assert calls == [(m, n) for order in (up, down, up) for m in bench.MODES for n in order]
    for rows, _ in points:  # one sample per round, paired by round across sizes
        assert [len(rows[1].samples[m]) for m in bench.MODES] == [3, 3] and rows[0].samples[
            "fwd"
        ] == []
        assert rows[1].seconds["fwd"] == min(rows[1].samples["fwd"])


# ------------------------------------------------------------------------- MiniLM activations
def test_minilm_windows_are_consecutive_text_with_padding():
    import attnkit
    from attnkit.bench import variants as bench

    text = (
        "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n"
        * 200
    )
    tok = attnkit.load("minilm").meta.tokenizer
    ids, mask = bench.minilm_windows(tok, text, 5)
    assert ids.shape == (5, 512) and mask.sum(1).tolist() == [512, 448, 384, 320, 512]
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    for i, n in enumerate(mask.sum(1).tolist()):
        assert ids[i, 0] == cls and ids[i, n - 1] == sep and not ids[i, n:].any()
        assert not ((ids[i, 1 : n - 1] == cls) | (ids[i, 1 : n - 1] == sep)).any()
    # window 0 then window 1: the text's first words, in order, with no gap
    words = "".join(tok.decode(ids[i, 1 : n - 1].tolist()) for i, n in enumerate([512, 448]))
    flat = "".join(text.lower().split())
    assert flat.startswith(words.replace(" ", ""))
    with pytest.raises(ValueError, match=r"the text gives \d+ tokens; 5 windows need"):
        bench.minilm_windows(tok, "too short", 5)


def test_minilm_error_against_hand_computed_layer_zero(tmp_path):
    """The error on MiniLM activations: layer 0 recomputed by hand from the weights and the
    float64 reference; an exact pattern covering the window has no error."""
    import attnkit
    from attnkit.bench import variants as bench

    text = tmp_path / "t.txt"
    text.write_text(
        "Before we proceed any further, hear me speak.\nYou are all resolved rather to die "
        "than to famish?\n" * 60
    )
    s = bench.VariantsSettings(
        sizes=[64],
        names=["bigbird", "local", "lsh"],
        shape=(1, 2, 8),
        dtype="float32",
        device=torch.device("cpu"),
        causal_modes=[False],
        exact_max=64,
        error_n=64,
        repeat=1,
        max_seconds=1.0,
        memory=False,
        sweep=False,
        seed=0,
        minilm_windows=2,
        minilm_text=str(text),
        params={"bigbird": dict(block_size=16, window_radius=64, num_random_blocks=0)},
    )
    got = bench.minilm_error(s, lambda msg: None)
    assert got["windows"] == 2 and got["lengths"] == [512, 448] and got["layers"] == 6
    v = got["variants"]
    assert v["bigbird"]["rel_err"] < 1e-5 and v["bigbird"]["cos"] > 1 - 1e-9  # covers everything
    assert v["local"]["params"] == {"block_size": 128} and v["lsh"]["params"] == {
        "chunk_size": 64,
        "n_hashes": 2,
    }
    assert 0.01 < v["lsh"]["rel_err"] and 0 < v["lsh"]["cos"] < 1
    for name in ("local", "lsh"):
        per = v[name]["per_layer"]
        assert v[name]["rel_err"] == pytest.approx(sum(p["rel_err"] for p in per) / 6, rel=1e-9)

    model = attnkit.load("minilm")
    ids, mask = bench.minilm_windows(model.meta.tokenizer, text.read_text(), 2)
    with torch.no_grad():
        x = model.embed(ids)  # (B, T, C): the input of layer 0
        q, k, val = model.blocks[0].attn.qkv_proj(x).split(384, dim=-1)
        q, k, val = (t.view(2, 512, 12, 32).transpose(1, 2) for t in (q, k, val))  # (B, H, T, D)
    real = mask.bool()
    block = torch.arange(512) // 128
    allowed = (block[:, None] == block[None, :]) & real[:, None, None, :]  # (B, 1, T, T)
    ref = ref_attention(q, k, val, allowed)
    out = variants.get("local", block_size=128)(q, k, val, valid_key_mask=real)
    rows = real[:, None, :].expand(2, 12, 512)
    exact = ref_attention(q, k, val, real[:, None, None, :])
    torch.testing.assert_close(
        out.double(), ref, rtol=1e-4, atol=1e-5
    )  # local is exact on its blocks
    rel = ((out.double() - exact).norm(dim=-1) / exact.norm(dim=-1))[rows].mean().item()
    cos = F.cosine_similarity(out.double(), exact, dim=-1)[rows].mean().item()
    assert v["local"]["per_layer"][0]["rel_err"] == pytest.approx(rel, rel=1e-4)
    assert v["local"]["per_layer"][0]["cos"] == pytest.approx(cos, rel=1e-6)
    assert 0.05 < rel < 2


def test_error_table_puts_minilm_next_to_random():
    from attnkit.bench import variants as bench

    s = bench.VariantsSettings(
        sizes=[64],
        names=["local", "lsh"],
        params={},
        shape=(1, 2, 8),
        dtype="float32",
        device=torch.device("cpu"),
        causal_modes=[True, False],
        exact_max=64,
        error_n=256,
        repeat=1,
        max_seconds=1.0,
        memory=False,
        sweep=False,
        seed=0,
    )
    errors = {
        True: {"local": {"rel_err": 0.9, "cos": 0.1}},
        False: {"local": {"rel_err": 0.25, "cos": 0.75}, "lsh": {"rel_err": 0.5, "cos": 0.625}},
    }
    minilm = {
        "windows": 2,
        "lengths": [512, 448],
        "layers": 6,
        "heads": 12,
        "variants": {"local": {"params": {"block_size": 128}, "rel_err": 0.125, "cos": 0.875}},
    }
    lines = bench.render_errors(errors, minilm, s).splitlines()
    assert "N=256, bidirectional" in lines[0] and "2 windows of [512, 448] tokens" in lines[0]
    assert lines[3].split() == ["local", "0.250", "0.750", "0.125", "0.875", "block_size=128"]
    assert lines[4].split() == ["lsh", "0.500", "0.625", "-", "-", "-"]
    skipped = bench.render_errors(errors, {"skipped": "CheckpointError: not installed"}, s)
    assert skipped.endswith("MiniLM activations not measured: CheckpointError: not installed")
