"""generate() and Encoder.encode() with arguments drawn by hypothesis, good and bad.

generate: max_new_tokens, temperature (down to the smallest float), top_k, top_p, repetition
penalty, stop, eos ids, seed, cache and context flags, and prompts (text, empty, too long, ids
of the wrong type or outside the vocabulary, tensors of the wrong dtype or rank). A valid call
returns the prompt's ids plus at most max_new_tokens new ids, each in the vocabulary.

Encoder.encode: empty, huge and odd text (lone surrogates, NUL, bytes), wrong containers and
options. A valid call returns unit-length finite vectors of the model's width.

A model whose weights hold NaN never hands a NaN (or a token chosen from NaN logits) back: both
refuse with a ValueError.
"""

from __future__ import annotations

import math

import pytest
import torch
from _fuzz import CHARS, VOCAB, char_tokenizer, fuzz_settings, one_line, record
from hypothesis import given
from hypothesis import strategies as st

from attnkit import Encoder
from attnkit.generation import generate
from attnkit.models import build_model, get_preset


@pytest.fixture(scope="module")
def gpt():
    torch.manual_seed(0)
    cfg = get_preset("tiny", vocab_size=len(VOCAB), max_seq_len=24, n_layer=1, d_model=32)
    model = build_model(cfg).eval()
    model.meta = model.meta.replace(tokenizer=char_tokenizer(False))
    return model


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    cfg = get_preset("tiny-bert", vocab_size=len(VOCAB), d_model=32, n_heads=4, pooling="mean")
    cfg = cfg.replace(max_seq_len=32, n_layer=1)
    model = build_model(cfg).eval()
    model.meta = model.meta.replace(tokenizer=char_tokenizer(True))
    return Encoder(model)


V = len(VOCAB)


def mostly(good, bad):
    return st.one_of(good, good, good, st.sampled_from(bad))


GOOD_PROMPTS = st.one_of(
    st.text(alphabet=CHARS, min_size=1, max_size=8),
    st.lists(st.integers(0, V - 1), min_size=1, max_size=8),
    st.lists(st.text(alphabet=CHARS, min_size=1, max_size=5), min_size=1, max_size=3),
    st.lists(st.lists(st.integers(0, V - 1), min_size=1, max_size=6), min_size=1, max_size=3),
    st.sampled_from([torch.tensor([1, 2, 3]), torch.tensor([[1, 2], [3, 4]])]),
)
BAD_PROMPTS = st.sampled_from(
    [
        "",
        [],
        [[]],
        [V],
        [-1],
        [True, 2],
        [1.0, 2.0],
        ["a", 3],
        [[1], "a"],
        b"bytes",
        None,
        7,
        "a" * 200,  # longer than max_seq_len=24 (refused with context="error")
        list(range(V)) * 2,  # 70 ids: too long as well
        torch.tensor([1.0, 2.0]),
        torch.tensor([[[1]]]),
        torch.tensor([True, False]),
        torch.tensor([V + 3]),
        torch.zeros(0, dtype=torch.long),
        "\ud800",  # a lone surrogate
    ]
)
GOOD = {
    "prompt": GOOD_PROMPTS,
    "max_new_tokens": st.integers(1, 6),
    "temperature": st.one_of(
        st.just(0.0), st.floats(1e-3, 5.0), st.sampled_from([5e-324, 1e-300, 1e-30, 1e300])
    ),
    "top_k": st.one_of(st.none(), st.integers(1, 2 * V)),
    "top_p": st.one_of(st.none(), st.floats(1e-6, 1.0)),
    "repetition_penalty": st.floats(0.5, 3.0),
    "stop": st.sampled_from([None, "x", [3, 4], ["a", [5]]]),
    "eos_token_id": st.sampled_from([None, 7, [7, 8]]),
    "seed": st.one_of(st.none(), st.integers(0, 2**31)),
    "use_cache": st.booleans(),
    "context": st.sampled_from(["error", "slide"]),
}
NOT_NUMBERS = ["3", True, None, [1]]
BAD_GEN = {
    "prompt": BAD_PROMPTS,
    "max_new_tokens": st.sampled_from([0, -1, 1.5, math.nan, math.inf, *NOT_NUMBERS]),
    "temperature": st.sampled_from([-1e-9, -1, math.nan, math.inf, -math.inf, *NOT_NUMBERS]),
    "top_k": st.sampled_from([0, -1, 1.5, math.nan, math.inf, *NOT_NUMBERS]),
    "top_p": st.sampled_from([0.0, 1.0001, -1, 1.5, math.nan, math.inf, -math.inf, "3"]),
    "repetition_penalty": st.sampled_from([0.0, -1, math.nan, math.inf, -math.inf, *NOT_NUMBERS]),
    "stop": st.sampled_from(["", [V], 5, [[]], [""]]),  # [] is no stop, like None
    "eos_token_id": st.sampled_from([V, -1, "7", [1.5]]),
    "seed": st.sampled_from([-1, 1.5, "1"]),
    "use_cache": st.sampled_from([1, "no", None]),
    "context": st.sampled_from(["wrap", None, 0]),
}


