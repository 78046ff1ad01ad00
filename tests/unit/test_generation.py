"""Generation: KV-cached decoding against the uncached model and HF transformers, sampling
filters against sets computed here from the logits, seeds, repetition penalty, stop strings,
argument errors, the `generate` command and `bench generate --quick`."""

import io
import json

import numpy as np
import pytest
import torch

import attnkit
from attnkit.attention.kv_cache import KVCache
from attnkit.cli import main
from attnkit.generation import (
    apply_repetition_penalty,
    choose_tokens,
    filter_logits,
    generate,
    stream,
)
from attnkit.models import build_model, get_preset
from attnkit.text.tokenizers import train_char

transformers = pytest.importorskip("transformers")

PROMPTS = [[5, 17, 3, 99, 42], [7], [8, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11], [200, 201, 202]]
TEXT = "to be, or not to be: that is the question. whether 'tis nobler in the mind\n"


def tiny(preset="tiny", **kw):
    torch.manual_seed(0)
    cfg = get_preset(preset, **kw)
    model = build_model(cfg.replace(initializer_range=0.2)).eval()  # peaked, varied logits
    return model


@pytest.fixture(scope="module")
def char_model():
    tok = train_char(TEXT)
    torch.manual_seed(0)
    model = build_model(
        get_preset("tiny", vocab_size=tok.get_vocab_size(), max_seq_len=48).replace(
            initializer_range=0.2
        )
    ).eval()
    model.meta = model.meta.replace(tokenizer=tok)
    return model


def full_logits(model, ids):
    """Next-token logits of the plain (uncached) model for one row of ids."""
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0, -1].double()


# --------------------------------------------------------------------------------------------
# the cache against the uncached model
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("preset", ["tiny", "tiny-llama"])
def test_cached_greedy_equals_uncached_and_each_prompt_alone(preset):
    model = tiny(preset)
    cached = generate(model, PROMPTS, 24, temperature=0)
    uncached = generate(model, PROMPTS, 24, temperature=0, use_cache=False)
    alone = [generate(model, p, 24, temperature=0) for p in PROMPTS]
    assert cached == uncached == alone
    for p, out in zip(PROMPTS, cached):
        assert out[: len(p)] == p and len(out) == len(p) + 24
    # the reference: argmax of the plain model's full forward at every step
    row = PROMPTS[0]
    for t in cached[0][len(row) :]:
        assert t == int(full_logits(model, row).argmax())
        row = row + [t]
    assert len(set(cached[0][5:])) > 1  # not a constant sequence


def test_tensor_prompts_and_return_types():
    model = tiny()
    ids = torch.tensor([[1, 2, 3], [4, 5, 6]])
    batch = generate(model, ids, 5, temperature=0)
    assert isinstance(batch, list) and len(batch) == 2
    assert generate(model, ids[1], 5, temperature=0) == batch[1]
    assert generate(model, [4, 5, 6], 5, temperature=0) == batch[1]


def test_the_cache_is_allocated_once(monkeypatch):
    model = tiny()
    calls = []
    original = KVCache._allocate
    monkeypatch.setattr(
        KVCache, "_allocate", lambda self, k, v, cap: (calls.append(cap), original(self, k, v, cap))
    )
    out = generate(model, PROMPTS, 30, temperature=0)
    assert calls == [11 + 30] * model.config.n_layer  # longest prompt + new tokens, per layer
    assert all(len(o) == len(p) + 30 for o, p in zip(out, PROMPTS))


def test_slide_goes_past_the_context_and_matches_uncached():
    model = tiny(max_seq_len=16)
    with pytest.raises(ValueError, match="max_seq_len=16"):
        generate(model, [1, 2, 3], 20, temperature=0)
    cached = generate(model, [[1, 2, 3], [9] * 20], 40, temperature=0, context="slide")
    uncached = generate(
        model, [[1, 2, 3], [9] * 20], 40, temperature=0, context="slide", use_cache=False
    )
    assert cached == uncached
    assert [len(r) for r in cached] == [43, 60]


