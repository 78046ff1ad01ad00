"""The bandwidth bound of `bench generate`: the read-bandwidth probe, the bytes a decoding step
reads (against hand counts for a tiny GPT-2), the limit and its fraction, the other int8
linears, and the targets on made-up rows (met and missed)."""

import math
import sys

import pytest
import torch

from attnkit.bench import bandwidth as bw
from attnkit.bench import generate as gen
from attnkit.bench import int8_peers

transformers = pytest.importorskip("transformers")

# the tiny GPT-2 of `bench generate --quick`: 2 layers, width 64, 256-wide MLP, 512 tokens
TINY = dict(n_layer=2, n_head=4, n_embd=64, vocab_size=512, n_positions=128)

# Hand count of what one decoding step of that model reads, in numbers:
#   per block: 2 layer norms 2 * (64 + 64) = 256
#              qkv 64 * 192 + 192 = 12480, out 64 * 64 + 64 = 4160
#              MLP up 64 * 256 + 256 = 16640, down 256 * 64 + 64 = 16448
#              -> 256 + 12480 + 4160 + 16640 + 16448 = 49984; two blocks 99968
#   final norm 64 + 64 = 128
#   LM head (tied to the token table, read whole) 512 * 64 = 32768
#   one row of the token table and one of the position table per batch row: 64 + 64 = 128
#   -> 99968 + 128 + 32768 + 128 = 132992 numbers
FP32_BYTES = 132992 * 4  # 531968
BF16_BYTES = 132992 * 2  # 265984
BATCH8_EXTRA = 7 * 128 * 4  # seven more rows of each table
# int8 (block linears and head in int8, one float32 scale per output row, the rest float32):
#   int8 weights: 2 * (64 * 192 + 64 * 64 + 64 * 256 + 256 * 64) + 512 * 64 = 131072 bytes
#   scales: 2 * (192 + 64 + 256 + 64) + 512 = 1664 rows * 4 = 6656 bytes
#   biases: 2 * (192 + 64 + 256 + 64) = 1152 * 4 = 4608 bytes
#   norms: (2 * 256 + 128) * 4 = 2560 bytes; embedding rows 128 * 4 = 512 bytes
INT8_BYTES = 131072 + 6656 + 4608 + 2560 + 512  # 145408
INT8PACK_BYTES = INT8_BYTES - 1664 * 2  # its scales are bfloat16


@pytest.fixture(scope="module")
def models():
    from attnkit.checkpoints.hf import convert_from_hf

    torch.manual_seed(0)
    cfg = transformers.GPT2Config(**TINY)
    hf = transformers.GPT2LMHeadModel(cfg).eval()

    def fresh():
        return convert_from_hf(hf.state_dict(), cfg.to_dict()).eval()

    return hf, fresh


def test_weight_bytes_match_the_hand_count(models):
    from attnkit.generation import quantize_int8

    hf, fresh = models
    assert bw.decode_weight_bytes(hf) == FP32_BYTES
    assert bw.decode_weight_bytes(fresh()) == FP32_BYTES
    assert bw.decode_weight_bytes(fresh(), batch=8) == FP32_BYTES + BATCH8_EXTRA
    assert bw.decode_weight_bytes(fresh().to(torch.bfloat16)) == BF16_BYTES
    assert bw.decode_weight_bytes(quantize_int8(fresh())) == INT8_BYTES
    assert bw.decode_weight_bytes(int8_peers.int8pack_model(fresh())) == INT8PACK_BYTES


def test_torchao_int8_bytes_and_decoding(models):
    pytest.importorskip("torchao")
    from attnkit.generation import generate

    _, fresh = models
    m, why = int8_peers.torchao_int8_model(fresh())
    assert why is None and m is not None
    # int8 codes and float32 scales, as attnkit's int8 (its zero points are not read)
    assert bw.decode_weight_bytes(m) == INT8_BYTES
    # decodes through torchao's product, close to float32: same greedy tokens here
    ids = torch.randint(0, 512, (1, 8), generator=torch.Generator().manual_seed(1))
    assert generate(m, ids, 6, temperature=0) == generate(fresh(), ids, 6, temperature=0)


