"""Classification scores from the confusion matrix, and its plot.

The confusion matrix has rows = true class, columns = predicted class. accuracy = trace /
total; per class precision = TP / (TP + FP), recall = TP / (TP + FN), F1 = 2 TP / (2 TP + FP +
FN) (0 when the class is never true nor predicted); macro-F1 is the unweighted mean of the
per-class F1 over all classes.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "accuracy",
    "confusion_matrix",
    "macro_f1",
    "majority_baseline",
    "per_class_scores",
    "plot_confusion",
    "scores",
]


def _check_pairs(
    y_true: Sequence[int], y_pred: Sequence[int], num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    t = np.asarray(y_true, dtype=np.int64).reshape(-1)
    p = np.asarray(y_pred, dtype=np.int64).reshape(-1)
    if t.shape != p.shape:
        raise ValueError(f"y_true has {t.size} items and y_pred {p.size}; expected the same number")
    for name, a in (("y_true", t), ("y_pred", p)):
        if a.size and (a.min() < 0 or a.max() >= num_classes):
            bad = a.min() if a.min() < 0 else a.max()
            raise ValueError(
                f"{name} holds class {int(bad)}; expected classes in 0..{num_classes - 1}"
            )
    return t, p


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int) -> np.ndarray:
    """(K, K) counts: row = true class, column = predicted class.

    Args:
        y_true: the true class of each item, in 0..num_classes - 1.
        y_pred: the predicted class of each item.
        num_classes: K.

    Raises:
        ValueError: the two lists differ in length, or a class is out of range.

    Examples:
        >>> confusion_matrix([0, 1, 1], [0, 1, 0], num_classes=2).tolist()
        [[1, 0], [1, 1]]
    """
    t, p = _check_pairs(y_true, y_pred, num_classes)
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (t, p), 1)
    return cm


def accuracy(y_true: Sequence[int], y_pred: Sequence[int]) -> float:
    """The share of items whose prediction equals the true label.

    Raises:
        ValueError: the two lists differ in length or are empty.

    Examples:
        >>> accuracy([0, 1, 1], [0, 1, 0])
        0.6666666666666666
    """
    t = np.asarray(y_true).reshape(-1)
    p = np.asarray(y_pred).reshape(-1)
    if t.shape != p.shape or t.size == 0:
        raise ValueError(
            f"accuracy needs two equally long, non-empty label lists; got {t.size} "
            f"and {p.size} items"
        )
    return float((t == p).mean())


def per_class_scores(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Precision, recall, F1 and support per class from a confusion matrix (0 where a ratio has
    a zero denominator).

    Args:
        cm: a (K, K) confusion matrix, row = true class.

    Returns:
        ``"precision"``, ``"recall"``, ``"f1"`` and ``"support"`` (true items per class), each
            a float array of shape (K,).

    Examples:
        >>> per_class_scores(confusion_matrix([0, 1, 1], [0, 1, 0], 2))["recall"].tolist()
        [1.0, 0.5]
    """
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    fp = cm.sum(axis=0) - tp
    fn = cm.sum(axis=1) - tp

    def ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.divide(a, b, out=np.zeros_like(a), where=b > 0)

    return {
        "precision": ratio(tp, tp + fp),
        "recall": ratio(tp, tp + fn),
        "f1": ratio(2 * tp, 2 * tp + fp + fn),
        "support": cm.sum(axis=1),
    }


def macro_f1(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int) -> float:
    """The unweighted mean over all ``num_classes`` classes of F1 = 2TP / (2TP + FP + FN).

    Examples:
        >>> macro_f1([0, 1, 1], [0, 1, 0], num_classes=2)
        0.6666666666666666
    """
    return float(per_class_scores(confusion_matrix(y_true, y_pred, num_classes))["f1"].mean())


def scores(y_true: Sequence[int], y_pred: Sequence[int], labels: Sequence[str]) -> dict[str, Any]:
    """accuracy, macro_f1, per-class precision/recall/F1/support and the confusion matrix.

    Args:
        y_true: the true class of each item.
        y_pred: the predicted class of each item.
        labels: the class names, index = class.

    Returns:
        ``{"accuracy", "macro_f1", "per_class", "confusion"}``: ``per_class`` maps each name
            to its four scores, ``confusion`` is the matrix as nested lists (JSON-ready).

    Examples:
        >>> scores([0, 1, 1], [0, 1, 0], ["comedy", "tragedy"])["per_class"]["tragedy"]["recall"]
        0.5
    """
    cm = confusion_matrix(y_true, y_pred, len(labels))
    per = per_class_scores(cm)
    return {
        "accuracy": accuracy(y_true, y_pred),
        "macro_f1": float(per["f1"].mean()),
        "per_class": {
            name: {k: float(per[k][i]) for k in ("precision", "recall", "f1", "support")}
            for i, name in enumerate(labels)
        },
        "confusion": cm.tolist(),
    }


def majority_baseline(
    y_train: Sequence[int], y_eval: Sequence[int], labels: Sequence[str]
) -> dict[str, Any]:
    """Scores of always predicting the most frequent training class (lowest index on a tie).

    The keys of :func:`scores` on ``y_eval``, and ``"predicts"``: the class name predicted.

    Examples:
        >>> majority_baseline([0, 1, 1], [0, 0, 1], ["comedy", "tragedy"])["predicts"]
        'tragedy'
    """
    counts = np.bincount(np.asarray(y_train, dtype=np.int64), minlength=len(labels))
    majority = int(np.argmax(counts))
    out = scores(y_eval, [majority] * len(y_eval), labels)
    out["predicts"] = labels[majority]
    return out


def plot_confusion(
    cm: np.ndarray,
    labels: Sequence[str],
    path: str | os.PathLike[str],
    title: str = "confusion matrix",
) -> Path:
    """A PNG heatmap of the confusion matrix with the counts written in (matplotlib's object
    API on the Agg canvas; :class:`~attnkit._util.optional.MissingDependency` without it).

    Each cell is shaded by its share of the row (the true class) and labelled with its count.

    Args:
        cm: a (K, K) confusion matrix, row = true class.
        labels: the K class names.
        path: the PNG file to write (atomically).
        title: the plot's title.

    Returns:
        The path written.

    Examples:
        >>> plot_confusion(confusion_matrix([0, 1, 1], [0, 1, 0], 2), ["a", "b"], "cm.png")
        PosixPath('cm.png')
    """
    from attnkit._util.fs import atomic_write
    from attnkit._util.optional import figure

    cm = np.asarray(cm)
    k = len(labels)
    fig = figure(1.2 * k + 2.5, 1.1 * k + 2)
    ax = fig.add_subplot()
    rows = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=float), where=rows > 0)
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(k):
        for j in range(k):
            ax.text(
                j,
                i,
                str(int(cm[i, j])),
                ha="center",
                va="center",
                color="white" if share[i, j] > 0.5 else "black",
            )
    ax.set_xticks(range(k), labels, rotation=30, ha="right")
    ax.set_yticks(range(k), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    return atomic_write(Path(path), lambda tmp: fig.savefig(tmp, format="png", dpi=110))
