"""A classifier's scores on a labelled file: accuracy, macro-F1, per-class scores and the
confusion matrix (rows = true class, columns = predicted class, in the order of the model's
labels), all from :func:`attnkit.tasks.classification.metrics.scores`; beside them, when the
training texts are known, the majority-class and TF-IDF + logistic-regression baselines
fitted on them (:mod:`attnkit.tasks.classification.baseline`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from attnkit._util import checks
from attnkit.models.common import ModelBase
from attnkit.tasks.classification.baseline import tfidf_or_none
from attnkit.tasks.classification.data import LabelledTexts, as_examples
from attnkit.tasks.classification.metrics import majority_baseline, scores
from attnkit.tasks.classification.model import Classifier

__all__ = ["evaluate_classifier", "training_texts"]

Data = LabelledTexts | str | os.PathLike[str]


def training_texts(clf: Classifier) -> LabelledTexts | None:
    """The training file a checkpoint written by ``finetune`` names in ``meta.finetune``
    (read with its columns), or None when it names none or the file is not there.

    Args:
        clf: a loaded classifier; its ``model.meta.finetune`` is read.

    Examples:
        >>> training_texts(Classifier("runs/clf")).source
    """
    info = clf.model.meta.finetune or {}
    source = info.get("train")
    if not source or str(source).startswith("<") or not Path(source).is_file():
        return None
    return as_examples(
        source, info.get("text_column", "text"), info.get("label_column", "label"), "train"
    )


def evaluate_classifier(
    model: ModelBase | str | os.PathLike[str] | Classifier,
    data: Data,
    text_column: str = "text",
    label_column: str = "label",
    batch_size: int = 32,
    train: Data | None = None,
) -> dict[str, Any]:
    """Scores of a classification checkpoint (or a loaded :class:`Classifier`) on ``data``
    (a CSV/TSV/JSONL file or :class:`LabelledTexts`): ``{"examples", "labels", "accuracy",
    "macro_f1", "per_class", "confusion", "majority_baseline", "tfidf_baseline", "train"}``.
    The baselines are fitted on ``train`` (default: the training file the checkpoint names,
    :func:`training_texts`); None when there is none (or, for TF-IDF, no scikit-learn).

    Args:
        model: a checkpoint directory or name, a loaded model, or a :class:`Classifier`.
        data: the labelled texts to score.
        text_column: the column (or key) holding the texts.
        label_column: the column (or key) holding the labels.
        batch_size: texts classified at once.
        train: the texts the baselines are fitted on (default: :func:`training_texts`).

    Raises:
        ValueError: ``data`` or ``train`` holds a label the model does not know (named with
            the model's labels), or ``batch_size`` < 1.

    Examples:
        >>> evaluate_classifier("runs/clf", "test.csv")["macro_f1"]
    """
    checks.positive_int("batch_size", batch_size)
    clf = model if isinstance(model, Classifier) else Classifier(model)
    examples = as_examples(data, text_column, label_column)
    index = {name: i for i, name in enumerate(clf.labels)}
    unknown = sorted(set(examples.labels) - set(index))
    if unknown:
        raise ValueError(
            f"{examples.source}: labels {unknown} are not among the model's labels "
            f"{clf.labels}; expected the labels the model was fine-tuned on"
        )
    y_true = [index[y] for y in examples.labels]
    y_pred = clf.predict_proba(examples.texts, batch_size).argmax(axis=1).tolist()
    out: dict[str, Any] = {
        "examples": len(examples),
        "labels": list(clf.labels),
        **scores(y_true, y_pred, clf.labels),
        "majority_baseline": None,
        "tfidf_baseline": None,
        "train": None,
    }
    fitted_on = (
        training_texts(clf) if train is None else as_examples(train, text_column, label_column)
    )
    if fitted_on is not None:
        strange = sorted(set(fitted_on.labels) - set(index))
        if strange:
            raise ValueError(
                f"{fitted_on.source}: labels {strange} are not among the model's labels "
                f"{clf.labels}; expected the training file of this model"
            )
        y_fit = [index[y] for y in fitted_on.labels]
        out["train"] = fitted_on.source
        out["majority_baseline"] = majority_baseline(y_fit, y_true, clf.labels)
        out["tfidf_baseline"] = tfidf_or_none(
            fitted_on.texts, y_fit, examples.texts, y_true, clf.labels
        )
    return out
