"""Dynamic int8 linears for encoders (attnkit.native.int8.DynamicInt8Linear) against a float64
implementation of their quantize-dequantize math, Encoder(quantize="int8") and `embed --int8`."""

import copy
import json

import numpy as np
import pytest
import torch
from test_checkpoints import word_tokenizer
from torch import nn

import attnkit
from attnkit import Encoder
from attnkit.cli import main
from attnkit.models import build_model, get_preset
from attnkit.native.int8 import DynamicInt8Linear, quantize_dynamic_int8


def reference(x: torch.Tensor, layer: DynamicInt8Linear, bias: torch.Tensor) -> torch.Tensor:
    """float64: each row centred and scaled to [-1, 1], the whole input quantized to 256
    levels over its range (with 0 in it), times the int8 weight codes and their row scales,
    the centre's share added back through the weight rows' sums."""
    x = x.double().reshape(-1, x.shape[-1])
    lo, hi = x.amin(1, keepdim=True), x.amax(1, keepdim=True)
    c, r = (hi + lo) / 2, (hi - lo) / 2
    xs = (x - c) / r  # (M, K) in [-1, 1]
    glo, ghi = min(xs.min().item(), 0.0), max(xs.max().item(), 0.0)
    step = (ghi - glo) / 255
    zero = min(max(round(-glo / step), 0), 255)
    xd = ((torch.round(xs / step) + zero).clamp(0, 255) - zero) * step
    wd = layer.weight_int8.double() * layer.weight_scale.double()[:, None]  # (N, K)
    return r * (xd @ wd.T) + c * wd.sum(1)[None, :] + bias.double()


def test_int8_linear_matches_the_float64_quantize_dequantize_math():
    g = torch.Generator().manual_seed(0)
    lin = nn.Linear(384, 256)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(256, 384, generator=g) * 0.05)
        lin.bias.copy_(torch.randn(256, generator=g))
    # rows of very different sizes and offsets (a per-tensor scale would fail most of them)
    x = torch.randn(3, 20, 384, generator=g) * torch.logspace(-2, 2, 20)[None, :, None] + 0.5
    layer = DynamicInt8Linear(lin)
    assert layer.weight_int8.abs().max() <= 63  # 7-bit codes: no VPMADDUBSW saturation
    y = layer(x)
    assert y.shape == (3, 20, 256) and y.dtype == torch.float32
    ref = reference(x, layer, lin.bias.detach()).view(3, 20, 256)
    exact = x.double() @ lin.weight.detach().double().T + lin.bias.detach().double()
    err_q = (y.double() - ref).abs().amax(-1)  # (3, 20) per row
    err_f = (y.double() - exact).abs().amax(-1)
    size = exact.abs().amax(-1)
    # the quantized product is the reference's up to a rounding flip or two of an activation
    assert (err_q <= 2e-3 * size).all(), (err_q / size).max()
    assert (err_q <= 0.2 * err_f).all(), (err_q / err_f).max()
    # and per-token scales keep every row's error small relative to that row
    assert (err_f <= 0.03 * size).all(), (err_f / size).max()


def test_int8_rows_are_quantized_independently():
    g = torch.Generator().manual_seed(1)
    layer = DynamicInt8Linear(nn.Linear(64, 32))
    x = torch.randn(6, 64, generator=g)
    alone = torch.cat([layer(x[i : i + 1]) for i in range(6)])
    x_big = x.clone()
    x_big[2] *= 1e4  # one huge token
    together = layer(x_big)
    keep = [0, 1, 3, 4, 5]
    # the same grid for every other row: equal up to a rounding flip of an activation or two
    size = float(alone.abs().max())
    torch.testing.assert_close(together[keep], alone[keep], rtol=0, atol=0.01 * size)
    # where one scale for the whole input (fbgemm's own) loses them
    plain = torch.ops.quantized.linear_dynamic(x_big, layer._packed, False) + layer.bias
    assert (plain[keep] - alone[keep]).abs().max() > 0.3 * size


def test_int8_linear_without_bias_dtype_and_copy():
    lin = nn.Linear(48, 16, bias=False)
    layer = DynamicInt8Linear(lin)
    x = torch.randn(4, 48)
    torch.testing.assert_close(layer(x), x @ lin.weight.detach().T, rtol=0.05, atol=0.05)
    assert layer(x.double()).dtype == torch.float64
    torch.testing.assert_close(copy.deepcopy(layer)(x), layer(x), rtol=0, atol=0)


