"""Attention surgery (`attnkit.surgery`, `attnkit swap`) on all-MiniLM-L6-v2 and tiny GPTs.

References: the unmodified model, a model built with the variant in its config and the same
weights, hand-computed projections and pooled cosines.
"""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from test_checkpoints import word_tokenizer

import attnkit
from attnkit import surgery
from attnkit.attention import variants
from attnkit.attention.kernel import ExactKernel
from attnkit.cli import main
from attnkit.models import build_model, get_preset

# lines of Shakespeare of different lengths, so batches carry padding
TEXTS = [
    "First Citizen: Before we proceed any further, hear me speak.",
    "All: Speak, speak.",
    "You are all resolved rather to die than to famish?",
    "Resolved. resolved.",
    "We are accounted poor citizens, the patricians good. What authority surfeits on would "
    "relieve us: if they would yield us but the superfluity, while it were wholesome.",
    "Let us kill him, and we'll have corn at our own price.",
]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Short sequences: one thread avoids paying thread wake-ups on every small op (costly on
    a shared machine); the previous count is restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def minilm():
    return attnkit.load("minilm")


def hidden(model, ids, mask):
    with torch.no_grad():
        return model.hidden_states(ids, attention_mask=mask)


def batch(model, texts):
    enc = model.meta.tokenizer.encode_batch(texts)
    T = max(len(e.ids) for e in enc)
    ids = torch.zeros(len(texts), T, dtype=torch.long)
    mask = torch.zeros(len(texts), T, dtype=torch.long)
    for b, e in enumerate(enc):
        ids[b, : len(e.ids)] = torch.tensor(e.ids)
        mask[b, : len(e.ids)] = 1
    return ids, mask


def tiny_gpt(**overrides):
    cfg = get_preset(
        "tiny", vocab_size=80, d_model=32, n_heads=4, dropout=0.0, attn_dropout=0.0, **overrides
    )
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    model.meta = model.meta.replace(tokenizer=word_tokenizer())
    return model


# ------------------------------------------------------------------------- params and layers
def test_parse_params_types_values():
    got = surgery.parse_params(
        ["n_hashes=4", "ratio=0.5", "flag=true", "off=False", "n_buckets=none", "x=abc"]
    )
    assert got == {
        "n_hashes": 4,
        "ratio": 0.5,
        "flag": True,
        "off": False,
        "n_buckets": None,
        "x": "abc",
    }
    assert type(got["n_hashes"]) is int and type(got["ratio"]) is float
    for bad in ("n_hashes", "=4", "n_hashes=", "two words=1"):
        with pytest.raises(ValueError, match="NAME=VALUE"):
            surgery.parse_params([bad])
    with pytest.raises(ValueError, match="given twice"):
        surgery.parse_params(["seed=1", "seed=2"])


def test_bad_variant_and_params_are_named(minilm):
    with pytest.raises(
        ValueError, match=r"unknown attention variant 'lshx'; expected one of \['exact', 'bigbird'"
    ):
        surgery.swap_attention(minilm, "lshx")
    with pytest.raises(
        ValueError,
        match=r"unknown parameter\(s\) \['n_hashe'\].*valid parameters: "
        r"\['chunk_size', 'n_buckets', 'n_hashes', 'seed'\]",
    ):
        surgery.swap_attention(minilm, "lsh", n_hashe=4)
    with pytest.raises(ValueError, match=r"n_hashes must be an int >= 1, got 2.5"):
        surgery.swap_attention(minilm, "lsh", n_hashes=2.5)
    with pytest.raises(ValueError, match=r"n_buckets must be 1 or an even number.*got 3"):
        surgery.swap_attention(minilm, "lsh", n_buckets=3)
    with pytest.raises(ValueError, match=r"layer 6 does not exist; expected indices in 0..5"):
        surgery.swap_attention(minilm, "local", layers=[6])
    with pytest.raises(ValueError, match="exact attention takes no parameters"):
        surgery.swap_attention(minilm, "exact", block_size=4)
    assert surgery.parse_layers("0, 2-4,-1", 6) == [0, 2, 3, 4, 5]
    with pytest.raises(ValueError, match=r"bad layer 'x' in '1,x'"):
        surgery.parse_layers("1,x", 6)
    alibi = build_model(get_preset("tiny", positional="alibi"))
    with pytest.raises(ValueError, match=r"layer 0 uses positional='alibi'"):
        surgery.swap_attention(alibi, "performer")