def test_torchao_missing_is_a_reason(models, monkeypatch):
    monkeypatch.setitem(sys.modules, "torchao.quantization", None)  # import fails
    _, fresh = models
    assert int8_peers.torchao_int8_model(fresh()) == (None, "torchao not installed")


def test_int8pack_linear_matches_its_codes():
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 40)
    layer = int8_peers._Int8PackLinear(lin)
    w = lin.weight.detach().double()
    scale = w.abs().amax(dim=1) / 127  # the codes, computed here in float64
    codes = torch.round(w / scale[:, None]).clamp(-127, 127)
    assert torch.equal(layer.weight.double(), codes)
    x = torch.randn(3, 5, 64)
    ref = x.double() @ (codes * scale[:, None]).t() + lin.bias.detach().double()  # (3, 5, 40)
    got = layer(x)
    assert got.shape == (3, 5, 40) and got.dtype == torch.float32
    # bfloat16 activations and scales: 8 significant bits, sums of 64 products
    torch.testing.assert_close(got.double(), ref, rtol=0, atol=0.05)


def test_kv_bytes_context_limit_and_fraction():
    context = bw.mean_context(32, 8)
    assert context == 32 + 7 / 2  # steps read 32 (prompt), 33, ..., 39: mean 35.5
    kv = bw.kv_cache_bytes(2, 64, 1, context, 4)
    assert kv == 2 * 2 * 35.5 * 64 * 4  # layers x (k, v) x positions x width x float32
    step = FP32_BYTES + kv
    assert bw.limit_tokens_per_s(10e9, step) == pytest.approx(10e9 / 568320)
    assert bw.limit_tokens_per_s(10e9, step, batch=8) == pytest.approx(8 * 10e9 / 568320)
    assert bw.fraction_of_limit(12.0, 16.0) == 0.75
    for bad in (0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="bytes_per_s"):
            bw.limit_tokens_per_s(bad, step)
    with pytest.raises(TypeError, match="'x'"):
        bw.fraction_of_limit("x", 1.0)
    with pytest.raises(ValueError, match="batch must be >= 1, got 0"):
        bw.kv_cache_bytes(2, 64, 0, context, 4)
    with pytest.raises(TypeError, match="nn.Module, got int"):
        bw.decode_weight_bytes(3)


def test_probe_reads_a_small_buffer():
    got = bw.measure_read_bandwidth(1024**2, passes=2)
    assert math.isfinite(got.bytes_per_s) and got.bytes_per_s > 0
    assert set(got.kernels) == set(bw.KERNELS) and got.kernel in bw.KERNELS
    assert got.bytes_per_s == max(got.kernels.values())
    assert got.buffer_bytes == 1024**2 and got.threads == torch.get_num_threads()
    only = bw.measure_read_bandwidth(1024**2, passes=1, kernels=["sum"])
    assert only.kernel == "sum" and list(only.kernels) == ["sum"]
    assert got.to_json()["gb_per_s"] == got.bytes_per_s / 1e9


@pytest.mark.parametrize(
    "kwargs, error, text",
    [
        (dict(buffer_bytes=100), ValueError, "buffer_bytes must be >= 32768, got 100"),
        (dict(buffer_bytes=2.0**20), TypeError, "1048576.0"),
        (dict(passes=0), ValueError, "passes must be >= 1, got 0"),
        (dict(kernels=["copy"]), ValueError, "'copy'"),
        (dict(kernels="sum"), TypeError, "'sum'"),
    ],
)
def test_probe_refuses_bad_arguments(kwargs, error, text):
    with pytest.raises(error, match=text):
        bw.measure_read_bandwidth(**{"buffer_bytes": 1024**2, **kwargs})


def test_last_level_cache_from_sysfs(tmp_path):
    for name, level, size in (("index0", 1, "48K"), ("index2", 2, "2048K"), ("index3", 3, "480M")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "level").write_text(f"{level}\n")
        (tmp_path / name / "size").write_text(f"{size}\n")
    assert bw.last_level_cache_bytes(tmp_path) == 480 * 1024**2
    assert bw.last_level_cache_bytes(tmp_path / "missing") is None


