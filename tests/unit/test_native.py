"""The native skinny-product kernel (attnkit.native), the float32 KV cache of half-precision
models and the one-query decoding path of MultiHeadAttention, each against float64 math or the
general attention path."""

import copy
import os
import platform
import shutil
import subprocess
import sys

import pytest
import torch

from attnkit import native as kernels
from attnkit.attention.kv_cache import KVCache
from attnkit.attention.module import MultiHeadAttention


def _expected_available() -> bool:
    flags = set()
    if os.path.exists("/proc/cpuinfo"):
        for line in open("/proc/cpuinfo"):
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    return (
        platform.system() == "Linux"
        and platform.machine() in ("x86_64", "AMD64")
        and {"avx2", "fma"} <= flags
        and shutil.which("cc") is not None
        and os.environ.get("ATTNKIT_NATIVE", "1") != "0"
    )


needs_kernel = pytest.mark.skipif(
    not _expected_available(), reason="needs Linux x86-64 with AVX2/FMA and a C compiler"
)


@needs_kernel
def test_kernel_builds_where_it_can():
    assert kernels.available(), kernels.status()
    assert kernels.status().reason.startswith("ready")


def _reference(x, w, bias=None, scale=None):
    y = x.double() @ w.double().T  # (N, M)
    if scale is not None:
        y = y * scale.double()
    if bias is not None:
        y = y + bias.double()
    return y


@needs_kernel
@pytest.mark.parametrize(
    "N,M,K",
    [
        (1, 7, 13),
        (2, 1, 8),
        (3, 5, 16),
        (4, 33, 40),
        (5, 64, 771),
        (8, 257, 768),
        (9, 130, 96),
        (24, 96, 3072),
    ],
)
@pytest.mark.parametrize("wtype", ["float32", "bfloat16", "int8"])
def test_skinny_linear_matches_float64(N, M, K, wtype):
    g = torch.Generator().manual_seed(N * 1000 + M + K)
    x = torch.randn(N, K, generator=g)
    bias = torch.randn(M, generator=g)
    scale = None
    if wtype == "int8":
        w = torch.randint(-127, 128, (M, K), generator=g, dtype=torch.int8)
        scale = torch.rand(M, generator=g) / 100 + 1e-3
    else:
        w = torch.randn(M, K, generator=g).to(getattr(torch, wtype))
    got = kernels.skinny_linear(x, w, bias, scale)
    assert got is not None and got.dtype == torch.float32 and got.shape == (N, M)
    ref = _reference(x, w, bias, scale)
    # float32 sums of K products: error grows like sqrt(K) * eps * |terms|
    tol = 2e-6 * K**0.5 * float((x.double().abs() @ w.double().abs().T).max())
    if scale is not None:
        tol *= float(scale.max())
    assert (got.double() - ref).abs().max().item() <= tol
    no_bias = kernels.skinny_linear(x, w, None, scale)
    assert (no_bias.double() - (ref - bias.double())).abs().max().item() <= tol


@needs_kernel
def test_skinny_linear_declines_what_it_does_not_support():
    x = torch.randn(2, 8)
    w = torch.randn(4, 8)
    assert kernels.skinny_linear(x, w.double()) is None  # float64 weight
    assert kernels.skinny_linear(x, w.t().contiguous().t()) is None  # non-contiguous weight
    assert kernels.skinny_linear(x, torch.randn(4, 9)) is None  # K mismatch
    assert kernels.skinny_linear(x, w.to(torch.int8)) is None  # int8 without scale
    assert kernels.skinny_linear(x, w, torch.randn(5)) is None  # bias of the wrong length
    assert kernels.skinny_linear(x.requires_grad_(), w) is None  # autograd wanted
    empty = kernels.skinny_linear(torch.randn(0, 8), w)
    assert empty is not None and empty.shape == (0, 4)


@needs_kernel
def test_skinny_linear_object_checks_its_input():
    plan = kernels.SkinnyLinear.create(torch.randn(4, 8))
    with pytest.raises(ValueError, match=r"\(N, 8\).*\(2, 9\)"):
        plan(torch.randn(2, 9))
    x = torch.randn(8, 3).t()  # non-contiguous (3, 8), float32
    torch.testing.assert_close(plan(x).double(), _reference(x, plan.weight), atol=1e-5, rtol=1e-5)
    xb = torch.randn(3, 8).to(torch.bfloat16)  # activations in another dtype are converted
    torch.testing.assert_close(
        plan(xb).double(), _reference(xb.float(), plan.weight), atol=1e-5, rtol=1e-5
    )


def test_native_kernel_can_be_switched_off():
    code = "from attnkit import native as kernels; print(kernels.available(), kernels.status())"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "ATTNKIT_NATIVE": "0"},
        check=True,
    ).stdout
    assert out.strip() == "False disabled by ATTNKIT_NATIVE=0"