# ------------------------------------------------------------------------- the swap itself
def test_original_is_untouched_unless_in_place(minilm):
    ids, mask = batch(minilm, TEXTS[:3])
    before = hidden(minilm, ids, mask)
    lsh = surgery.swap_attention(minilm, "lsh", n_hashes=2)
    assert lsh is not minilm
    assert all(isinstance(a.kernel, ExactKernel) for a in surgery.attention_layers(minilm))
    assert minilm.config.attention == "exact" and minilm.meta.swaps == ()
    assert all(isinstance(a.kernel, variants.LSHAttention) for a in surgery.attention_layers(lsh))
    assert len({id(a.kernel) for a in surgery.attention_layers(lsh)}) == 6  # one per layer
    assert lsh.config.attention == "lsh" and lsh.config.attention_params["n_hashes"] == 2
    assert (
        lsh.blocks[0].attn.qkv_proj.weight.data_ptr()
        != minilm.blocks[0].attn.qkv_proj.weight.data_ptr()
    )
    torch.testing.assert_close(hidden(minilm, ids, mask), before, rtol=0, atol=0)
    assert not torch.allclose(hidden(lsh, ids, mask), before, atol=1e-2)

    with surgery.swapped(minilm, "performer", layers=[1], nb_features=64) as m:
        assert m is minilm and isinstance(m.blocks[1].attn.kernel, variants.PerformerAttention)
        assert (
            isinstance(m.blocks[0].attn.kernel, ExactKernel) and m.config.attention == "exact"
        )  # not every layer
        assert m.meta.swaps[-1].layers == (1,)
        assert not torch.allclose(hidden(m, ids, mask), before, atol=1e-2)
    assert isinstance(minilm.blocks[1].attn.kernel, ExactKernel) and minilm.meta.swaps == ()
    torch.testing.assert_close(hidden(minilm, ids, mask), before, rtol=0, atol=0)


def test_in_place_swap_and_back_to_exact():
    model = tiny_gpt()
    ids = torch.randint(0, 80, (2, 20))
    ref = hidden(model, ids, None)
    same = surgery.swap_attention(model, "linear", in_place=True)
    assert same is model and model.blocks[1].attn.kernel.name == "linear"
    assert not torch.allclose(hidden(model, ids, None), ref, atol=1e-3)
    surgery.swap_attention(model, "exact", in_place=True)
    assert model.config.attention == "exact" and isinstance(
        model.blocks[1].attn.kernel, ExactKernel
    )
    torch.testing.assert_close(hidden(model, ids, None), ref, rtol=0, atol=0)


@pytest.mark.parametrize(
    "variant, params",
    [("performer", dict(nb_features=16, chunk_size=8)), ("lsh", dict(chunk_size=4, n_hashes=2))],
)
def test_swapped_gpt_equals_a_model_built_with_the_variant(variant, params):
    """A causal model, padded batch: the swapped copy computes what a model whose config names
    the variant computes with the same weights."""
    model = tiny_gpt(positional="rope")
    built = build_model(model.config.replace(attention=variant, attention_params=params)).eval()
    built.load_state_dict(model.state_dict(), strict=False)
    ids = torch.randint(0, 80, (3, 19))
    mask = torch.ones(3, 19, dtype=torch.long)
    mask[1, 12:] = 0
    mask[2, 5:] = 0
    swapped = surgery.swap_attention(model, variant, **params)
    real = mask.bool()
    got, want = hidden(swapped, ids, mask), hidden(built, ids, mask)
    torch.testing.assert_close(got[real], want[real], rtol=1e-5, atol=1e-5)
    assert (got[real] - hidden(model, ids, mask)[real]).abs().max() > 1e-3