# --------------------------------------------------------------------------------------------
# sampling
# --------------------------------------------------------------------------------------------
def allowed_set(logits: np.ndarray, temperature: float, top_k, top_p) -> set[int]:
    """The tokens top-k then top-p keep, computed in float64 numpy."""
    z = logits / temperature
    order = np.argsort(-z, kind="stable")
    keep = list(order)
    if top_k is not None:
        kth = z[order[top_k - 1]]
        keep = [i for i in keep if z[i] >= kth]
    if top_p is not None:
        p = np.exp(z[keep] - z[keep].max())
        p /= p.sum()
        total, chosen = 0.0, []
        for i, pi in zip(keep, p):
            chosen.append(i)
            total += pi
            if total >= top_p:
                break
        keep = chosen
    return set(int(i) for i in keep)


@pytest.mark.parametrize(
    "top_k,top_p", [(5, None), (None, 0.6), (20, 0.8), (1, None), (None, 0.01)]
)
def test_sampling_stays_inside_top_k_top_p(top_k, top_p):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 300, generator=g) * 3  # (B, V)
    allowed = [allowed_set(row.double().numpy(), 0.7, top_k, top_p) for row in logits]
    drawn = [set() for _ in range(4)]
    for _ in range(300):
        for i, t in enumerate(choose_tokens(logits, 0.7, top_k, top_p, generator=g).tolist()):
            drawn[i].add(t)
    for d, a in zip(drawn, allowed):
        assert d <= a, sorted(d - a)
        assert len(d) >= min(len(a), 2) if len(a) > 1 else d == a  # it does sample the set
    kept = torch.isfinite(filter_logits(logits / 0.7, top_k, top_p))
    assert [set(torch.nonzero(r).flatten().tolist()) for r in kept] == allowed


@pytest.mark.parametrize("top_k,top_p", [(4, None), (None, 0.5), (8, 0.7)])
def test_generated_tokens_are_inside_the_allowed_set_of_the_model(top_k, top_p):
    model = tiny()
    out = generate(model, PROMPTS[:2], 20, temperature=1.3, top_k=top_k, top_p=top_p, seed=7)
    for prompt, row in zip(PROMPTS[:2], out):
        for n in range(len(prompt), len(row)):
            a = allowed_set(full_logits(model, row[:n]).numpy(), 1.3, top_k, top_p)
            assert row[n] in a, (n, row[n], sorted(a))


def test_a_seed_reproduces_a_sample_and_leaves_the_global_rng_alone():
    model = tiny()
    state = torch.get_rng_state()
    a = generate(model, PROMPTS, 20, temperature=1.0, top_p=0.95, seed=123)
    assert torch.equal(torch.get_rng_state(), state)
    assert generate(model, PROMPTS, 20, temperature=1.0, top_p=0.95, seed=123) == a
    assert generate(model, PROMPTS, 20, temperature=1.0, top_p=0.95, seed=124) != a
    greedy = generate(model, PROMPTS, 20, temperature=0)
    assert a != greedy


# --------------------------------------------------------------------------------------------
# repetition penalty, eos, stop strings, streaming
# --------------------------------------------------------------------------------------------
def test_repetition_penalty_by_hand():
    logits = torch.tensor([[2.0, -1.0, 0.5, -3.0, 4.0]])
    seen = torch.tensor([[True, True, False, False, True]])
    got = apply_repetition_penalty(logits, seen, 2.0)
    assert got.tolist() == [[1.0, -2.0, 0.5, -3.0, 2.0]]
    assert torch.equal(apply_repetition_penalty(logits, seen, 1.0), logits)


def test_repetition_penalty_changes_greedy_choice_as_documented():
    model = tiny()
    prompt = PROMPTS[0]
    out = generate(model, prompt, 12, temperature=0, repetition_penalty=1.8)
    row = list(prompt)
    for t in out[len(prompt) :]:
        z = full_logits(model, row)
        for s in set(row):
            z[s] = z[s] / 1.8 if z[s] > 0 else z[s] * 1.8
        assert t == int(z.argmax())
        row.append(t)
    plain = generate(model, prompt, 12, temperature=0)
    assert len(set(out[5:])) > len(set(plain[5:]))  # fewer repeats than plain greedy