@needs_kernel
def test_int8_linear_native_path_matches_dequantized_float64():
    from attnkit.native.int8 import Int8Linear
    from attnkit.native.linear import NATIVE_MAX_ROWS

    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 40)
    q = Int8Linear(lin)
    deq = q.weight.double() * q.scale_f32.double()[:, None]  # float32 scales: the native path
    x = torch.randn(3, 2, 64)  # 6 rows
    with torch.no_grad():
        got = q(x)
        many = q(torch.randn(NATIVE_MAX_ROWS + 1, 64))  # torch's bfloat16 path
    ref = x.double() @ deq.T + lin.bias.double()
    assert got.shape == (3, 2, 40)
    assert (got.double() - ref).abs().max().item() < 1e-5
    assert many.shape == (NATIVE_MAX_ROWS + 1, 40)
    # the cached native plan holds raw pointers: copies must build their own
    clone = copy.deepcopy(q)
    assert "_native_cache" not in vars(clone)
    with torch.no_grad():
        torch.testing.assert_close(clone(x), got)


def test_kv_cache_storage_dtype():
    cache = KVCache(max_len=8, dtype=torch.float32)
    k = torch.randn(1, 2, 3, 4).to(torch.bfloat16)
    k_all, v_all = cache.update(k, k)
    assert k_all.dtype == torch.float32 and k_all.shape == (1, 2, 3, 4)
    torch.testing.assert_close(k_all, k.float())
    k_all, _ = cache.update(k[:, :, :1], k[:, :, :1])
    assert k_all.shape == (1, 2, 4, 4) and k_all.dtype == torch.float32
    for bad in (torch.int64, "float32"):
        with pytest.raises(ValueError, match="dtype must be a floating torch.dtype"):
            KVCache(dtype=bad)


@pytest.mark.parametrize("n_kv_heads,padded", [(4, False), (2, True)])
def test_one_query_decoding_matches_the_full_forward(n_kv_heads, padded):
    """The decoding shortcut (T=1 with a cache, straight to SDPA) against the general path on
    the whole sequence, with grouped-query heads and left padding."""
    torch.manual_seed(0)
    mha = MultiHeadAttention(32, 4, n_kv_heads=n_kv_heads, causal=True, positional="rope").eval()
    B, T = 2, 7
    x = torch.randn(B, T, 32)
    kpm = torch.ones(B, T, dtype=torch.bool)
    if padded:
        kpm[1, :3] = False  # row 1 starts with 3 pad tokens
    with torch.no_grad():
        full = mha(x, valid_key_mask=kpm if padded else None)  # (B, T, C)
        cache = KVCache()
        pos = (kpm.cumsum(1) - 1).clamp(min=0)  # positions count real tokens only
        mha(
            x[:, :4],
            valid_key_mask=kpm[:, :4] if padded else None,
            positions=pos[:, :4] if padded else None,
            cache=cache,
        )
        for t in range(4, T):
            step = mha(
                x[:, t : t + 1],
                valid_key_mask=kpm[:, : t + 1] if padded else None,
                positions=pos[:, t : t + 1] if padded else None,
                cache=cache,
            )
            torch.testing.assert_close(step[:, 0], full[:, t], atol=1e-5, rtol=1e-5)


def test_half_precision_layer_with_a_float32_cache():
    torch.manual_seed(0)
    mha = MultiHeadAttention(32, 4, causal=True).eval()
    x = torch.randn(1, 5, 32)
    with torch.no_grad():
        ref = mha.double()(x.double())  # (1, 5, 32) float64
        mha.to(torch.bfloat16)
        cache = KVCache(dtype=torch.float32)
        outs = [mha(x[:, :3].to(torch.bfloat16), cache=cache)]
        outs += [mha(x[:, t : t + 1].to(torch.bfloat16), cache=cache) for t in (3, 4)]
    got = torch.cat(outs, dim=1)
    assert got.dtype == torch.bfloat16 and cache.k.dtype == torch.float32
    assert (got.double() - ref).abs().max().item() < 0.05  # bfloat16 weights and activations


@needs_kernel
def test_bfloat16_prompts_go_through_the_kernel_in_blocks(kernel_calls):
    from attnkit.native.linear import NATIVE_PREFILL_ROWS, decoding_linears

    calls = kernel_calls
    torch.manual_seed(0)
    lin = torch.nn.Linear(40, 24).to(torch.bfloat16)
    rows = 2 * NATIVE_PREFILL_ROWS + 5
    x = torch.randn(1, rows, 40).to(torch.bfloat16)
    with torch.no_grad(), decoding_linears(torch.nn.Sequential(lin)) as model:
        got = model(x)
    assert calls == [NATIVE_PREFILL_ROWS, NATIVE_PREFILL_ROWS, 5]
    assert got.dtype == torch.bfloat16 and got.shape == (1, rows, 24)
    ref = x.double() @ lin.weight.double().T + lin.bias.double()
    # float32 sums, then one rounding to bfloat16 (relative 2^-8)
    assert ((got.double() - ref).abs() <= 2**-8 * ref.abs() + 1e-6).all()


@needs_kernel
def test_tensor_subclass_weights_are_refused():
    """A wrapper subclass (a quantized tensor, say) may report float32 while its storage holds
    something else: the kernel, which reads raw memory, must not be given one."""

    class Wrapped(torch.Tensor):
        pass

    w = torch.randn(16, 32)
    assert kernels.SkinnyLinear.create(w) is not None  # a plain tensor is taken
    assert kernels.SkinnyLinear.create(torch.nn.Parameter(w)) is not None
    assert kernels.SkinnyLinear.create(w.as_subclass(Wrapped)) is None
    assert kernels.SkinnyLinear.create(w, bias=torch.zeros(16).as_subclass(Wrapped)) is None
