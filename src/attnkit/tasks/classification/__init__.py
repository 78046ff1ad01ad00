"""Fine-tuning BERT-family models for sequence classification, its metrics and predictions.

    >>> from attnkit.tasks.classification import finetune, predict
    >>> result = finetune("minilm", "train.csv", "eval.csv", out="runs/clf")
    >>> result.best["macro_f1"], result.baseline["macro_f1"]
    >>> predict("runs/clf", ["To be, or not to be"])[0].label

One module per job: :mod:`~attnkit.tasks.classification.data` (reading CSV/TSV/JSONL,
:class:`LabelledTexts`, label names), :mod:`~attnkit.tasks.classification.metrics` (accuracy,
macro-F1, per-class scores, the confusion matrix and its plot),
:mod:`~attnkit.tasks.classification.model` (building a classifier, :class:`Classifier` for
predictions), :mod:`~attnkit.tasks.classification.finetune` (:class:`FinetuneConfig`,
:func:`finetune`, on the optimizer, schedule, precision and torchrun helpers of
:mod:`attnkit.training`), :mod:`~attnkit.tasks.classification.head` (training the head on a
frozen encoder) and :mod:`~attnkit.tasks.classification.baseline` (TF-IDF + logistic
regression). Batching is :mod:`attnkit.text.batching`'s.
"""

from attnkit.tasks.classification.baseline import tfidf_baseline
from attnkit.tasks.classification.data import (
    LabelledTexts,
    as_examples,
    label_names,
    read_examples,
)
from attnkit.tasks.classification.finetune import (
    METRICS,
    FinetuneConfig,
    FinetuneResult,
    class_weights,
    finetune,
    save_result,
)
from attnkit.tasks.classification.metrics import (
    accuracy,
    confusion_matrix,
    macro_f1,
    majority_baseline,
    per_class_scores,
    plot_confusion,
    scores,
)
from attnkit.tasks.classification.model import (
    Classifier,
    Prediction,
    class_logits,
    classifier_from,
    model_labels,
    predict,
)

__all__ = [
    "METRICS",
    "Classifier",
    "FinetuneConfig",
    "FinetuneResult",
    "LabelledTexts",
    "Prediction",
    "accuracy",
    "as_examples",
    "class_logits",
    "class_weights",
    "classifier_from",
    "confusion_matrix",
    "finetune",
    "label_names",
    "macro_f1",
    "majority_baseline",
    "model_labels",
    "per_class_scores",
    "plot_confusion",
    "predict",
    "read_examples",
    "save_result",
    "scores",
    "tfidf_baseline",
]