def _row(case, ours, hf, agreement=1.0, top1=None, fraction=None, limit=None):
    batch, n, weights, target = gen.CASES[case]
    row = dict(
        case=case,
        batch=batch,
        new_tokens=n,
        dtype=weights,
        attnkit_tokens_per_s=ours,
        hf_fp32_tokens_per_s=hf,
        ratio=ours / hf,
        greedy_agreement=agreement,
        target=target,
        fraction_of_limit=fraction,
        limit_tokens_per_s=limit,
    )
    if top1 is not None:
        row["top1_vs_fp32"] = top1
    return row


def test_targets_met_and_missed():
    good = [
        _row("b1-fp32", 30.0, 20.0, fraction=0.75, limit=40.0),
        _row("b1-bf16", 50.0, 20.0, top1=0.98, fraction=0.8, limit=62.5),
        _row("b8-fp32", 200.0, 80.0),
        _row("b1-int8", 90.0, 20.0, top1=1.0, fraction=0.72, limit=125.0),
    ]
    checks = gen.evaluate_checks(good)
    assert [c.key for c in checks] == [
        "b1-fp32-speed", "b1-fp32-greedy", "b1-fp32-limit",
        "b1-bf16-speed", "b1-bf16-limit",
        "b8-fp32-speed", "b8-fp32-greedy",
        "b1-int8-speed", "b1-int8-top1", "b1-int8-limit",
    ]  # fmt: skip
    assert all(c.passed is True for c in checks)
    limit = {c.key: c for c in checks}["b1-int8-limit"]
    assert limit.measured == "72.0%" and limit.reference == "limit 125.0 tokens/s"

    bad = [
        _row("b1-fp32", 30.0, 20.0, agreement=0.99, fraction=0.69, limit=43.5),
        _row("b1-int8", 50.0, 20.0, top1=0.98, fraction=0.4, limit=125.0),
    ]
    marks = {c.key: c.passed for c in gen.evaluate_checks(bad)}
    assert marks["b1-fp32-speed"] is True  # 1.5x >= 0.95x
    assert marks["b1-fp32-greedy"] is False and marks["b1-fp32-limit"] is False
    assert marks["b1-int8-speed"] is False  # 2.5x < 3x
    assert marks["b1-int8-top1"] is False and marks["b1-int8-limit"] is False
    assert marks["b1-bf16-speed"] is None and marks["b8-fp32-speed"] is None  # not run
    text = gen.render_checks(gen.evaluate_checks(bad))
    assert "FAIL" in text and "PASS" in text and "n/a (case not run)" in text


def test_limits_added_to_rows_and_skipped_sides_shown():
    side = dict(weight_bytes_per_step=400.0, kv_bytes_per_step=100.0, bytes_per_token=500.0)
    row = _row("b1-int8", 8.0, 4.0, top1=1.0)
    row["sides"] = [
        dict(side="attnkit", weights="int8", tokens_per_s=8.0, **side),
        dict(side="hf-fp32", weights="float32", tokens_per_s=4.0, **side),
        dict(side="torchao-int8", weights="int8", skipped="torchao not installed"),
    ]
    gen.add_limits([row], bytes_per_s=5000.0)
    assert row["limit_tokens_per_s"] == 10.0  # 5000 B/s / 500 B a token
    assert row["fraction_of_limit"] == 0.8 and row["hf_fp32_fraction_of_limit"] == 0.4
    assert "limit_tokens_per_s" not in row["sides"][2]
    for s in row["sides"][:2]:
        s.update(greedy_vs_hf_fp32=1.0, attnkit_vs_this=8.0 / s["tokens_per_s"])
    probe = bw.ReadBandwidth(5000.0, "mv", 1024**2, 2, 3)
    text = gen.render_limits([row], probe, probe, probe)
    assert "skipped: torchao not installed" in text and "80.0%" in text and "40.0%" in text