def test_capture_qkv_gives_each_layers_projections():
    model = tiny_gpt(positional="rope")
    ids = torch.randint(0, 80, (2, 11))
    mask = torch.ones(2, 11, dtype=torch.long)
    mask[1, 7:] = 0
    ref = hidden(model, ids, mask)
    got = surgery.capture_qkv(model, ids, mask)
    assert len(got) == 2 and all(g.causal for g in got)
    assert torch.equal(got[0].valid_key_mask, mask.bool())
    with torch.no_grad():  # layer 0 by hand: pre-norm, fused projection, RoPE
        attn = model.blocks[0].attn
        x = model.blocks[0].norm1(model.embed(ids))  # (B, T, C)
        q, k, v = attn.qkv_proj(x).split(32, dim=-1)
        q, k, v = (t.view(2, 11, 4, 8).transpose(1, 2) for t in (q, k, v))  # (B, H, T, D)
        q, k = attn.rotary(q, k)
    for a, b in ((got[0].q, q), (got[0].k, k), (got[0].v, v)):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    assert all(isinstance(a.kernel, ExactKernel) for a in surgery.attention_layers(model))
    torch.testing.assert_close(hidden(model, ids, mask), ref, rtol=0, atol=0)  # restored


# ------------------------------------------------------------------------- compare on MiniLM
@pytest.mark.parametrize(
    "variant, params",
    [
        ("local", dict(block_size=512)),  # one block holds the whole sequence
        (
            "bigbird",
            dict(block_size=4, window_radius=128, num_random_blocks=0),
        ),  # window covers all
    ],
)
def test_variant_covering_the_sequence_reproduces_minilm(minilm, variant, params):
    swapped = surgery.swap_attention(minilm, variant, **params)
    report = surgery.compare(minilm, swapped, TEXTS, batch_size=4, rounds=1)
    assert report.layers_swapped == [0, 1, 2, 3, 4, 5] and report.n_texts == len(TEXTS)
    assert report.embedding_cos_min == pytest.approx(1.0, abs=1e-5)
    assert report.embedding_cos_mean == pytest.approx(1.0, abs=1e-5)
    for layer in report.layers:
        assert layer.cos_min == pytest.approx(1.0, abs=1e-5)
    assert report.original_texts_per_s > 0 and report.swapped_texts_per_s > 0


def test_approximate_variant_drift_matches_a_hand_computation(minilm):
    swapped = surgery.swap_attention(minilm, "lsh", n_hashes=2, chunk_size=8)
    report = surgery.compare(minilm, swapped, TEXTS, batch_size=8, rounds=1)
    assert 0 < report.embedding_cos_min <= report.embedding_cos_mean < 1
    assert all(0 < d.cos_mean < 1 and d.swapped for d in report.layers)
    # by hand, over the same texts in one padded batch: mean-pooled cosine, token cosine
    ids, mask = batch(minilm, TEXTS)
    a, b = hidden(minilm, ids, mask).double(), hidden(swapped, ids, mask).double()
    w = mask.double().unsqueeze(-1)
    ea, eb = (a * w).sum(1) / w.sum(1), (b * w).sum(1) / w.sum(1)  # (B, C) mean over real tokens
    cos = F.cosine_similarity(ea, eb, dim=-1)
    assert report.embedding_cos_mean == pytest.approx(float(cos.mean()), abs=1e-5)
    assert report.embedding_cos_min == pytest.approx(float(cos.min()), abs=1e-5)
    token_cos = F.cosine_similarity(a, b, dim=-1)[mask.bool()]
    assert report.layers[-1].cos_mean == pytest.approx(float(token_cos.mean()), abs=1e-5)
    assert report.n_tokens == int(mask.sum()) and report.longest == ids.shape[1]


