"""Texts in, texts out, for an encoder-decoder: sources encoded, batched by length, decoded.

    >>> translate(model, tok, ["In the beginning God created the heaven."], num_beams=4)
    ['En el principio crió Dios los cielos.']

Each source is its tokens (no special tokens of the tokenizer's own) followed by the model's
eos token, cut to ``max_source_len`` tokens, the eos kept. Sources are sorted by length and
decoded ``batch_size`` at a time (:func:`attnkit.text.batching.length_batches`), so little of a
batch is padding; the outputs come back in the input order, special tokens dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from attnkit._util import checks
from attnkit.generation.seq2seq import generate_seq2seq
from attnkit.models.encdec import EncoderDecoder
from attnkit.text.batching import length_batches, pad_batch

if TYPE_CHECKING:  # pragma: no cover - for static tools only
    from tokenizers import Tokenizer

__all__ = ["encode_sources", "translate"]


def encode_sources(
    tok: Tokenizer, texts: Sequence[str], eos_id: int, max_len: int | None = None
) -> list[list[int]]:
    """Token ids of each text then ``eos_id``, at most ``max_len`` ids in all (the text's
    ids are cut, the eos kept); no special tokens of the tokenizer's own are added.

    Args:
        tok: the source tokenizer.
        texts: the source texts.
        eos_id: the id appended to every row.
        max_len: the most ids per row, eos included (>= 2); None: no limit.

    Raises:
        ValueError: if ``max_len`` is below 2.

    Examples:
        >>> encode_sources(tok, ["Hello world"], eos_id=1, max_len=3)  # [[id, id, 1]]
    """
    if max_len is not None:
        checks.int_at_least("max_len", max_len, 2, ">= 2 (a token and the eos)")
    rows = [e.ids for e in tok.encode_batch(list(texts), add_special_tokens=False)]
    keep = None if max_len is None else max_len - 1
    return [r[:keep] + [eos_id] for r in rows]


@torch.no_grad()
def translate(
    model: EncoderDecoder,
    tok: Tokenizer,
    texts: Sequence[str],
    *,
    num_beams: int = 1,
    max_new_tokens: int | None = None,
    batch_size: int = 32,
    max_source_len: int | None = None,
    **options: Any,
) -> list[str]:
    """The decoded output of each of ``texts`` (greedy, or beam search with ``num_beams``; the
    other ``options`` of :func:`~attnkit.generation.seq2seq.generate_seq2seq`, such as
    ``length_penalty`` or ``no_repeat_ngram_size``, pass through). ``max_new_tokens`` None:
    as many as the model's positions allow (``max_seq_len - 1``).

    Sources are encoded by :func:`encode_sources` and decoded ``batch_size`` at a time,
    sorted by length; the outputs come back in the input order, special tokens dropped and
    surrounding whitespace stripped. The model is run in eval mode, then put back.

    Args:
        model: the encoder-decoder.
        tok: the tokenizer of both sides.
        texts: the source texts (a list, not one str).
        num_beams: 1 for greedy decoding, more for beam search.
        max_new_tokens: the most new tokens per output; None: ``max_seq_len - 1``.
        batch_size: sources decoded at once.
        max_source_len: the most source tokens, eos included; None: the model's
            ``max_seq_len`` for learned or sinusoidal positions, else no limit.
        **options: passed on to :func:`~attnkit.generation.seq2seq.generate_seq2seq`.

    Raises:
        TypeError: if ``model`` is not an ``EncoderDecoder`` or ``texts`` is one str.
        ValueError: for a bad ``batch_size`` or option.

    Examples:
        >>> translate(model, tok, ["In the beginning God created the heaven."], num_beams=4)
        ['En el principio crió Dios los cielos.']
    """
    if not isinstance(model, EncoderDecoder):
        raise TypeError(f"model must be an attnkit EncoderDecoder, got {type(model).__name__}")
    checks.positive_int("batch_size", batch_size)
    if isinstance(texts, str):
        raise TypeError("texts must be a sequence of strings, got one str; wrap it in a list")
    if not texts:
        return []
    cfg = model.config
    limit = max_source_len or (
        cfg.max_seq_len if cfg.positional in ("learned", "sinusoidal") else None
    )
    if max_new_tokens is None:
        max_new_tokens = cfg.max_seq_len - 1
    sources = encode_sources(tok, texts, cfg.eos_token_id, limit)
    device = next(model.parameters()).device
    was = model.training
    model.eval()
    out: list[str] = [""] * len(texts)
    try:
        for idx in length_batches([len(s) for s in sources], batch_size):
            ids, mask = pad_batch([sources[i] for i in idx], cfg.pad_token_id, always_mask=True)
            rows = generate_seq2seq(
                model,
                ids.to(device),
                max_new_tokens,
                attention_mask=None if mask is None else mask.to(device),
                num_beams=num_beams,
                **options,
            )
            texts_out = tok.decode_batch(rows[:, 1:].tolist(), skip_special_tokens=True)
            for i, text in zip(idx, texts_out):
                out[i] = text.strip()
    finally:
        model.train(was)
    return out
