"""The texts and the similarity measure of ``attnkit bench embed``: short lines and long
passages of a corpus (the Shakespeare text by default), and per-text cosines."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from attnkit.bench.harness import shared_data_file

__all__ = [
    "CORPUS_NAME",
    "PASSAGE_TOKENS",
    "cosines",
    "default_corpus",
    "min_cosine",
    "read_lines",
    "read_passages",
]

CORPUS_NAME = "tinyshakespeare.txt"
PASSAGE_TOKENS = (100, 256)


def default_corpus() -> Path | None:
    """../shared/data/tinyshakespeare.txt next to the repository (or the working directory)."""
    return shared_data_file(CORPUS_NAME)


def read_lines(path: str | os.PathLike[str], n: int, min_chars: int = 20) -> list[str]:
    """The first ``n`` stripped lines of ``path`` longer than ``min_chars`` characters."""
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if len(line) > min_chars:
                out.append(line)
                if len(out) == n:
                    break
    return out


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(axis=1)


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(cosines(a, b).min())


def read_passages(
    path: str | os.PathLike[str], n: int, count_tokens: Callable[[str], int]
) -> list[str]:
    """``n`` paragraphs of consecutive non-empty lines of ``path``, joined by spaces, each of
    :data:`PASSAGE_TOKENS` tokens (``count_tokens``): the k-th aims at a length spread over
    that range (k * 37 mod 157 tokens above 100), and one that overshoots 256 is dropped."""
    lo, hi = PASSAGE_TOKENS
    out: list[str] = []
    words: list[str] = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            words.append(line)
            aim = lo + (len(out) * 37) % (hi - lo + 1)
            size = count_tokens(" ".join(words))
            if size >= aim:
                if size <= hi:
                    out.append(" ".join(words))
                    if len(out) == n:
                        break
                words = []
    return out
