"""attnkit.inspect: capture against the math backend's weights and the variants' own outputs,
statistics on hand-built maps, rollout and flow against hand-computed values, rendering and
the `inspect` command on MiniLM."""

import json
import math

import numpy as np
import pytest
import torch

from attnkit.attention.kernel import ExactKernel
from attnkit.attention.recording import is_recording
from attnkit.cli import main
from attnkit.inspect import capture, render, stats, unavailable_layers
from attnkit.models import build_model, get_preset


# --------------------------------------------------------------------------------------------
# an independent reference: every attention layer re-run on its own input by the math backend
# --------------------------------------------------------------------------------------------
def math_reference(model, *args, **kwargs):
    """(model output, [weights (B, H, Tq, Tk) per layer]) with each MultiHeadAttention re-run on
    the input it received, with backend='math' and return_weights=True."""
    seen = []
    hooks = [
        blk.attn.register_forward_pre_hook(
            lambda mod, a, kw: seen.append((mod, a, kw)), with_kwargs=True
        )
        for blk in model.blocks
    ]
    try:
        with torch.no_grad():
            out = model(*args, **kwargs).logits
    finally:
        for h in hooks:
            h.remove()
    weights = []
    for mod, a, kw in seen:
        old = mod.set_kernel(ExactKernel("math"))
        try:
            with torch.no_grad():
                _, w = mod(*a, **{**kw, "return_weights": True})
        finally:
            mod.set_kernel(old)
        weights.append(w)
    return out, weights


def tiny_gpt(**kw):
    kw = {"d_model": 32, "max_seq_len": 64, **kw}
    cfg = get_preset("tiny", vocab_size=64, n_heads=4, **kw)
    return build_model(cfg).eval()


def padded_batch(T=12, vocab=64, lengths=(12, 9)):
    ids = torch.randint(0, vocab, (len(lengths), T))
    mask = torch.zeros(len(lengths), T, dtype=torch.long)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    return ids, mask


