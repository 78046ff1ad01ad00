"""Corpus BLEU and chrF of translations against references, computed by ``sacrebleu``.

    >>> translation_scores(["the cat sat"], ["the cat sat down"])
    {'bleu': ..., 'chrf': ...}

The scores are sacrebleu's defaults (BLEU: 13a tokenisation, exponential smoothing; chrF:
character 6-grams, beta 2), on 0-100 scales. It lives among the text helpers because the
training loop reports it at each evaluation and ``attnkit.evaluation`` sits above training.
"""

from __future__ import annotations

from collections.abc import Sequence

from attnkit._util.optional import require

__all__ = ["translation_scores"]


def translation_scores(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """``{"bleu", "chrf"}`` of ``hypotheses`` against one reference each (sacrebleu).

    Args:
        hypotheses: the translations, one string each.
        references: one reference per hypothesis, in the same order.

    Raises:
        ValueError: the two lists differ in length or are empty.
        attnkit._util.optional.MissingDependency: sacrebleu is not installed (the extra
            ``[seq2seq]``).

    Examples:
        >>> translation_scores(["the cat sat on the mat"], ["the cat sat on the mat"])["chrf"]
        100.0
    """
    if len(hypotheses) != len(references):
        raise ValueError(
            f"{len(hypotheses)} hypotheses and {len(references)} references; expected one "
            f"reference per hypothesis"
        )
    if not hypotheses:
        raise ValueError("no hypotheses to score; expected at least one")
    sacrebleu = require("sacrebleu", "seq2seq", "BLEU and chrF")
    refs = [list(references)]
    return {
        "bleu": float(sacrebleu.corpus_bleu(list(hypotheses), refs).score),
        "chrf": float(sacrebleu.corpus_chrf(list(hypotheses), refs).score),
    }
