"""Texts handed to a model: :func:`check_texts` validates what Python callers pass (a str or
an iterable of str, valid Unicode), :func:`iter_texts` and :func:`read_texts` read what the
command line gets (arguments, a UTF-8 file, or stdin; one text per non-empty line)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any


def check_texts(texts: Any) -> list[str]:
    """``texts`` (a str, or an iterable of str) as a list of valid Unicode strings; TypeError
    for bytes, a mapping or a non-string item, ValueError for a lone surrogate (text that
    cannot be written as UTF-8, so no tokenizer can read it).

    Examples:
        >>> check_texts("To be")
        ['To be']
    """
    if isinstance(texts, (bytes, bytearray, memoryview)):
        raise TypeError(
            f"texts must be a str or a list of str, got {type(texts).__name__}; "
            f"decode it first (for example data.decode('utf-8'))"
        )
    if isinstance(texts, str):
        items = [texts]
    elif isinstance(texts, Mapping) or not isinstance(texts, Iterable):
        raise TypeError(f"texts must be a str or a list of str, got {type(texts).__name__}")
    else:
        items = list(texts)
    for i, t in enumerate(items):
        if not isinstance(t, str):
            raise TypeError(f"texts must be strings; item {i} is {type(t).__name__}")
        try:
            t.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ValueError(
                f"text {i} is not valid Unicode: {t[e.start : e.end]!r} at offset {e.start} is a "
                f"lone surrogate; expected text that can be written as UTF-8"
            ) from None
    return items


def read_texts(args_texts: Iterable[str], file: str | None, stdin: Iterable[str]) -> list[str]:
    """Texts from arguments, else one per non-empty line of --file, else of stdin.

    Args:
        args_texts: texts given on the command line.
        file: the path of a UTF-8 text file, or None.
        stdin: the lines of standard input (read only when there are no texts and no file).

    Examples:
        >>> read_texts(["one", "two"], None, sys.stdin)
        ['one', 'two']
    """
    return list(iter_texts(args_texts, file, stdin))


def iter_texts(args_texts: Iterable[str], file: str | None, stdin: Iterable[str]) -> Iterator[str]:
    """:func:`read_texts`, lazily: each line is read when the iterator reaches it, so a stream
    of any length passes through in bounded memory. ``file`` is opened now (a missing file is
    an OSError here); a line that is not UTF-8 is a ValueError naming the source (the file or
    "stdin") when it is reached. Lines lose their trailing ``\\n``; blank lines are skipped.

    Examples:
        >>> for text in iter_texts([], "lines.txt", sys.stdin): print(text)
    """
    texts = list(args_texts)
    if texts:
        return iter(texts)
    if file is not None:
        return _nonblank_lines(open(file, encoding="utf-8"), close=True, source=str(file))
    return _nonblank_lines(stdin, close=False, source="stdin")


def _nonblank_lines(lines: Iterable[str], close: bool, source: str) -> Iterator[str]:
    try:
        try:
            for line in lines:
                if line.strip():
                    yield line.rstrip("\n")
        except UnicodeDecodeError as e:  # a ValueError: one line naming the source
            raise ValueError(
                f"{source}: holds bytes that are not UTF-8 ({e.object[e.start : e.start + 1]!r}); "
                f"expected UTF-8 text"
            ) from None
    finally:
        if close and hasattr(lines, "close"):
            lines.close()