def test_eos_ends_a_row_and_is_kept():
    model = tiny()
    plain = generate(model, PROMPTS, 20, temperature=0)
    eos = plain[0][len(PROMPTS[0]) + 3]
    out = generate(model, PROMPTS, 20, temperature=0, eos_token_id=eos)
    for p, full, got in zip(PROMPTS, plain, out):
        new = full[len(p) :]
        expect = new[: new.index(eos) + 1] if eos in new else new
        assert got == p + expect
    assert len(out[0]) == len(PROMPTS[0]) + 4


def test_stop_strings_end_at_the_token_that_completes_them(char_model):
    tok = char_model.meta.tokenizer
    plain = generate(char_model, "to be", 30, temperature=0)
    new = plain[len(tok.encode("to be").ids) :]
    text = tok.decode(new)
    stop = text[6:8]
    n = next(n for n in range(1, len(new) + 1) if stop in tok.decode(new[:n]))
    out = generate(char_model, "to be", 30, temperature=0, stop=[stop, "never appears \u2603"])
    assert out == plain[: len(plain) - len(new) + n]
    assert tok.decode(out).endswith(stop)
    assert generate(char_model, "to be", 30, temperature=0, stop="\u2603") == plain


def test_stop_token_sequences_end_each_row_where_its_new_tokens_end_with_one():
    model = tiny()  # no tokenizer needed for id stops
    plain = generate(model, PROMPTS, 20, temperature=0)
    news = [out[len(p) :] for p, out in zip(PROMPTS, plain)]
    seq = news[0][6:8]  # a pair row 0 produces
    lone = news[1][3]

    def cut(new, stops):  # first n where new[:n] ends with a stop sequence
        for n in range(1, len(new) + 1):
            if any(tuple(new[:n][-len(q) :]) == tuple(q) for q in stops if len(q) <= n):
                return n
        return len(new)

    stops = [seq, [lone]]
    out = generate(model, PROMPTS, 20, temperature=0, stop=stops)
    for p, new, got in zip(PROMPTS, news, out):
        assert got == p + new[: cut(new, stops)]
    assert len(out[0]) < len(plain[0])  # row 0 did stop early
    # a flat list of ids is one sequence
    one = generate(model, PROMPTS[0], 20, temperature=0, stop=seq)
    assert one == out[0][: len(PROMPTS[0]) + cut(news[0], [seq])]
    # ids in the prompt do not count: (last prompt id, first new id) would match at once if they did
    across = [PROMPTS[0][-1], news[0][0]]
    got = generate(model, PROMPTS[0], 20, temperature=0, stop=across)
    assert got == PROMPTS[0] + news[0][: cut(news[0], [across])]
    assert len(got) > len(PROMPTS[0]) + 1


def test_stream_yields_tokens_as_they_are_made(char_model):
    calls = []  # one LM-head call per forward pass
    hook = char_model.lm_head.register_forward_hook(lambda *a: calls.append(1))
    try:
        it = stream(char_model, "to be", 10, temperature=0)
        assert calls == []  # nothing runs before the first token is asked for
        first = next(it)
        assert len(calls) == 1  # the prompt only
        rest = list(it)
        assert len(calls) == 10  # the prompt, then one step per further token
    finally:
        hook.remove()
    events = [first] + rest
    assert [e.step for e in events] == list(range(10))
    ids = generate(char_model, "to be", 10, temperature=0)
    assert [e.token_id for e in events] == ids[-10:]
    assert "".join(e.text for e in events) == char_model.meta.tokenizer.decode(ids[-10:])
    got = []
    assert generate(char_model, ["to", "be or"], 6, temperature=0, callback=got.append) == generate(
        char_model, ["to", "be or"], 6, temperature=0
    )
    assert sorted((e.row, e.step) for e in got) == [(r, s) for r in (0, 1) for s in range(6)]


