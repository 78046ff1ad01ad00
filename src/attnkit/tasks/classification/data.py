"""Labelled texts for classification: reading CSV/TSV/JSON-lines files and naming the classes.

CSV (``.csv``, ``.tsv``) or JSON lines (``.jsonl``, ``.ndjson``) in UTF-8, with a text column
and a label column (:func:`read_examples`). A missing column, an empty text or label or a file
that is not UTF-8 is a ``ValueError`` naming the file, the row and what was expected. Labels
are strings; the classes are the training labels, sorted (numerically when they are all
integers, :func:`label_names`).
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["LabelledTexts", "as_examples", "label_names", "read_examples"]

_CSV_SUFFIXES = {".csv": ",", ".tsv": "\t"}
_JSONL_SUFFIXES = (".jsonl", ".ndjson")


@dataclass
class LabelledTexts:
    """Texts and their labels (strings), with where they came from.

    ``texts`` and ``labels`` have one item per row; ``source`` names them in error messages
    (a file path, or ``"<memory>"``); ``len()`` counts the rows.

    Raises:
        ValueError: the two lists differ in length, or a text or label is not a non-empty
            string.

    Examples:
        >>> len(LabelledTexts(["To be, or not to be", "Exeunt"], ["tragedy", "comedy"]))
        2
    """

    texts: list[str]
    labels: list[str]
    source: str = "<memory>"

    def __post_init__(self) -> None:
        if len(self.texts) != len(self.labels):
            raise ValueError(
                f"{self.source}: {len(self.texts)} texts but {len(self.labels)} "
                f"labels; expected one label per text"
            )
        for i, (t, y) in enumerate(zip(self.texts, self.labels)):
            if not isinstance(t, str) or not t.strip():
                raise ValueError(f"{self.source}: text {i} is {t!r}; expected a non-empty string")
            if not isinstance(y, str) or not y.strip():
                raise ValueError(f"{self.source}: label {i} is {y!r}; expected a non-empty string")

    def __len__(self) -> int:
        return len(self.texts)


def _decode(path: Path) -> str:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file; expected a CSV or JSONL file") from None
    except IsADirectoryError:
        raise ValueError(f"{path}: is a directory; expected a CSV or JSONL file") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ValueError(
            f"{path}: not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}); "
            f"expected a UTF-8 encoded file"
        ) from None


def _cell(value: Any, path: Path, where: str, column: str, what: str) -> str:
    if value is None:
        value = ""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(
            f"{path}:{where}: {what} in column {column!r} is a "
            f"{type(value).__name__}; expected a string"
        )
    text = str(value).strip()
    if not text:
        raise ValueError(
            f"{path}:{where}: empty {what} in column {column!r}; expected a {what} on every row"
        )
    return text


def read_examples(
    path: str | os.PathLike[str], text_column: str = "text", label_column: str = "label"
) -> LabelledTexts:
    """Texts and labels from a UTF-8 CSV/TSV file (with a header row) or a JSON-lines file.

    The format follows the suffix (``.csv``, ``.tsv``, ``.jsonl``, ``.ndjson``); cells are
    stripped, blank lines skipped, and numbers in JSON read as strings.

    Args:
        path: the file.
        text_column: the column (or JSON key) of the texts.
        label_column: the column (or JSON key) of the labels.

    Raises:
        ValueError: another suffix, a missing file, text that is not UTF-8, invalid CSV or
            JSON, a missing column, an empty cell, or no rows (naming the file and the line).

    Examples:
        >>> data = read_examples("train.csv", text_column="text", label_column="label")
        >>> data.source, len(data)
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in _CSV_SUFFIXES and suffix not in _JSONL_SUFFIXES:
        raise ValueError(
            f"{path}: suffix {path.suffix!r} is not supported; expected one of "
            f"{sorted([*_CSV_SUFFIXES, *_JSONL_SUFFIXES])}"
        )
    content = _decode(path)
    texts: list[str] = []
    labels: list[str] = []
    if suffix in _CSV_SUFFIXES:
        reader = csv.DictReader(io.StringIO(content, newline=""), delimiter=_CSV_SUFFIXES[suffix])
        columns = reader.fieldnames or []
        for col in (text_column, label_column):
            if col not in columns:
                raise ValueError(
                    f"{path}: no column {col!r}; expected one of its columns {columns}"
                )
        try:
            for row in reader:
                where = f"line {reader.line_num}"
                if not any((v or "").strip() for v in row.values() if isinstance(v, str)):
                    continue  # a blank line
                texts.append(_cell(row.get(text_column), path, where, text_column, "text"))
                labels.append(_cell(row.get(label_column), path, where, label_column, "label"))
        except csv.Error as e:
            raise ValueError(f"{path}: line {reader.line_num}: not valid CSV ({e})") from None
    else:
        seen_columns: set[str] = set()
        for n, line in enumerate(content.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(
                    f"{path}:line {n}: not valid JSON ({e.msg}); expected one object per line"
                ) from None
            if not isinstance(obj, dict):
                raise ValueError(
                    f"{path}:line {n}: a JSON {type(obj).__name__}; expected an "
                    f"object with {text_column!r} and {label_column!r}"
                )
            seen_columns |= set(obj)
            for col in (text_column, label_column):
                if col not in obj:
                    raise ValueError(
                        f"{path}:line {n}: no column {col!r}; expected one of its "
                        f"keys {sorted(obj)}"
                    )
            texts.append(_cell(obj[text_column], path, f"line {n}", text_column, "text"))
            labels.append(_cell(obj[label_column], path, f"line {n}", label_column, "label"))
    if not texts:
        raise ValueError(
            f"{path}: holds no rows; expected a {text_column!r} and a {label_column!r} on each row"
        )
    return LabelledTexts(texts, labels, str(path))


def as_examples(
    data: LabelledTexts | str | os.PathLike[str] | tuple[Sequence[str], Sequence[object]],
    text_column: str = "text",
    label_column: str = "label",
    name: str = "data",
) -> LabelledTexts:
    """``data`` as :class:`LabelledTexts`: itself, read from a file path, or a (texts, labels)
    pair (labels turned into strings).

    Args:
        data: a :class:`LabelledTexts`, a file path, or a (texts, labels) tuple.
        text_column: the text column when ``data`` is a file.
        label_column: the label column when ``data`` is a file.
        name: how ``data`` is called in errors (the source of a pair is ``"<name>"``).

    Raises:
        ValueError: ``data`` is of none of these kinds, or as :func:`read_examples` and
            :class:`LabelledTexts`.

    Examples:
        >>> as_examples((["To be", "Exeunt"], ["tragedy", "comedy"])).source
        '<data>'
    """
    if isinstance(data, LabelledTexts):
        return data
    if isinstance(data, (str, os.PathLike)):
        return read_examples(data, text_column, label_column)
    if isinstance(data, tuple) and len(data) == 2:
        return LabelledTexts(list(data[0]), [str(y) for y in data[1]], f"<{name}>")
    raise ValueError(
        f"{name} must be a file path, a LabelledTexts or a (texts, labels) pair, "
        f"got {type(data).__name__}"
    )


def label_names(labels: Sequence[str]) -> list[str]:
    """The classes of a label column: sorted, numerically when every label is an integer.

    Examples:
        >>> label_names(["10", "9", "2", "9"])
        ['2', '9', '10']
    """
    names = sorted(set(labels))
    try:
        return sorted(names, key=int)
    except ValueError:
        return names
