"""The bag-of-words baseline a practitioner tries first: TF-IDF + logistic regression.

    >>> base = tfidf_baseline(train_texts, y_train, eval_texts, y_eval, labels)
    >>> base["macro_f1"]

Fitted on the training texts only (the vocabulary and the inverse document frequencies too),
scored on the evaluation texts with :func:`attnkit.tasks.classification.metrics.scores`, so its
numbers sit beside the fine-tuned model's and the majority baseline's.

The settings (:data:`TFIDF_SETTINGS`) are the usual first try, fixed, never tuned on the eval
set: word unigrams and bigrams (a token is 2+ word characters), sublinear term frequency
``1 + log(tf)``, smoothed idf, l2-normalised rows; scikit-learn's ``LogisticRegression``
(L2, ``C = 1``, lbfgs, multinomial) with balanced class weights ``N / (K * n_c)``, as the
fine-tuning loss weights its classes. scikit-learn is the optional extra ``[classic]``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from attnkit._util.optional import MissingDependency, require
from attnkit.tasks.classification.metrics import scores

__all__ = ["TFIDF_SETTINGS", "tfidf_baseline", "tfidf_or_none"]

logger = logging.getLogger(__name__)

TFIDF_SETTINGS: dict[str, Any] = {
    "ngram_range": (1, 2),
    "sublinear_tf": True,
    "min_df": 1,
    "C": 1.0,
    "class_weight": "balanced",
    "max_iter": 2000,
}


def tfidf_baseline(
    train_texts: Sequence[str],
    y_train: Sequence[int],
    eval_texts: Sequence[str],
    y_eval: Sequence[int],
    labels: Sequence[str],
    seed: int = 0,
) -> dict[str, Any]:
    """Scores on ``eval_texts`` of TF-IDF + logistic regression fitted on ``train_texts``
    (labels as class indices into ``labels``), plus ``"method"``, ``"settings"`` and
    ``"vocabulary"`` (the number of n-grams kept).

    Args:
        train_texts: the training texts.
        y_train: their class indices.
        eval_texts: the evaluation texts.
        y_eval: their class indices.
        labels: the class names, index = class.
        seed: the logistic regression's ``random_state``.

    Returns:
        The keys of :func:`~attnkit.tasks.classification.metrics.scores` (``accuracy``,
            ``macro_f1``, ``per_class``, ``confusion``) and the three above.

    Raises:
        ValueError: a text count differs from its label count, or the training labels hold
            fewer than 2 classes.
        attnkit._util.optional.MissingDependency: scikit-learn is not installed (the extra
            ``[classic]``).

    Examples:
        >>> base = tfidf_baseline(train_texts, y_train, eval_texts, y_eval, ["comedy", "tragedy"])
        >>> base["macro_f1"], base["vocabulary"]
    """
    if len(train_texts) != len(y_train) or len(eval_texts) != len(y_eval):
        raise ValueError(
            f"{len(train_texts)} training texts with {len(y_train)} labels and "
            f"{len(eval_texts)} eval texts with {len(y_eval)} labels; expected one label per text"
        )
    if len(set(y_train)) < 2:
        raise ValueError(
            f"the training labels hold {len(set(y_train))} class(es); expected at least 2"
        )
    text = require("sklearn.feature_extraction.text", "classic", "the TF-IDF baseline")
    linear = require("sklearn.linear_model", "classic", "the TF-IDF baseline")
    s = TFIDF_SETTINGS
    vectorizer = text.TfidfVectorizer(
        ngram_range=s["ngram_range"], sublinear_tf=s["sublinear_tf"], min_df=s["min_df"]
    )
    x_train = vectorizer.fit_transform(list(train_texts))
    x_eval = vectorizer.transform(list(eval_texts))
    clf = linear.LogisticRegression(
        C=s["C"], class_weight=s["class_weight"], max_iter=s["max_iter"], random_state=seed
    )
    clf.fit(x_train, list(y_train))
    # predict() gives the classes seen in training; map back to indices into labels
    y_pred = [int(c) for c in clf.predict(x_eval)]
    out = scores(list(y_eval), y_pred, labels)
    out["method"] = "TF-IDF (word 1-2 grams, sublinear tf) + logistic regression"
    out["settings"] = {k: list(v) if isinstance(v, tuple) else v for k, v in s.items()}
    out["vocabulary"] = len(vectorizer.vocabulary_)
    return out


def tfidf_or_none(
    train_texts: Sequence[str],
    y_train: Sequence[int],
    eval_texts: Sequence[str],
    y_eval: Sequence[int],
    labels: Sequence[str],
    seed: int = 0,
) -> dict[str, Any] | None:
    """:func:`tfidf_baseline`, or None with one warning naming the extra when scikit-learn is
    not installed (the fine-tuned and majority scores are still reported).

    The arguments are :func:`tfidf_baseline`'s; its ValueErrors are raised as they are.

    Examples:
        >>> base = tfidf_or_none(train_texts, y_train, eval_texts, y_eval, labels)  # or None
    """
    try:
        return tfidf_baseline(train_texts, y_train, eval_texts, y_eval, labels, seed)
    except MissingDependency as e:
        logger.warning("no TF-IDF baseline: %s", e)
        return None