def tiny_bert():
    cfg = get_preset("tiny-bert", vocab_size=80, d_model=32, n_heads=4, pooling="mean")
    return build_model(cfg).eval()


def test_quantize_dynamic_int8_keeps_qkv_in_float32():
    model = tiny_bert()
    quantize_dynamic_int8(model)
    kinds = {n: type(m).__name__ for n, m in model.named_modules() if n.startswith("blocks.")}
    assert all(v == "Linear" for k, v in kinds.items() if k.endswith("attn.qkv_proj"))
    for part in ("attn.out_proj", "mlp.up", "mlp.down"):
        assert all(v == "DynamicInt8Linear" for k, v in kinds.items() if k.endswith(part))
    with pytest.raises(ValueError, match="no nn.Linear in blocks"):
        quantize_dynamic_int8(nn.Sequential(nn.Linear(8, 8)))
    with pytest.raises(TypeError, match="sequence of layer-name suffixes"):
        quantize_dynamic_int8(tiny_bert(), skip="qkv_proj")


def test_encoder_quantize_argument_checks():
    with pytest.raises(ValueError, match="quantize must be None or 'int8', got 'int4'"):
        Encoder(tiny_bert(), tokenizer=word_tokenizer(), quantize="int4")
    with pytest.raises(ValueError, match="runs on the CPU"):
        Encoder(tiny_bert(), tokenizer=word_tokenizer(), quantize="int8", device="cuda")
    with pytest.raises(ValueError, match="float32 model on the CPU"):
        Encoder(tiny_bert().to(torch.float64), tokenizer=word_tokenizer(), quantize="int8")


def test_embed_int8_cli_runs_close_to_float32(tmp_path, capsys):
    torch.manual_seed(0)
    out = tmp_path / "tiny-bert"
    attnkit.save(tiny_bert(), out, tokenizer=word_tokenizer())
    texts = ["the cat sat on the mat", "a dog ran", "to be or not to be that is it"]
    fp32, int8 = tmp_path / "f.jsonl", tmp_path / "q.jsonl"
    assert main(["embed", *texts, "--model", str(out), "--out", str(fp32)]) == 0
    assert main(["embed", *texts, "--model", str(out), "--int8", "--out", str(int8)]) == 0
    assert "wrote 3 embeddings of dimension 32" in capsys.readouterr().err
    a = np.array([json.loads(line)["embedding"] for line in fp32.read_text().splitlines()])
    b = np.array([json.loads(line)["embedding"] for line in int8.read_text().splitlines()])
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() >= 0.99 and not np.array_equal(a, b), cos


def test_passages_have_100_to_256_tokens(tmp_path):
    from attnkit.bench.embed import read_passages

    src = tmp_path / "c.txt"
    src.write_text("\n".join(f"line {i} " + "word " * (i % 9) for i in range(3000)) + "\n")
    passages = read_passages(src, 12, lambda t: len(t.split()))
    assert len(passages) == 12
    sizes = [len(p.split()) for p in passages]
    assert all(100 <= n <= 256 for n in sizes) and max(sizes) - min(sizes) > 50, sizes
    with pytest.raises(ValueError, match="passages must be an integer >= 0, got -1"):
        from attnkit.bench.embed import EmbedSettings

        EmbedSettings(passages=-1)


@pytest.mark.slow
def test_bench_embed_with_onnx_runtime_rows_on_both_text_sets(tmp_path, capsys):
    from test_model_cli import CORPUS

    if not CORPUS.is_file():
        pytest.skip(f"real-text corpus {CORPUS} is absent")
    out = tmp_path / "bench"
    argv = ["bench", "embed", "--lines", "32", "--passages", "4", "--rounds", "2"]
    assert main([*argv, "--bf16", "off", "--corpus", str(CORPUS), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    data = json.loads((out / "embed.json").read_text())
    got = [(r["set"], r["impl"], r["dtype"]) for r in data["rows"]]
    sides = [
        ("sentence-transformers", "float32"),
        ("onnxruntime", "float32"),
        ("onnxruntime", "int8"),
        ("attnkit", "float32"),
        ("attnkit", "int8"),
    ]
    assert got == [(s, *side) for s in ("lines", "passages") for side in sides]
    for r in data["rows"]:
        assert len(r["seconds"]) == 2 and r["sentences_per_s"] > 0
        # ONNX Runtime's float32 export embeds as sentence-transformers does
        assert r["min_cosine"] >= (0.99999 if r["dtype"] == "float32" else 0.97), r
    assert len(data["checks"]) == 4 and "vs ONNX Runtime" in text and "load average" in text