def test_swapping_some_layers_leaves_earlier_ones_exact(minilm):
    swapped = surgery.swap_attention(minilm, "performer", layers=[2, 3], nb_features=32)
    report = surgery.compare(minilm, swapped, TEXTS[:4], rounds=1)
    assert report.layers_swapped == [2, 3]
    assert [d.swapped for d in report.layers] == [False, False, True, True, False, False]
    assert min(report.layers[0].cos_min, report.layers[1].cos_min) > 1 - 1e-12  # before the swap
    assert report.layers[2].cos_mean < 1 - 1e-4 and report.layers[5].cos_mean < 1 - 1e-4


def test_compare_rejects_bad_input(minilm):
    swapped = surgery.swap_attention(minilm, "local", block_size=16)
    with pytest.raises(ValueError, match="no texts"):
        surgery.compare(minilm, swapped, [])
    with pytest.raises(ValueError, match=r"text 1 is ''; expected non-empty strings"):
        surgery.compare(minilm, swapped, ["a", ""])
    with pytest.raises(ValueError, match=r"max_length must be an int in 1..512"):
        surgery.compare(minilm, swapped, ["a"], max_length=1000)
    with pytest.raises(ValueError, match="the same one twice"):
        surgery.compare(minilm, minilm, ["a"])


def test_truncation_is_counted(minilm):
    swapped = surgery.swap_attention(minilm, "local", block_size=512)
    report = surgery.compare(minilm, swapped, TEXTS, max_length=12, rounds=1)
    n_long = sum(len(e.ids) > 12 for e in minilm.meta.tokenizer.encode_batch(TEXTS))
    assert report.truncated == n_long > 0 and report.longest == 12


# ------------------------------------------------------------------------- command line
def test_swap_command_on_minilm_prints_the_report(tmp_path, capsys):
    texts = tmp_path / "lines.txt"
    texts.write_text("\n".join(TEXTS[:4]) + "\n\n")
    assert (
        main(
            [
                "swap",
                "--model",
                "minilm",
                "--variant",
                "lsh",
                "--variant-param",
                "n_hashes=4",
                "--text-file",
                str(texts),
                "--rounds",
                "1",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert (
        "attention: lsh(n_buckets=None, n_hashes=4, chunk_size=64, seed=0) in layers 0,1,2,3,4,5 of 6"
        in out
    )
    assert (
        "texts: 4 (" in out
        and "texts/s" in out
        and "sentence embedding cosine (mean pooling)" in out
    )
    rows = [line.split() for line in out.splitlines() if line.strip()[:1].isdigit()]
    assert [r[0] for r in rows] == ["0", "1", "2", "3", "4", "5"]
    assert all(0 < float(r[2]) < 1 for r in rows)


def test_swap_command_json_on_a_gpt_directory(tmp_path, capsys):
    model = tiny_gpt()
    attnkit.save(model, tmp_path / "gpt", tokenizer=model.meta.tokenizer)
    assert (
        main(
            [
                "swap",
                "--model",
                str(tmp_path / "gpt"),
                "--variant",
                "local",
                "--variant-param",
                "block_size=4",
                "--layers",
                "1",
                "--json",
                "the bat flew out of the cave",
                "he swung the bat",
                "--rounds",
                "1",
            ]
        )
        == 0
    )
    data = json.loads(capsys.readouterr().out)
    assert data["arch"] == "gpt" and data["layers_swapped"] == [1] and data["n_texts"] == 2
    assert data["attention"] == "local(block_size=4)"
    assert data["layers"][0]["cos_min"] == pytest.approx(1.0, abs=1e-12)
    assert data["layers"][1]["cos_mean"] < 1 - 1e-6
    assert math.isclose(data["speedup"], data["swapped_texts_per_s"] / data["original_texts_per_s"])


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["--variant", "lshx"],
            "unknown attention variant 'lshx'; expected one of ['exact', 'bigbird',",
        ),
        (
            ["--variant", "lsh", "--variant-param", "n_hashe=4"],
            "unknown parameter(s) ['n_hashe'] for attention variant 'lsh'",
        ),
        (
            ["--variant", "lsh", "--variant-param", "n_hashes=two"],
            "n_hashes must be an int >= 1, got 'two'",
        ),
        (["--variant", "lsh", "--variant-param", "n_hashes"], "must look like NAME=VALUE"),
        (
            ["--variant", "lsh", "--text-file", "/nonexistent/x.txt"],
            "--text-file '/nonexistent/x.txt'",
        ),
    ],
)
def test_swap_command_bad_input_is_one_line_and_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        main(["swap", *argv] + ([] if "--text-file" in argv else ["some text"]))
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("attnkit: error: ") and message in err[0], err