CASES = {
    "sdpa-rope-gqa": dict(positional="rope", n_kv_heads=2, backend="sdpa"),
    "windowed-alibi": dict(positional="alibi", window=4, backend="windowed"),
    "sdpa-learned-window": dict(window=5, backend="sdpa"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_capture_equals_math_backend_and_keeps_outputs(case):
    model = tiny_gpt(**CASES[case])
    ids, mask = padded_batch()
    ref_out, ref_w = math_reference(model, ids, attention_mask=mask)
    with torch.no_grad():
        plain = model(ids, attention_mask=mask).logits
        with capture(model) as maps:
            got_out = model(ids, attention_mask=mask).logits
    assert torch.equal(got_out, plain)  # capturing leaves the forward pass as it was
    torch.testing.assert_close(got_out, ref_out, atol=1e-5, rtol=0)  # and it ran the fast kernel
    assert maps.layers == [0, 1] and maps.heads == [0, 1, 2, 3] and maps.sources == ["exact"] * 2
    for got, ref in zip(maps.weights, ref_w):
        assert got.shape == ref.shape == (2, 4, 12, 12)
        assert (got - ref).abs().max().item() <= 1e-6
    # padded keys of the second sequence get no weight; rows sum to one
    assert maps.weights[0][1, :, :, 9:].abs().max().item() == 0.0
    torch.testing.assert_close(maps.weights[1].sum(-1), torch.ones(2, 4, 12))


def test_capture_bert_with_documents_and_padding():
    cfg = get_preset("tiny-bert", vocab_size=64, d_model=32, n_heads=4, backend="sdpa")
    model = build_model(cfg).eval()
    ids = torch.randint(0, 64, (2, 10))
    docs = torch.tensor([[0] * 4 + [1] * 6, [0] * 7 + [1] * 3])
    _, ref_w = math_reference(model, ids, document_ids=docs)
    with torch.no_grad(), capture(model) as maps:
        model(ids, document_ids=docs)
    for got, ref in zip(maps.weights, ref_w):
        assert (got - ref).abs().max().item() <= 1e-6
    assert maps.weights[0][0, :, :4, 4:].abs().max().item() == 0.0  # no attention across documents


def test_capture_selected_layers_and_heads_with_alibi():
    model = tiny_gpt(positional="alibi", n_layer=3, backend="sdpa")
    ids, mask = padded_batch()
    _, ref_w = math_reference(model, ids, attention_mask=mask)
    with torch.no_grad(), capture(model, layers=[2, 0], heads=[3, 1]) as maps:
        model(ids, attention_mask=mask)
    assert maps.layers == [2, 0] and maps.heads == [3, 1]
    for slot, layer in enumerate([2, 0]):
        ref = ref_w[layer][:, [3, 1]]  # each head keeps its own ALiBi slope
        assert (maps.weights[slot] - ref).abs().max().item() <= 1e-6
        torch.testing.assert_close(maps.dense(layer), maps.weights[slot])


def test_top_k_keeps_the_largest_entries_exactly():
    model = tiny_gpt(positional="rope", backend="sdpa")
    ids, mask = padded_batch()
    with torch.no_grad():
        with capture(model) as dense:
            model(ids, attention_mask=mask)
        with capture(model, top_k=3) as sparse:
            model(ids, attention_mask=mask)
    for i in range(2):
        ref_v, ref_i = torch.topk(dense.weights[i], 3, dim=-1)
        assert torch.equal(sparse.topk_indices[i], ref_i)
        assert torch.equal(sparse.topk_values[i], ref_v)
        w = sparse.weights[i]
        assert w.is_sparse and w.shape == (2, 4, 12, 12) and w._nnz() == 2 * 4 * 12 * 3
        kept = torch.zeros_like(dense.weights[i]).scatter(-1, ref_i, ref_v)
        assert torch.equal(sparse.dense(i), kept)


def test_capture_rejects_bad_arguments():
    model = tiny_gpt()
    with pytest.raises(ValueError, match=r"layers holds 2; expected layer indices in \[0, 2\)"):
        with capture(model, layers=[2]):
            pass
    with pytest.raises(ValueError, match=r"heads holds -1; expected head indices in \[0, 4\)"):
        with capture(model, heads=[-1]):
            pass
    with pytest.raises(ValueError, match="top_k must be a positive int .* got 0"):
        with capture(model, top_k=0):
            pass
    with pytest.raises(ValueError, match="has no MultiHeadAttention"):
        with capture(torch.nn.Linear(2, 2)):
            pass
    # the hooks are gone after the context, also after an error inside it
    with pytest.raises(RuntimeError):
        with capture(model):
            raise RuntimeError("inside")
    assert all(not is_recording(blk.attn) for blk in model.blocks)


# --------------------------------------------------------------------------------------------
# variants: the captured weights are the ones the variant used (weights @ v == its output)
# --------------------------------------------------------------------------------------------
VARIANTS = {
    "local": dict(block_size=4),
    "bigbird": dict(block_size=4, num_random_blocks=1),
    "lsh": dict(chunk_size=4, n_hashes=2, n_buckets=4),
}


@pytest.mark.parametrize("name", sorted(VARIANTS))
@pytest.mark.parametrize("causal", [False, True])
def test_variant_weights_reproduce_the_variant_output(name, causal):
    arch = "tiny" if causal else "tiny-bert"
    cfg = get_preset(
        arch,
        vocab_size=64,
        d_model=32,
        n_heads=4,
        max_seq_len=64,
        attention=name,
        attention_params=VARIANTS[name],
    )
    model = build_model(cfg).eval()
    ids, mask = padded_batch(T=24, lengths=(24, 17))
    calls = []
    hooks = [
        blk.attn.kernel.register_forward_hook(
            lambda mod, a, kw, out: calls.append((a[2], out)), with_kwargs=True
        )
        for blk in model.blocks
    ]
    with torch.no_grad(), capture(model) as maps:
        model(ids, attention_mask=mask)
    for h in hooks:
        h.remove()
    assert maps.sources == [name, name]
    for (v, out), w in zip(calls, maps.weights):
        assert w.shape == (2, 4, 24, 24)
        assert (torch.matmul(w, v) - out).abs().max().item() <= 1e-5
        assert w[1, :, :, 17:].abs().max().item() == 0.0  # padding keys
        if causal:
            assert torch.equal(w.triu(1), torch.zeros_like(w))
    if name in ("local", "bigbird"):
        pattern = model.blocks[0].attn.kernel.dense_mask(24, causal)
        assert bool((~pattern).any()) and maps.weights[0][0][:, ~pattern].abs().max().item() == 0.0
    if name == "lsh":
        assert maps.info[0]["buckets"].shape == (2, 4, 2, 24)


@pytest.mark.parametrize("name", ["linear", "performer"])
def test_feature_map_variants_say_they_have_no_weights(name):
    cfg = get_preset("tiny", vocab_size=64, d_model=32, n_heads=4, attention=name)
    model = build_model(cfg).eval()
    reasons = unavailable_layers(model)
    assert sorted(reasons) == [0, 1] and "never takes a softmax" in reasons[0]
    with pytest.raises(
        ValueError, match=f"layer 0 has no attention weights to capture: variant '{name}'"
    ):
        with capture(model):
            pass


# --------------------------------------------------------------------------------------------
# statistics
# --------------------------------------------------------------------------------------------
TOKENS = ["[CLS]", "the", "cat", ",", "sat", "on", "it", "[SEP]"]


def hand_maps() -> torch.Tensor:
    T = len(TOKENS)
    w = torch.zeros(6, T, T)
    for i in range(T):
        w[0, i, max(i - 1, 0)] = 1.0  # previous token (the first row: itself)
        w[1, i, T - 1] = 1.0  # [SEP] sink
        w[2, i] = 0.04
        w[2, i, 3] = 0.72  # punctuation sink: 0.72 on ',' and 0.04 on each other token
        w[3, i] = 1.0 / T  # uniform
        w[4, i, i] = 1.0  # itself
        lo, hi = max(i - 1, 0), min(i + 1, T - 1)
        w[5, i, lo : hi + 1] = 1.0 / (hi - lo + 1)  # its neighbours, evenly
    return w


def test_head_stats_on_hand_built_maps():
    rows = stats.head_stats([hand_maps()], TOKENS, layers=[3])
    assert [(r["layer"], r["head"]) for r in rows] == [(3, h) for h in range(6)]
    assert [r["labels"] for r in rows] == [
        ["previous-token head"],
        ["[SEP] sink"],
        ["punctuation sink"],
        ["broad"],
        ["self"],
        ["local"],
    ]
    prev, sep, punct, uniform, itself, local = rows
    assert prev["prev"] == 1.0 and prev["self"] == pytest.approx(1 / 8) and prev["entropy"] == 0.0
    assert prev["distance"] == pytest.approx(7 / 8) and prev["first"] == pytest.approx(2 / 8)
    assert prev["why"] == "previous-token head: prev 1.00 >= 0.50"
    assert sep["sep"] == 1.0 and sep["special"] == 1.0 and sep["distance"] == pytest.approx(3.5)
    assert sep["why"] == "[SEP] sink: sep 1.00 >= 0.50 and >= 2 x uniform 0.12"
    assert punct["punct"] == pytest.approx(0.72) and punct["sep"] == pytest.approx(0.04)
    # uniform over 8 keys: entropy log 8, mean |i - j| = 2 * sum_d d (8 - d) / 64 = 168 / 64
    assert uniform["entropy"] == pytest.approx(math.log(8)) and uniform[
        "entropy_norm"
    ] == pytest.approx(1.0)
    assert uniform["distance"] == pytest.approx(168 / 64) and uniform["near"] == pytest.approx(
        34 / 64
    )
    assert itself["self"] == 1.0 and itself["prev"] == 0.0 and itself["distance"] == 0.0
    assert local["near"] == pytest.approx(1.0)
    assert local["prev"] == pytest.approx((6 / 3 + 1 / 2) / 7)  # rows 1..7: six of 1/3, one of 1/2
    assert local["prev"] < 0.5 and local["self"] < 0.5


def test_head_stats_without_tokens_and_bad_input():
    rows = stats.head_stats([hand_maps()])
    assert rows[1]["sep"] is None and rows[1]["labels"] == []  # a sink needs the tokens to be named
    with pytest.raises(ValueError, match="tokens has 3 entries; expected one per key"):
        stats.head_stats([hand_maps()], ["a", "b", "c"])
    with pytest.raises(ValueError, match=r"weights\[0\] must be a \(H, Tq, Tk\) tensor"):
        stats.head_stats([torch.ones(4, 4)])


# --------------------------------------------------------------------------------------------
# rollout and flow
# --------------------------------------------------------------------------------------------
def two_layers():
    w1 = torch.tensor([[[1.0, 0.0], [0.5, 0.5]]])  # one head
    w2 = torch.tensor([[[0.0, 1.0], [0.0, 1.0]], [[1.0, 0.0], [1.0, 0.0]]])  # two heads, mean 0.5
    return [w1, w2]


def test_rollout_on_a_hand_built_two_layer_example():
    # A1 = 0.5 W1 + 0.5 I = [[1, 0], [.25, .75]];  A2 = 0.5 mean(W2) + 0.5 I = [[.75, .25], [.25, .75]]
    # rollout = A2 @ A1 = [[.75 + .0625, .1875], [.25 + .1875, .5625]]
    expected = torch.tensor([[0.8125, 0.1875], [0.4375, 0.5625]])
    torch.testing.assert_close(stats.rollout(two_layers()), expected)
    # one layer with residual 0: the head mean itself
    torch.testing.assert_close(
        stats.rollout(two_layers()[1:], residual=0.0), torch.full((2, 2), 0.5)
    )


def test_max_flow_on_a_tiny_graph():
    # s=0, a=1, b=2, t=3: the edges into t carry at most 0.5 + 1
    cap = np.zeros((4, 4))
    cap[0, 1] = cap[0, 2] = 1.0
    cap[1, 2] = 1.0
    cap[1, 3] = 0.5
    cap[2, 3] = 1.0
    assert stats.max_flow(cap, 0, 3) == pytest.approx(1.5)
    cap2 = np.zeros((4, 4))
    cap2[0, 1], cap2[0, 2], cap2[1, 2], cap2[1, 3], cap2[2, 3] = 3, 2, 1, 2, 3
    assert stats.max_flow(cap2, 0, 3) == pytest.approx(5.0)  # min cut: both source edges
    with pytest.raises(ValueError, match=r"sink must be a node index in \[0, 4\), got 7"):
        stats.max_flow(cap2, 0, 7)


def test_max_flow_agrees_with_scipy_on_random_integer_graphs():
    csgraph = pytest.importorskip("scipy.sparse.csgraph")
    sparse = pytest.importorskip("scipy.sparse")
    gen = np.random.default_rng(0)
    for _ in range(10):
        cap = gen.integers(0, 6, size=(12, 12)) * (gen.random((12, 12)) < 0.35)
        np.fill_diagonal(cap, 0)
        ref = csgraph.maximum_flow(sparse.csr_matrix(cap.astype(np.int32)), 0, 11).flow_value
        assert stats.max_flow(cap.astype(float), 0, 11) == pytest.approx(ref)


def test_attention_flow_on_the_two_layer_example():
    # two layers: every path j -> m -> i is its own, so flow(j -> i) = sum_m min(A1[m, j], A2[i, m])
    # A1 = [[1, 0], [.25, .75]], A2 = [[.75, .25], [.25, .75]]
    expected = torch.tensor([[0.75 + 0.25, 0.0 + 0.25], [0.25 + 0.25, 0.0 + 0.75]])
    torch.testing.assert_close(stats.attention_flow(two_layers()), expected)
    big = [torch.full((1, 40, 40), 1 / 40)]
    with pytest.raises(
        ValueError, match="attention flow of 40 tokens .* expected at most 32 tokens"
    ):
        stats.attention_flow(big)


# --------------------------------------------------------------------------------------------
# rendering and the command
# --------------------------------------------------------------------------------------------
def test_render_writes_pngs(tmp_path):
    w = hand_maps()
    paths = [
        render.plot_head(w[0], TOKENS, tmp_path / "h.png", title="prev"),
        render.plot_layer(w, TOKENS, tmp_path / "l.png", heads=list(range(6))),
        render.plot_rollout(stats.rollout([w]), TOKENS, tmp_path / "r.png"),
    ]
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000
    with pytest.raises(ValueError, match="key tokens has 3 entries; expected 8"):
        render.plot_head(w[0], ["a", "b", "c"], tmp_path / "x.png")


def test_inspect_command_on_minilm(tmp_path, capsys):
    import attnkit

    out = tmp_path / "insp"
    text = "The cat sat, then slept."
    assert (
        main(
            [
                "inspect",
                "--model",
                "minilm",
                "--text",
                text,
                "--out",
                str(out),
                "--layers",
                "0,5",
                "--heads",
                "2,7",
                "--timing",
                "--rounds",
                "1",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "2 layers x 2 heads captured" in printed and "capture overhead" in printed
    names = {p.name for p in out.iterdir()}
    assert {
        "layer_0.png",
        "layer_5.png",
        "head_0_2.png",
        "head_5_7.png",
        "maps.npz",
        "stats.json",
        "viewer.html",
    } <= names
    assert "rollout.png" not in names  # rollout needs every layer and head
    model = attnkit.load("minilm")
    enc = model.meta.tokenizer.encode(text)
    data = np.load(out / "maps.npz", allow_pickle=False)
    assert list(data["tokens"]) == enc.tokens and list(data["input_ids"]) == enc.ids
    assert list(data["layers"]) == [0, 5] and list(data["heads"]) == [2, 7]
    T = len(enc.ids)
    _, ref = math_reference(model, torch.tensor([enc.ids]))
    for layer in (0, 5):
        assert data[f"layer_{layer}"].shape == (2, T, T)
        np.testing.assert_allclose(data[f"layer_{layer}"], ref[layer][0, [2, 7]].numpy(), atol=1e-6)
    report = json.loads((out / "stats.json").read_text())
    assert [(r["layer"], r["head"]) for r in report["stats"]] == [(0, 2), (0, 7), (5, 2), (5, 7)]
    for r in report["stats"]:
        if r["labels"]:
            assert f"layer {r['layer']} head {r['head']}: {r['why']}" in printed


def test_inspect_command_rollout_and_bad_layers(tmp_path, capsys):
    cfg = get_preset("tiny-bert", vocab_size=80, d_model=32, n_heads=4)
    model = build_model(cfg).eval()
    from test_checkpoints import word_tokenizer

    import attnkit

    attnkit.save(model, tmp_path / "m", tokenizer=word_tokenizer())
    out = tmp_path / "o"
    assert (
        main(
            [
                "inspect",
                "--model",
                str(tmp_path / "m"),
                "--text",
                "the cat sat",
                "--out",
                str(out),
                "--flow",
            ]
        )
        == 0
    )
    data = np.load(out / "maps.npz", allow_pickle=False)
    T = len(data["tokens"])
    ref = stats.rollout([torch.from_numpy(data[f"layer_{i}"]) for i in range(2)])
    np.testing.assert_allclose(data["rollout"], ref.numpy(), atol=1e-6)
    assert (
        data["flow"].shape == (T, T)
        and (out / "rollout.png").is_file()
        and (out / "flow.png").is_file()
    )
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(
            [
                "inspect",
                "--model",
                str(tmp_path / "m"),
                "--text",
                "the cat",
                "--out",
                str(out),
                "--layers",
                "7",
            ]
        )
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["attnkit: error: layers holds 7; expected layer indices in [0, 2)"]
    with pytest.raises(SystemExit) as e:
        main(["inspect", "--text", "x", "--out", str(out), "--heads", "a,b"])
    assert e.value.code == 2


def test_capture_equals_math_backend_on_flex():
    # the shape and mask of test_attention's flex test (B=2, 4 query / 2 key heads of 16 channels,
    # 300 tokens, causal window 40), so Inductor's on-disk cache usually serves the kernel
    model = tiny_gpt(
        n_layer=1, d_model=64, n_kv_heads=2, window=40, backend="flex", max_seq_len=320
    )
    ids = torch.randint(0, 64, (2, 300))
    ref_out, ref_w = math_reference(model, ids)
    with torch.no_grad(), capture(model, heads=[0, 3]) as maps:
        out = model(ids).logits
    torch.testing.assert_close(out, ref_out, atol=1e-4, rtol=0)
    assert (maps.weights[0] - ref_w[0][:, [0, 3]]).abs().max().item() <= 1e-6
    assert maps.weights[0][:, :, 100, :61].abs().max().item() == 0.0  # outside the window


def test_capture_during_kv_cached_decoding_matches_the_full_pass():
    model = tiny_gpt(positional="rope", n_kv_heads=2, backend="sdpa")
    ids = torch.randint(0, 64, (2, 10))
    with torch.no_grad():
        with capture(model) as full:
            model(ids)
        cache = model.new_cache()
        model(ids[:, :7], cache=cache)
        with capture(model, heads=[1, 2]) as step:
            model(ids[:, 7:9], cache=cache)  # two new queries against 9 keys
            model(ids[:, 9:], cache=cache)  # the last call of each layer is kept
    assert step.calls == [2, 2]
    for layer in range(2):
        got = step.weights[layer]
        assert got.shape == (2, 2, 1, 10)
        assert (got - full.weights[layer][:, [1, 2], 9:]).abs().max().item() <= 1e-6
