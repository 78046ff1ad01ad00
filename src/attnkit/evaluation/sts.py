"""Semantic textual similarity: Spearman correlation between an encoder's cosine similarities
and the gold scores of sentence pairs.

Files of scored pairs (UTF-8, :func:`read_pairs`):

* ``.jsonl``: one object per line with ``sentence1``, ``sentence2`` and ``score``;
* ``.csv`` / ``.tsv`` with a header row naming ``sentence1``, ``sentence2`` and ``score``;
* ``.tsv`` / ``.txt`` / ``.csv`` (tab-separated) without a header: three columns
  ``sentence1  sentence2  score``, or the STS benchmark's own layout (genre, file, year, id,
  score, sentence1, sentence2, and possibly more columns).

Spearman's rho is Pearson's correlation of the ranks, ties given the mean of the ranks they
span (:func:`rank_average`), as in ``scipy.stats.spearmanr``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from attnkit.tasks.sentence import Encoder

__all__ = ["evaluate_sts", "rank_average", "read_pairs", "spearman"]

COLUMNS = ("sentence1", "sentence2", "score")


def rank_average(values: Sequence[float] | np.ndarray) -> np.ndarray:
    """Ranks 1..n of ``values`` (float64), tied values sharing the mean of their ranks.

    Args:
        values: the numbers to rank, shape (n,) (any shape is flattened).

    Returns:
        The rank of each value, shape (n,), in the order of ``values``.

    Examples:
        >>> rank_average([3.0, 1.0, 3.0, 2.0])
        array([3.5, 1. , 3.5, 2. ])
    """
    a = np.asarray(values, dtype=np.float64).reshape(-1)
    order = np.argsort(a, kind="mergesort")
    sorted_a = a[order]
    ranks = np.empty(a.size, dtype=np.float64)
    start = 0
    for stop in range(1, a.size + 1):
        if stop == a.size or sorted_a[stop] != sorted_a[start]:
            ranks[order[start:stop]] = (start + 1 + stop) / 2.0  # mean of start+1..stop
            start = stop
    return ranks


def spearman(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    """Spearman's rank correlation of two equally long sequences (NaN when one is constant).

    Args:
        x: the first values, shape (n,).
        y: the second values, shape (n,).

    Raises:
        ValueError: lengths differ or are under 2, or a value is NaN or infinite.

    Examples:
        >>> spearman([1, 2, 3], [10, 20, 40])
        1.0
    """
    a = np.asarray(x, dtype=np.float64).reshape(-1)
    b = np.asarray(y, dtype=np.float64).reshape(-1)
    if a.size != b.size or a.size < 2:
        raise ValueError(
            f"spearman needs two sequences of the same length >= 2, got {a.size} and {b.size}"
        )
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("spearman got NaN or inf; expected finite values")
    ra, rb = rank_average(a), rank_average(b)
    ra -= ra.mean()
    rb -= rb.mean()
    denom = math.sqrt(float(ra @ ra) * float(rb @ rb))
    return float(ra @ rb) / denom if denom > 0 else math.nan


def _score(text: Any, where: str) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: score {text!r} is not a number; expected a number") from None
    if not math.isfinite(value):
        raise ValueError(f"{where}: score {text!r}; expected a finite number")
    return value


def _text(value: Any, where: str, column: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{where}: {column} is {value!r}; expected a non-empty string")
    return value.strip()


def read_pairs(path: str | os.PathLike[str]) -> tuple[list[str], list[str], list[float]]:
    """(sentences1, sentences2, scores) of an STS file (formats in the module docstring).

    Args:
        path: a .jsonl, .tsv, .txt or .csv file of scored sentence pairs, UTF-8.

    Returns:
        Three equally long lists: first sentences, second sentences, gold scores.

    Raises:
        ValueError: the file is unreadable or not UTF-8, has an unsupported suffix, a row with
            a missing or empty column or a score that is not a finite number, or fewer than 2
            pairs.

    Examples:
        >>> a, b, gold = read_pairs("sts-test.tsv")
    """
    path = Path(path)
    try:
        content = path.read_bytes().decode("utf-8-sig")
    except OSError as e:
        raise ValueError(f"{path}: {e.strerror}; expected a file of scored pairs") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text (offset {e.start}); expected UTF-8") from None
    rows: list[tuple[str, str, float]] = []
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        for n, line in enumerate(content.splitlines(), 1):
            if not line.strip():
                continue
            where = f"{path}:line {n}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: not valid JSON ({e.msg}); expected an object") from None
            if not isinstance(obj, dict) or not set(COLUMNS) <= set(obj):
                raise ValueError(f"{where}: expected an object with keys {list(COLUMNS)}")
            rows.append(
                (
                    _text(obj["sentence1"], where, "sentence1"),
                    _text(obj["sentence2"], where, "sentence2"),
                    _score(obj["score"], where),
                )
            )
    elif suffix in (".tsv", ".txt", ".csv"):
        delimiter = "," if suffix == ".csv" and "\t" not in content.split("\n", 1)[0] else "\t"
        table = list(
            csv.reader(
                io.StringIO(content, newline=""),
                delimiter=delimiter,
                quoting=csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL,
            )
        )
        table = [r for r in table if any(c.strip() for c in r)]
        if not table:
            raise ValueError(f"{path}: holds no rows; expected scored sentence pairs")
        header = [c.strip().lower() for c in table[0]]
        if set(COLUMNS) <= set(header):
            cols = [header.index(c) for c in COLUMNS]
            body, first = table[1:], 2
        else:
            cols = [0, 1, 2] if len(header) < 7 else [5, 6, 4]
            body, first = table, 1
        for n, r in enumerate(body, first):
            where = f"{path}:row {n}"
            if len(r) <= max(cols):
                raise ValueError(
                    f"{where}: {len(r)} columns; expected sentence1, sentence2, score (or the "
                    f"STS benchmark's 7 columns)"
                )
            rows.append(
                (
                    _text(r[cols[0]], where, "sentence1"),
                    _text(r[cols[1]], where, "sentence2"),
                    _score(r[cols[2]], where),
                )
            )
    else:
        raise ValueError(
            f"{path}: suffix {path.suffix!r} is not supported; expected .jsonl, .tsv, .txt or .csv"
        )
    if len(rows) < 2:
        raise ValueError(f"{path}: {len(rows)} scored pair(s); expected at least 2")
    a, b, s = zip(*rows)
    return list(a), list(b), list(s)


def evaluate_sts(
    encoder: Encoder,
    data: str | os.PathLike[str] | tuple[Sequence[str], Sequence[str], Sequence[float]],
    batch_size: int = 32,
) -> dict[str, Any]:
    """``{"pairs", "spearman", "pearson"}``: correlations of the cosine similarity of each
    pair's embeddings with its gold score (``data``: an STS file or three sequences).

    Args:
        encoder: the sentence encoder whose normalized embeddings are compared.
        data: a file :func:`read_pairs` reads, or ``(sentences1, sentences2, scores)``.
        batch_size: sentences encoded at once.

    Returns:
        ``{"pairs": n, "spearman": rho, "pearson": r}`` (a correlation is NaN when the
        similarities or the scores are constant).

    Raises:
        ValueError: the three sequences differ in length, or :func:`read_pairs` refuses the file.

    Examples:
        >>> evaluate_sts(Encoder.load("minilm"), "sts-test.tsv")["spearman"]
    """
    if isinstance(data, (str, os.PathLike)):
        a, b, gold = read_pairs(data)
    else:
        a, b, gold = list(data[0]), list(data[1]), [float(v) for v in data[2]]
        if not (len(a) == len(b) == len(gold)):
            raise ValueError(
                f"got {len(a)} first sentences, {len(b)} second ones and {len(gold)} scores; "
                f"expected as many of each"
            )
    vecs = encoder.encode(list(a) + list(b), batch_size=batch_size, normalize=True)
    cos = np.einsum(
        "nc,nc->n", vecs[: len(a)].astype(np.float64), vecs[len(a) :].astype(np.float64)
    )
    g = np.asarray(gold, dtype=np.float64)
    pearson = float(np.corrcoef(cos, g)[0, 1]) if cos.std() > 0 and g.std() > 0 else math.nan
    return {"pairs": len(a), "spearman": spearman(cos, g), "pearson": pearson}