# --------------------------------------------------------------------------------------------
# HF transformers
# --------------------------------------------------------------------------------------------
def hf_tiny():
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(
        vocab_size=211,
        n_embd=32,
        n_layer=2,
        n_head=4,
        n_positions=64,
        initializer_range=0.2,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )
    return transformers.GPT2LMHeadModel(cfg).eval()


def hf_greedy(hf, prompts, n, **kw):
    """HF generate on a left-padded batch; rows without their padding."""
    P = max(len(p) for p in prompts)
    ids = torch.tensor([[0] * (P - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (P - len(p)) + [1] * len(p) for p in prompts])
    hf.generation_config.eos_token_id = None  # exactly n new tokens, none suppressed
    with torch.no_grad():
        out = hf.generate(
            ids, attention_mask=mask, max_new_tokens=n, do_sample=False, pad_token_id=0, **kw
        )
    return [p + out[i, P:].tolist() for i, p in enumerate(prompts)]


@pytest.mark.parametrize("direction", ["hf_to_attnkit", "attnkit_to_hf"])
def test_greedy_matches_transformers_generate(direction, tmp_path):
    from attnkit.checkpoints.hf import convert_from_hf, export_hf

    if direction == "hf_to_attnkit":
        hf = hf_tiny()
        ours = convert_from_hf(hf.state_dict(), hf.config.to_dict()).eval()
    else:
        ours = build_model(
            get_preset("gpt2").replace(
                vocab_size=211,
                n_layer=2,
                n_heads=4,
                d_model=32,
                max_seq_len=64,
                dropout=0.0,
                attn_dropout=0.0,
                initializer_range=0.2,
            )
        ).eval()
        export_hf(ours, tmp_path)
        hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    prompts = [[p % 211 for p in row] for row in PROMPTS[:3]]
    ref = hf_greedy(hf, prompts, 16)
    assert generate(ours, prompts, 16, temperature=0) == ref
    assert [generate(ours, p, 16, temperature=0) for p in prompts] == [
        hf_greedy(hf, [p], 16)[0] for p in prompts
    ]
    assert generate(ours, prompts, 16, temperature=0, repetition_penalty=1.5) == hf_greedy(
        hf, prompts, 16, repetition_penalty=1.5
    )


# --------------------------------------------------------------------------------------------
# bad arguments
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(max_new_tokens=0), "max_new_tokens must be an int >= 1, got 0"),
        (dict(max_new_tokens=2.5), "max_new_tokens must be an int >= 1, got 2.5"),
        (dict(temperature=-0.1), r"temperature must be a float in \[0, inf\), got -0.1"),
        (dict(temperature=float("nan")), "temperature .* got nan"),
        (dict(top_k=0), "top_k must be an int >= 1, got 0"),
        (dict(top_p=0.0), r"top_p must be a float in \(0, 1\], got 0.0"),
        (dict(top_p=1.5), r"top_p .* got 1.5"),
        (dict(repetition_penalty=0), r"repetition_penalty must be a float in \(0, inf\), got 0"),
        (dict(seed=-1), "seed must be an int >= 0, got -1"),
        (dict(eos_token_id=256), r"eos_token_id must be .* \[0, 256\), got 256"),
        (dict(stop=[""]), r"stop must be a non-empty string, .* got \[''\]"),
        (dict(stop=[[]]), r"stop must be .* token ids in \[0, 256\).* got \[\[\]\]"),
        (dict(stop=[[3, 256]]), r"stop must be .* got \[\[3, 256\]\]"),
        (dict(stop=[1.5]), r"stop must be .* got \[1.5\]"),
        (dict(stop="x"), "stop=.*'x'.* needs a tokenizer"),
        (dict(context="wrap"), r"context must be one of \('error', 'slide'\), got 'wrap'"),
        (dict(prompt=[]), "prompt is empty"),
        (dict(prompt=[1, 256]), r"prompt 0 holds token id 256, expected ints in \[0, 256\)"),
        (dict(prompt=[[1], []]), "prompt 1 is empty"),
        (dict(prompt="hello"), "a text prompt needs a tokenizer"),
        (dict(prompt=torch.ones(2, 2)), "prompt tensor must hold integer token ids"),
        (dict(prompt=[1, "a"]), "prompt must be a str, a list of token ids"),
        (dict(max_new_tokens=300), r"= 301 exceeds the model's max_seq_len=256"),
    ],
)
def test_bad_arguments_name_the_value(kw, match):
    model = tiny()
    args = dict(prompt=[1], max_new_tokens=4)
    args.update(kw)
    with pytest.raises(ValueError, match=match):
        generate(model, args.pop("prompt"), args.pop("max_new_tokens"), **args)


