"""Which pooling a model's text vector uses: the one rule, for embeddings, classification and
attention surgery.

The pooling functions themselves are :data:`attnkit.models.heads.POOLERS` ("mean": the mean of
the real tokens' hidden states, "cls": the first token's). A classifier has one more choice,
"pooler": BERT's dense + tanh on the first token (``config.pooler``).

:func:`resolve_pooling` decides, in this order:

1. an explicit ``pooling`` argument (checked against the choices);
2. for a classification head (``for_classifier=True``), of a classifier
   (``config.head == "classification"``): "pooler" when it has one, else ``config.pooling``,
   as its forward pass does;
3. for a new classification head on another model: "pooler" when the checkpoint has a
   pooler and pools by the first token (a Hugging Face BERT, as
   ``BertForSequenceClassification``), else ``config.pooling`` (a sentence-transformers model
   keeps its mean pooling);
4. otherwise ``config.pooling``, the rule the loader declared for the model.
"""

from __future__ import annotations

from attnkit._util import checks
from attnkit.models.common import ModelBase
from attnkit.models.heads import POOLERS

__all__ = ["CLASSIFIER_POOLINGS", "resolve_pooling"]

CLASSIFIER_POOLINGS = ("pooler", *sorted(POOLERS))


def resolve_pooling(
    model: ModelBase, pooling: str | None = None, *, for_classifier: bool = False
) -> str:
    """The pooling ``model`` uses (see the module docstring): a key of ``POOLERS``, or also
    "pooler" when ``for_classifier``.

    Args:
        model: an attnkit model; its ``config`` holds ``pooling``, ``pooler`` and ``head``.
        pooling: an explicit choice, checked and returned as it is (None: the rule).
        for_classifier: the pooling of a classification head, which may be "pooler".

    Raises:
        ValueError: ``pooling`` (or the config's) is not one of the choices.

    Examples:
        >>> resolve_pooling(attnkit.load("minilm"), for_classifier=True)
        'mean'
    """
    cfg = model.config
    if pooling is not None:
        options = CLASSIFIER_POOLINGS if for_classifier else tuple(sorted(POOLERS))
        return checks.choice("pooling", pooling, options)
    if for_classifier:
        if cfg.head == "classification":
            return "pooler" if cfg.pooler else cfg.pooling
        if cfg.pooler and cfg.pooling == "cls":
            return "pooler"
    return checks.choice("config.pooling", cfg.pooling, tuple(sorted(POOLERS)))
