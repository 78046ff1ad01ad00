"""A classifier's scores on a labelled file: accuracy, macro-F1, per-class scores and the
confusion matrix (rows = true class, columns = predicted class, in the order of the model's
labels), all from :func:`attnkit.tasks.classification.metrics.scores`."""

from __future__ import annotations

import os
from typing import Any

from attnkit._util import checks
from attnkit.models.common import ModelBase
from attnkit.tasks.classification.data import LabelledTexts, as_examples
from attnkit.tasks.classification.metrics import scores
from attnkit.tasks.classification.model import Classifier

__all__ = ["evaluate_classifier"]


def evaluate_classifier(
    model: ModelBase | str | os.PathLike[str] | Classifier,
    data: LabelledTexts | str | os.PathLike[str],
    text_column: str = "text",
    label_column: str = "label",
    batch_size: int = 32,
) -> dict[str, Any]:
    """Scores of a classification checkpoint (or a loaded :class:`Classifier`) on ``data``
    (a CSV/TSV/JSONL file or :class:`LabelledTexts`): ``{"examples", "labels", "accuracy",
    "macro_f1", "per_class", "confusion"}``. A label of ``data`` that the model does not
    know is a ValueError naming it and the model's labels."""
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
    return {
        "examples": len(examples),
        "labels": list(clf.labels),
        **scores(y_true, y_pred, clf.labels),
    }
