"""Tokenizers trained from a corpus, all HF ``tokenizers`` objects (saved as tokenizer.json).

* ``"char"``: one token per character, the vocabulary being the corpus's sorted characters.
* ``"bpe"``: byte-level BPE (GPT-2 style) with ``vocab_size`` tokens.
* ``"wordpiece"``: BERT-style WordPiece with ``[PAD] [UNK] [CLS] [SEP] [MASK]`` for masked LM.

Trained tokenizers are cached under the attnkit cache directory by (corpus checksum, kind,
vocab size), so a second run does not train again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from attnkit._util import checks

KINDS = ("char", "bpe", "wordpiece")
WORDPIECE_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
BPE_SPECIALS = ["<|endoftext|>"]


def tokenizer_hash(tok: Tokenizer) -> str:
    """SHA-256 of the tokenizer's JSON: equal hashes, equal token ids.

    Examples:
        >>> len(tokenizer_hash(train_char("hello world\\n")))
        64
    """
    return hashlib.sha256(tok.to_str().encode("utf-8")).hexdigest()


def _chunks(text: str, size: int = 1 << 16):
    """Pieces of about ``size`` characters cut after a line break."""
    start = 0
    while start < len(text):
        end = text.find("\n", start + size)
        end = len(text) if end == -1 else end + 1
        yield text[start:end]
        start = end


def train_char(text: str) -> Tokenizer:
    """A character tokenizer: one token per character of ``text``, ids in sorted order of the
    characters; no unknown token, so a character not in ``text`` cannot be encoded.

    Examples:
        >>> train_char("hello world\\n").get_vocab_size()
        9
    """
    chars = sorted(set(text))
    tok = Tokenizer(models.WordLevel({c: i for i, c in enumerate(chars)}, unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return tok


def train_bpe(text: str, vocab_size: int, specials: Sequence[str] | None = None) -> Tokenizer:
    """Byte-level BPE; ``specials`` (default ``<|endoftext|>``) take the first ids, in order.

    Args:
        text: the training text.
        vocab_size: the vocabulary size to train to (the 256 byte tokens and ``specials``
            included).
        specials: the special tokens; None: ``["<|endoftext|>"]``.

    Examples:
        >>> tok = train_bpe(load_corpus("shakespeare").text, 2048)
        >>> tok.token_to_id("<|endoftext|>")
        0
    """
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(BPE_SPECIALS if specials is None else specials),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_chunks(text), trainer=trainer, length=None)
    return tok


def train_wordpiece(text: str, vocab_size: int) -> Tokenizer:
    """A BERT-style WordPiece tokenizer of ``vocab_size`` tokens: the BERT normaliser (case and
    accents kept) and pre-tokenizer, ``[PAD] [UNK] [CLS] [SEP] [MASK]`` as ids 0-4.

    Examples:
        >>> train_wordpiece("the cat sat on the mat\\n" * 50, 100).token_to_id("[MASK]")
        4
    """
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=False, strip_accents=False)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, special_tokens=WORDPIECE_SPECIALS, show_progress=False
    )
    tok.train_from_iterator(_chunks(text), trainer=trainer)
    return tok


def train_tokenizer(
    kind: str, text: str, vocab_size: int | None = None, specials: Sequence[str] | None = None
) -> Tokenizer:
    """A new tokenizer of ``kind`` ("char", "bpe" or "wordpiece") trained on ``text``.

    Args:
        kind: one of :data:`KINDS`.
        text: the training text.
        vocab_size: the vocabulary size, at least 300 for "bpe" and 10 for "wordpiece";
            ignored for "char".
        specials: the special tokens of a BPE tokenizer (default ``<|endoftext|>``).

    Raises:
        ValueError: an unknown ``kind``, ``specials`` for another kind, or a ``vocab_size``
            too small (or None) for a BPE or WordPiece tokenizer.

    Examples:
        >>> train_tokenizer("char", "abc").get_vocab_size()
        3
    """
    checks.choice("data.tokenizer", kind, KINDS)
    if specials is not None and kind != "bpe":
        raise ValueError(f"special tokens {list(specials)} are for a 'bpe' tokenizer, not {kind!r}")
    if kind == "char":
        return train_char(text)
    least = 300 if kind == "bpe" else 10
    vocab_size = checks.int_at_least(f"data.vocab_size for a {kind} tokenizer", vocab_size, least)
    if kind == "bpe":
        return train_bpe(text, vocab_size, specials)
    return train_wordpiece(text, vocab_size)


def build_tokenizer(
    kind: str,
    text: str,
    corpus_checksum: str,
    vocab_size: int | None,
    cache: Path | None,
    specials: Sequence[str] | None = None,
) -> Tokenizer:
    """A tokenizer of ``kind`` for this corpus, from the cache when one was trained before.

    The cache file is ``<cache>/tokenizers/<kind>-<vocab_size>-<checksum>.json`` (plus a hash
    of ``specials``); an entry that cannot be read is trained again and overwritten.

    Args:
        kind: "char", "bpe" or "wordpiece" (:func:`train_tokenizer`).
        text: the training text.
        corpus_checksum: the corpus's SHA-256, part of the cache key.
        vocab_size: as :func:`train_tokenizer`.
        cache: the cache directory; None trains without caching.
        specials: the special tokens of a BPE tokenizer.

    Examples:
        >>> corpus = load_corpus("shakespeare")
        >>> tok = build_tokenizer("bpe", corpus.text, corpus.checksum, 2048, cache_dir())
    """
    key = f"{kind}-{vocab_size if kind != 'char' else 0}-{corpus_checksum[:16]}"
    if specials is not None:
        key += "-s" + hashlib.sha256("\n".join(specials).encode()).hexdigest()[:12]
    path = cache / "tokenizers" / f"{key}.json" if cache is not None else None
    if path is not None and path.is_file():
        try:
            return Tokenizer.from_file(str(path))
        except Exception:  # a damaged cache entry is trained again
            pass
    tok = train_tokenizer(kind, text, vocab_size, specials)
    if path is not None:
        from attnkit._util.fs import atomic_write_bytes

        atomic_write_bytes(path, tok.to_str().encode("utf-8"))
    return tok


def encode(tok: Tokenizer, text: str) -> list[int]:
    """All token ids of ``text`` (encoded in parallel chunks cut at line breaks), without
    special tokens.

    Examples:
        >>> encode(train_char("hello world\\n"), "hello")
        [4, 3, 5, 5, 6]
    """
    ids: list[int] = []
    for enc in tok.encode_batch(list(_chunks(text)), add_special_tokens=False):
        ids.extend(enc.ids)
    return ids


def encode_texts(tok: Tokenizer, texts: Sequence[str], max_length: int) -> list[list[int]]:
    """Token ids of each text, special tokens included, cut at ``max_length`` tokens, no
    padding (batches are padded later, see :mod:`attnkit.text.batching`). Sets the
    tokenizer's padding off and its truncation to ``max_length``.

    Args:
        tok: the tokenizer (changed in place as said).
        texts: the texts.
        max_length: the most ids per text, special tokens included.

    Examples:
        >>> encode_texts(attnkit.load("minilm").meta.tokenizer, ["To be", "or not"], 128)[0][0]
        101
    """
    tok.no_padding()
    tok.enable_truncation(max_length)
    return [e.ids for e in tok.encode_batch(list(texts))]


def pad_token_id(tok: Tokenizer, default: int | None = None) -> int:
    """The id of ``[PAD]`` (BERT) or ``<pad>``, else ``default`` (a config's pad_token_id),
    else 0.

    Examples:
        >>> pad_token_id(train_char("abc"), default=7)
        7
    """
    for name in ("[PAD]", "<pad>"):
        pid = tok.token_to_id(name)
        if pid is not None:
            return int(pid)
    return int(default or 0)