def test_models_that_cannot_generate_are_refused():
    with pytest.raises(TypeError, match="model must be an attnkit GPT"):
        generate(build_model(get_preset("tiny-bert")), [1], 2)
    with pytest.raises(ValueError, match="head='none'"):
        generate(build_model(get_preset("tiny", head="none")), [1], 2)


# --------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------
class Recorder(io.StringIO):
    def __init__(self):
        super().__init__()
        self.flushed = []

    def flush(self):
        self.flushed.append(self.getvalue())


def test_cli_generate_streams_the_text(char_model, tmp_path, monkeypatch):
    attnkit.save(char_model, tmp_path / "m", tokenizer=char_model.meta.tokenizer)
    ids = generate(char_model, "to be", 12, temperature=0)
    rec = Recorder()
    monkeypatch.setattr("sys.stdout", rec)
    assert (
        main(
            [
                "generate",
                "--model",
                str(tmp_path / "m"),
                "--prompt",
                "to be",
                "--max-new-tokens",
                "12",
                "--temperature",
                "0",
            ]
        )
        == 0
    )
    assert rec.getvalue() == char_model.meta.tokenizer.decode(ids) + "\n"
    assert len(set(rec.flushed)) >= 12  # the text grew token by token, flushed each time
    rec2 = Recorder()
    monkeypatch.setattr("sys.stdout", rec2)
    assert (
        main(
            [
                "generate",
                "--model",
                str(tmp_path / "m"),
                "--prompt",
                "to be",
                "--prompt",
                "or",
                "--tokens",
                "60",
                "--seed",
                "3",
                "--top-k",
                "5",
            ]
        )
        == 0
    )
    assert len(rec2.getvalue().split("\n" + "-" * 40 + "\n")) == 2


