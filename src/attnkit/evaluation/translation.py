"""Translation scores of a trained encoder-decoder on held-out pairs, and the copy baseline.

    >>> corpus = load_pairs("bible:en-es")
    >>> evaluate_translation(model, corpus.splits["test"], num_beams=4)
    {'bleu': ..., 'chrf': ..., 'sentences': 512, 'seconds': ..., 'sentences_per_second': ...}
    >>> copy_baseline(corpus.splits["test"])      # the source itself as the "translation"
    {'bleu': 0.07, 'chrf': 17.85, 'sentences': 512}

Decoding is :func:`attnkit.generation.translate.translate` (sources batched by length), the
scores sacrebleu's corpus BLEU and chrF (:func:`attnkit.text.scores.translation_scores`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from attnkit.generation.translate import translate
from attnkit.models.encdec import EncoderDecoder
from attnkit.text.scores import translation_scores

__all__ = ["copy_baseline", "evaluate_translation"]

Pair = tuple[str, str]


def _pairs(pairs: Sequence[Pair], limit: int | None) -> list[Pair]:
    picked = list(pairs)[:limit] if limit else list(pairs)
    if not picked:
        raise ValueError("no (source, reference) pairs to score; expected at least one")
    return picked


def copy_baseline(pairs: Sequence[Pair], limit: int | None = None) -> dict[str, Any]:
    """BLEU and chrF of copying each source as its translation.

    Args:
        pairs: ``(source, reference)`` pairs.
        limit: score only the first ``limit`` pairs (None or 0: all).

    Returns:
        ``{"bleu", "chrf", "sentences"}``.

    Raises:
        ValueError: no pairs to score.

    Examples:
        >>> copy_baseline([("hola", "hello"), ("adios", "goodbye")])["sentences"]
        2
    """
    picked = _pairs(pairs, limit)
    scores: dict[str, Any] = dict(
        translation_scores([s for s, _ in picked], [t for _, t in picked])
    )
    scores["sentences"] = len(picked)
    return scores


def evaluate_translation(
    model: EncoderDecoder,
    pairs: Sequence[Pair],
    *,
    tokenizer: Any = None,
    num_beams: int = 1,
    max_new_tokens: int | None = None,
    batch_size: int = 32,
    limit: int | None = None,
    max_source_len: int | None = None,
    keep_outputs: bool = False,
    **options: Any,
) -> dict[str, Any]:
    """Decode the sources of ``pairs`` (the first ``limit``) and score them against the
    references; ``tokenizer`` defaults to the one the model was loaded with.

    Args:
        model: the trained encoder-decoder.
        pairs: ``(source, reference)`` pairs.
        tokenizer: the tokenizer of both sides (default: ``model.meta.tokenizer``).
        num_beams: 1 for greedy decoding, more for beam search.
        max_new_tokens: the longest output (None: as many as the model's positions allow).
        batch_size: sources decoded at once.
        limit: score only the first ``limit`` pairs (None or 0: all).
        max_source_len: sources longer than this many tokens are cut.
        keep_outputs: also return the decoded texts under ``"outputs"``.
        **options: passed on to :func:`attnkit.generation.translate.translate`.

    Returns:
        ``{"bleu", "chrf", "sentences", "seconds", "sentences_per_second"}`` (and
        ``"outputs"`` with ``keep_outputs=True``).

    Raises:
        TypeError: ``model`` is not an :class:`EncoderDecoder`.
        ValueError: no tokenizer given or carried by the model, or no pairs to score.

    Examples:
        >>> evaluate_translation(model, corpus.splits["test"], num_beams=4)["bleu"]
    """
    if not isinstance(model, EncoderDecoder):
        raise TypeError(f"model must be an attnkit EncoderDecoder, got {type(model).__name__}")
    tok = tokenizer if tokenizer is not None else model.meta.tokenizer
    if tok is None:
        raise ValueError("the model carries no tokenizer; pass tokenizer=")
    picked = _pairs(pairs, limit)
    t0 = time.perf_counter()
    hyps = translate(
        model,
        tok,
        [s for s, _ in picked],
        num_beams=num_beams,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        max_source_len=max_source_len,
        **options,
    )
    seconds = time.perf_counter() - t0
    scores: dict[str, Any] = dict(translation_scores(hyps, [t for _, t in picked]))
    scores.update(
        sentences=len(picked),
        seconds=round(seconds, 3),
        sentences_per_second=round(len(picked) / max(seconds, 1e-9), 3),
    )
    if keep_outputs:
        scores["outputs"] = hyps
    return scores