def test_swap_capture_and_qkv_recording_leave_no_new_attributes():
    """Surgery and capture replace or wrap the kernel through set_kernel; nothing is written
    onto the attention modules or the model besides the kernel and model.meta."""
    from attnkit.inspect import capture

    model = tiny_gpt(positional="rope")
    attns = surgery.attention_layers(model)
    keys = [set(vars(a)) for a in attns]
    ids = torch.randint(0, 80, (2, 9))
    surgery.swap_attention(model, "local", in_place=True, block_size=4)
    assert [set(vars(a)) for a in attns] == keys
    assert [a.kernel.name for a in attns] == ["local", "local"]
    assert model.meta.swaps[-1].describe() == "local(block_size=4)"
    with torch.no_grad(), capture(model) as maps:
        model(ids)
        assert [set(vars(a)) for a in attns] == keys
    assert maps.sources == ["local", "local"]
    got = surgery.capture_qkv(model, ids)
    assert len(got) == 2 and [set(vars(a)) for a in attns] == keys
    assert [a.kernel.name for a in attns] == ["local", "local"]  # restored after recording
    surgery.swap_attention(model, "exact", in_place=True)
    assert [set(vars(a)) for a in attns] == keys
    assert [r.variant for r in model.meta.swaps] == ["local", "exact"]


def _noisy_encdec(preset: str):
    from attnkit.models.encdec_config import get_encdec_preset

    torch.manual_seed(0)
    model = build_model(get_encdec_preset(preset)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.5)  # peaked attention, so a variant visibly changes the output
    return model


def test_swap_in_an_encoder_decoder_names_the_encoder_variant_and_reloads(tmp_path):
    """Swapping every encoder layer sets config.encoder_attention (a saved model rebuilds it);
    a swap that reaches the decoder stays in the record and is not rebuilt on load."""
    model = _noisy_encdec("tiny-marian")
    n_enc = model.config.n_encoder_layers
    ids = torch.randint(5, 50, (2, 40))

    def logits(m):
        with torch.no_grad():
            return m(input_ids=ids, decoder_input_ids=ids).logits

    swapped = surgery.swap_attention(model, "local", layers=range(n_enc), block_size=4)
    assert swapped.config.encoder_attention == "local"
    assert swapped.config.encoder_attention_params == {"block_size": 4}
    assert model.config.encoder_attention == "exact"  # the original is untouched
    assert (logits(swapped) - logits(model)).abs().max() > 0.1  # the swap does something
    attnkit.save(swapped, tmp_path / "enc")
    back = attnkit.load(tmp_path / "enc")
    assert torch.equal(logits(back), logits(swapped))
    assert back.meta.swaps == swapped.meta.swaps

    everywhere = surgery.swap_attention(model, "local", block_size=4)
    assert everywhere.config.encoder_attention == "exact"
    assert everywhere.meta.swaps[-1].layers == tuple(range(model.config.n_layer))
    attnkit.save(everywhere, tmp_path / "all")
    assert attnkit.load(tmp_path / "all").meta.swaps == ()


def test_swap_refuses_t5_layers_whose_kernel_carries_a_relative_bias():
    model = _noisy_encdec("tiny-t5")
    with pytest.raises(ValueError, match=r"layer 0 has kernel 'exact-biased'.*relative"):
        surgery.swap_attention(model, "local", block_size=4)