def test_cli_generate_bad_value_is_one_line(char_model, tmp_path, capsys):
    attnkit.save(char_model, tmp_path / "m", tokenizer=char_model.meta.tokenizer)
    with pytest.raises(SystemExit) as e:
        main(["generate", "--model", str(tmp_path / "m"), "--top-p", "2"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["attnkit: error: top_p must be a float in (0, 1], got 2.0"]


def test_bench_generate_quick(tmp_path, capsys):
    assert main(["bench", "generate", "--quick", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    data = json.loads((tmp_path / "generate.json").read_text())
    rows = data["rows"]
    assert {r["case"] for r in rows} >= {"b1-fp32", "b8-fp32"}
    for r in rows:
        assert r["attnkit_tokens_per_s"] > 0 and r["hf_fp32_tokens_per_s"] > 0
        assert r["ratio"] == pytest.approx(r["attnkit_tokens_per_s"] / r["hf_fp32_tokens_per_s"])
        if r["dtype"] == "float32":
            assert r["greedy_agreement"] == 1.0
    assert "tokens/s" in printed
    # against the bandwidth limit: every side, its bytes, the limit and the fraction
    for column in ("weights/step", "KV/step", "limit tokens/s", "of limit", "Targets"):
        assert column in printed
    band = data["bandwidth"]
    assert band["gb_per_s"] > 0 and band["kernel"] in band["kernels_gb_per_s"]
    assert band["threads"] == data["threads"] and "median" in band["method"]
    assert band["gb_per_s"] == max(band["before"]["gb_per_s"], band["after"]["gb_per_s"])
    assert data["versions"]["torch"] == torch.__version__
    assert data["versions"]["transformers"] == transformers.__version__
    assert "torchao" in data["versions"]
    by_case = {r["case"]: r for r in rows}
    assert [s["side"] for s in by_case["b1-int8"]["sides"]] == [
        "attnkit", "hf-fp32", "torchao-int8", "int8pack-mm"
    ]  # fmt: skip
    assert [s["side"] for s in by_case["b1-bf16"]["sides"]] == ["attnkit", "hf-fp32", "hf-bf16"]
    for r in rows:
        for s in r["sides"]:
            if s["skipped"]:
                assert s["side"] == "torchao-int8" and f"skipped: {s['skipped']}" in printed
                continue
            step = s["weight_bytes_per_step"] + s["kv_bytes_per_step"]
            limit = r["batch"] * band["gb_per_s"] * 1e9 / step
            assert s["limit_tokens_per_s"] == pytest.approx(limit)
            assert s["fraction_of_limit"] == pytest.approx(s["tokens_per_s"] / limit)
            assert s["bytes_per_token"] == pytest.approx(step / r["batch"])
        assert r["fraction_of_limit"] == r["sides"][0]["fraction_of_limit"]
    assert by_case["b1-int8"]["sides"][0]["weight_bytes_per_step"] == 145408  # the hand count
    keys = {t["key"]: t for t in data["targets"]}  # of tests/unit/test_bench_bandwidth.py
    for case in ("b1-fp32", "b1-bf16", "b1-int8"):
        t = keys[f"{case}-limit"]
        assert t["passed"] == (by_case[case]["fraction_of_limit"] >= 0.7)


def test_skinny_linears_match_f_linear_and_are_restored():
    from attnkit.native.linear import DecodingLinear, decoding_linears

    torch.manual_seed(0)
    lin = torch.nn.Linear(48, 200)
    plain = torch.nn.Linear(48, 200, bias=False)
    model = torch.nn.Sequential(lin, torch.nn.ReLU(), torch.nn.Linear(200, 7), plain)
    x = torch.randn(3, 2, 48, dtype=torch.float64)  # 6 rows: the skinny path
    ref = [
        torch.nn.functional.linear(x, lin.weight.double(), lin.bias.double()),
        torch.nn.functional.linear(x, plain.weight.double()),
    ]
    with decoding_linears(model):
        fast_lin, fast_plain = model[0], model[3]
        assert isinstance(fast_lin, DecodingLinear) and fast_lin.linear is lin
        assert isinstance(fast_plain, DecodingLinear) and fast_plain.linear is plain
        for i in (2, 6, 32, 33):  # 33 rows goes back to F.linear
            xi = x.reshape(-1, 48)[:1].expand(i, 48).float().contiguous()
            torch.testing.assert_close(
                fast_lin(xi),
                torch.nn.functional.linear(xi, lin.weight, lin.bias),
                rtol=1e-5,
                atol=1e-5,
            )
        torch.testing.assert_close(fast_lin(x.float()).double(), ref[0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(fast_plain(x.float()).double(), ref[1], rtol=1e-5, atol=1e-5)
        assert fast_lin(x.float()).shape == (3, 2, 200)
    assert model[0] is lin and model[3] is plain  # restored
    assert "forward" not in vars(lin) and "forward" not in vars(plain)  # never written onto


@pytest.mark.parametrize("pack", [False, True])
def test_skinny_linears_match_linear_for_every_row_count(pack, monkeypatch):
    """The torch paths (the native kernel switched off): W @ x^T, and MKL's packed GEMM."""
    from attnkit import native as kernels
    from attnkit.native.linear import DecodingLinear, can_pack, decoding_linears

    monkeypatch.setattr(kernels.SkinnyLinear, "create", classmethod(lambda cls, *a, **k: None))

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(48, 80), torch.nn.Linear(80, 24, bias=False))
    xs = {rows: torch.randn(rows, 48, dtype=torch.float64) for rows in (1, 3, 40)}
    with torch.no_grad():
        ref = {rows: model.double()(x) for rows, x in xs.items()}
        model.float()
        packed_calls = []
        if can_pack():  # count the packed GEMM calls
            real = torch.ops.mkl._mkl_linear
            spy = lambda *a: packed_calls.append(a[0].shape) or real(*a)  # noqa: E731
            monkeypatch.setattr(torch.ops.mkl, "_mkl_linear", spy)
        layers = list(model)
        with decoding_linears(model, pack=pack):
            assert all(isinstance(m, DecodingLinear) for m in model)
            got = {rows: model(x.float()) for rows, x in xs.items()}
            got[1.5] = model(xs[1].float().view(1, 1, 48)).view(1, 24)  # (B, T, C) input
    # batch-1 rows take MKL's packed GEMM (2 linears x 2 one-row inputs), and only when packing
    assert len(packed_calls) == (4 if pack and can_pack() else 0)
    assert list(model) == layers  # restored
    for rows in xs:
        torch.testing.assert_close(got[rows].double(), ref[rows], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got[1.5].double(), ref[1], atol=1e-5, rtol=1e-5)


@pytest.mark.native  # with CI=true this skip fails the run
@pytest.mark.skipif(
    not __import__("attnkit.native").native.available(),
    reason="the native kernel is not available here (see attnkit.native.status())",
)
def test_skinny_linears_use_the_native_kernel_up_to_its_row_limit(kernel_calls):
    from attnkit.native.linear import NATIVE_MAX_ROWS, decoding_linears

    calls = kernel_calls
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(48, 81), torch.nn.Linear(81, 24, bias=False))
    rows = (1, 5, NATIVE_MAX_ROWS, NATIVE_MAX_ROWS + 1)
    xs = {r: torch.randn(r, 48, dtype=torch.float64) for r in rows}
    with torch.no_grad():
        ref = {r: model.double()(x) for r, x in xs.items()}
        model.float()
        with decoding_linears(model, pack=True):
            got = {r: model(x.float()) for r, x in xs.items()}
    # two linears per input, for every row count up to the limit; beyond it torch's product
    assert calls == [r for r in rows[:-1] for _ in range(2)]
    for r in rows:
        torch.testing.assert_close(got[r].double(), ref[r], atol=1e-5, rtol=1e-5)


def test_decoding_linear_wrappers_are_kept_between_calls_until_the_weights_change():
    """Wrappers (and their native plans) are reused by the next call; replacing a layer, its
    weight, or changing it in place (an optimizer step) makes a new one that reads the new
    values: a bfloat16 bias is copied to float32 by the plan, so a stale plan would be wrong."""
    from attnkit.native.linear import decoding_linears

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.Linear(8, 4)).to(torch.bfloat16)
    x = torch.randn(2, 16, dtype=torch.bfloat16)

    def wrappers_and_output():
        with torch.no_grad(), decoding_linears(model):
            return list(model), model(x).double()

    def reference():
        h = torch.nn.functional.linear(x.double(), model[0].weight.double(), model[0].bias.double())
        return torch.nn.functional.linear(h, model[1].weight.double(), model[1].bias.double())

    first, _ = wrappers_and_output()
    again, _ = wrappers_and_output()
    assert again[0] is first[0] and again[1] is first[1]  # reused
    with torch.no_grad():
        model[1].bias.add_(4.0)  # in place: same storage, a new version
    changed, out = wrappers_and_output()
    assert changed[1] is not first[1] and changed[0] is first[0]
    torch.testing.assert_close(out, reference(), atol=0.1, rtol=0.02)
    assert (out - reference()).abs().max() < 1.0  # the +4 was seen
    model[0] = torch.nn.Linear(16, 8).to(torch.bfloat16)  # a new layer in the same slot
    replaced, out = wrappers_and_output()
    assert replaced[0].linear is model[0] and replaced[0] is not first[0]
    torch.testing.assert_close(out, reference(), atol=0.1, rtol=0.02)
    model[1].weight = torch.nn.Parameter(torch.zeros(4, 8, dtype=torch.bfloat16))
    _, out = wrappers_and_output()
    torch.testing.assert_close(out, model[1].bias.double().expand(2, 4))