@st.composite
def generate_calls(draw):
    kw = {name: draw(strat) for name, strat in GOOD.items()}
    bad = draw(st.sampled_from(sorted(BAD_GEN))) if draw(st.booleans()) else None
    if bad is not None:
        kw[bad] = draw(BAD_GEN[bad])
    return kw, bad


@given(generate_calls())
@fuzz_settings(80)
def test_generate(gpt, call):
    kw, bad = call
    prompt, max_new = kw.pop("prompt"), kw.pop("max_new_tokens")
    try:
        out = generate(gpt, prompt, max_new, **kw)
    except (ValueError, TypeError) as e:
        assert one_line(str(e)), repr(e)
        record("generate()", "refused")
        return
    long_prompt = bad == "prompt" and kw["context"] == "slide" and len(prompt) > 24
    assert bad is None or long_prompt, f"bad {bad} was accepted: {prompt!r}, {kw}"
    rows = out if out and isinstance(out[0], list) else [out]
    for row in rows:
        assert all(isinstance(t, int) and 0 <= t < V for t in row), row
    record("generate()", "accepted")


GOOD_TEXTS = st.one_of(
    st.text(max_size=40),  # any code point but lone surrogates
    st.lists(st.text(max_size=20), max_size=5),
    st.sampled_from(["", [], [""], "x" * 100_000, "\x00\x00", ("tuple", "of", "texts")]),
)
BAD_TEXTS = st.one_of(
    st.text(alphabet=st.characters(categories=["Cs"]), min_size=1, max_size=3),  # surrogates
    st.sampled_from(
        [["a", None], ["a", 3], b"bytes", [b"a"], bytearray(b"a"), None, 3, {"a": 1}, "\ud800x"]
    ),
)


@given(
    texts=st.one_of(GOOD_TEXTS, GOOD_TEXTS, BAD_TEXTS),
    batch_size=mostly(st.integers(1, 4), [0, -1, 1.5, "2", None, True]),
    normalize=st.booleans(),
    convert_to=mostly(st.sampled_from(["numpy", "torch"]), ["list", None, 1]),
)
@fuzz_settings(80)
def test_encode(encoder, texts, batch_size, normalize, convert_to):
    try:
        out = encoder.encode(
            texts, batch_size=batch_size, normalize=normalize, convert_to=convert_to
        )
    except (ValueError, TypeError) as e:
        assert one_line(str(e)), repr(e)
        record("Encoder.encode()", "refused")
        return
    assert not isinstance(texts, (bytes, bytearray, dict)) and texts is not None
    got = torch.as_tensor(out)
    n = 1 if isinstance(texts, str) else len(texts)
    assert got.shape == ((32,) if isinstance(texts, str) else (n, 32))
    assert torch.isfinite(got).all()
    if normalize and n:
        torch.testing.assert_close(got.norm(dim=-1), torch.ones(got.shape[:-1]))
    record("Encoder.encode()", "accepted")


def poisoned(model):
    """A deep copy of ``model`` with one NaN in its first block's weights."""
    import copy

    bad = copy.deepcopy(model)
    with torch.no_grad():
        p = next(p for n, p in bad.named_parameters() if ".mlp." in n)
        p.view(-1)[0] = math.nan
    return bad


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_a_model_with_nan_weights_generates_no_tokens(gpt, temperature):
    with pytest.raises(ValueError, match="NaN"):
        generate(poisoned(gpt), "ab", 3, temperature=temperature, seed=0)
    record("generate() NaN model", "refused")


def test_a_model_with_nan_weights_embeds_nothing(encoder):
    bad = Encoder(poisoned(encoder.model))
    with pytest.raises(ValueError, match="NaN"):
        bad.encode(["a text", "another"])
    with pytest.raises(ValueError, match="NaN"):
        bad.similarity("a b", "b a", word="a")
    record("Encoder.encode() NaN model", "refused")
