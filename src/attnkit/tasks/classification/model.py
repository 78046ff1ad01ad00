"""Classification models: a BERT-family encoder with a classification head, and predictions.

* :func:`classifier_from`: any attnkit or Hugging Face BERT-family checkpoint, or ``"minilm"``,
  with a new classification head (dropout + linear) on a pooled vector. The pooling is
  :func:`attnkit.text.pooling.resolve_pooling`'s (``for_classifier``): the checkpoint's pooler
  for a Hugging Face BERT (as ``BertForSequenceClassification``), else ``config.pooling``
  (mean for MiniLM). A checkpoint that already classifies the same labels keeps its head.
* The class names are the config's ``id2label``; how the model was fine-tuned is
  ``model.meta.finetune`` and the length it was trained with ``model.meta.max_length``.
* :class:`Classifier` and :func:`predict`: labels and class probabilities of texts, in
  length-sorted padded batches (:mod:`attnkit.text.batching`), returned in the input order.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from attnkit.models.bert import Bert
from attnkit.models.common import ModelBase
from attnkit.text.batching import Batch, map_batches
from attnkit.text.inputs import check_texts
from attnkit.text.pooling import resolve_pooling
from attnkit.text.tokenizers import encode_texts, pad_token_id
from attnkit.training import precision

__all__ = [
    "Classifier",
    "Prediction",
    "class_logits",
    "classifier_from",
    "load_bert",
    "model_labels",
    "predict",
]


def load_bert(model: ModelBase | str | os.PathLike[str], what: str = "classification") -> Bert:
    """``model`` itself, or the checkpoint it names, as a BERT-family model with a tokenizer.

    Args:
        model: a loaded attnkit model, a checkpoint directory or a known name ("minilm").
        what: what needs the model, for the error message.

    Raises:
        ValueError: ``model`` is not a model or a checkpoint, not BERT-family, or has no
            tokenizer.

    Examples:
        >>> load_bert("minilm").config.arch
        'bert'
    """
    if isinstance(model, (str, os.PathLike)):
        from attnkit.checkpoints import load

        model = load(model)
    if not isinstance(model, ModelBase):
        raise ValueError(
            f"model must be a checkpoint directory, a known name such as 'minilm' or a "
            f"loaded attnkit model, got {type(model).__name__}"
        )
    if not isinstance(model, Bert):
        raise ValueError(
            f"{what} needs a BERT-family model (config.arch='bert'), got {model.config.arch!r}"
        )
    if model.meta.tokenizer is None:
        raise ValueError(
            "the model has no tokenizer (tokenizer.json or vocab.txt); expected a "
            "checkpoint directory with one"
        )
    return model


def classifier_from(
    model: ModelBase | str | os.PathLike[str],
    labels: Sequence[str],
    pooling: str | None = None,
    dropout: float | None = None,
) -> Bert:
    """A BERT-family model with a classification head for ``labels`` (``config.id2label``).

    The encoder (and the pooler, when it is used) come from ``model``; the head is new, unless
    ``model`` already classifies exactly these labels with this pooling. ``pooling``: "pooler"
    (dense + tanh on the first token), "mean" or "cls"; default as the module docstring says.
    The new model carries ``model.meta`` (tokenizer, source, length).

    Args:
        model: a loaded BERT-family model, a checkpoint directory or ``"minilm"``.
        labels: the class names, two or more, distinct (turned into strings).
        pooling: "pooler", "mean" or "cls"; None: the rule of
            :func:`~attnkit.text.pooling.resolve_pooling`.
        dropout: the new config's dropout (None: the checkpoint's).

    Raises:
        ValueError: fewer than 2 or repeated labels, "pooler" on a checkpoint without one,
            an unknown pooling, or weights that do not fit the new model.

    Examples:
        >>> net = classifier_from("minilm", ["comedy", "history", "tragedy"])
        >>> net.config.num_labels, net.config.pooling
        (3, 'mean')
    """
    from attnkit.models import build_model

    base = load_bert(model, "fine-tuning for classification")
    cfg = base.config
    names = [str(x) for x in labels]
    if len(names) < 2 or len(set(names)) != len(names):
        raise ValueError(f"labels must be 2 or more distinct names, got {names}")
    current = resolve_pooling(base, for_classifier=True)
    pooling = resolve_pooling(base, pooling, for_classifier=True)
    if pooling == "pooler" and not cfg.pooler:
        raise ValueError(
            "pooling 'pooler' needs a checkpoint with a pooler (dense + tanh); this "
            "one has none; expected 'mean' or 'cls'"
        )
    if (
        cfg.head == "classification"
        and list(cfg.id2label or ()) == names
        and current == pooling
        and dropout is None
    ):
        return base
    new_cfg = cfg.replace(
        head="classification",
        num_labels=len(names),
        id2label=tuple(names),
        pooler=pooling == "pooler",
        pooling=cfg.pooling if pooling == "pooler" else pooling,
        **({} if dropout is None else {"dropout": dropout}),
    )
    new = build_model(new_cfg)
    assert isinstance(new, Bert)
    drop = ("mlm.", "classifier.") + (() if pooling == "pooler" else ("pooler.",))
    state = {k: v for k, v in base.state_dict().items() if not k.startswith(drop)}
    result = new.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith("classifier.")]
    if missing or result.unexpected_keys:
        raise ValueError(
            f"cannot move the encoder into a classifier: missing {missing}, "
            f"unexpected {result.unexpected_keys}"
        )
    new.meta = base.meta
    return new.to(next(base.parameters()).device)


def model_labels(model: ModelBase) -> list[str]:
    """The class names of a classification model: its ``config.id2label``, else
    ``LABEL_<i>``.

    Raises:
        ValueError: the model has no classification head.

    Examples:
        >>> model_labels(classifier_from("minilm", ["comedy", "tragedy"]))
        ['comedy', 'tragedy']
    """
    cfg = model.config
    if cfg.head != "classification":
        raise ValueError(
            f"model {model.meta.source or type(model).__name__!r} has no classification head "
            f"(config.head={cfg.head!r}); expected a checkpoint written by finetune"
        )
    if cfg.id2label is not None:
        return list(cfg.id2label)
    return [f"LABEL_{i}" for i in range(cfg.num_labels)]


def forward_logits(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """(B, K) class logits of one padded batch (``model`` may be wrapped, e.g. by DDP)."""
    return model(batch.ids, attention_mask=batch.attention_mask).logits  # (B, K)


@torch.no_grad()
def class_logits(
    model: Bert,
    ids_list: Sequence[Sequence[int]],
    batch_size: int,
    pad_id: int,
    dtype: str = "float32",
) -> torch.Tensor:
    """(N, K) float32 logits on the CPU in the input order: length-sorted batches, eval mode,
    the forward pass under ``dtype`` autocast.

    The model's training mode is restored afterwards.

    Args:
        model: a classification model.
        ids_list: the token ids of each of the N texts.
        batch_size: texts per forward pass.
        pad_id: the padding id.
        dtype: "float32", "bfloat16" or "float16".

    Examples:
        >>> class_logits(net, encode_texts(tok, ["To be", "Exeunt"], 128), 32, pad_id=0).shape
        torch.Size([2, 3])
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:

        def run(batch: Batch) -> torch.Tensor:
            with precision.autocast(device, dtype):
                return forward_logits(model, batch).float()  # (B, K)

        return map_batches(ids_list, batch_size, run, pad_id, device=device).cpu()
    finally:
        model.train(was_training)


@dataclass
class Prediction:
    """The prediction for one text: the most probable ``label`` and the ``probabilities`` of
    every class (name -> probability, in the order of the model's labels, summing to 1).

    Examples:
        >>> Prediction("tragedy", {"comedy": 0.2, "tragedy": 0.8}).label
        'tragedy'
    """

    label: str
    probabilities: dict[str, float]


class Classifier:
    """A loaded classification checkpoint: ``predict`` and ``predict_proba`` on texts.

    ``labels`` are its class names; texts are cut at ``max_length`` tokens (default: the
    length it was fine-tuned with, else ``config.max_seq_len``, never more than that).

    Args:
        model: a classification checkpoint directory or a loaded classification model.
        max_length: tokens kept per text.

    Raises:
        ValueError: ``model`` is not a BERT-family classification model with a tokenizer.

    Examples:
        >>> clf = Classifier("runs/clf")  # a directory written by finetune
        >>> clf.labels
        ['comedy', 'history', 'tragedy']
    """

    def __init__(
        self, model: ModelBase | str | os.PathLike[str], max_length: int | None = None
    ) -> None:
        self.model = load_bert(model, "Classifier").eval()
        self.labels = model_labels(self.model)
        tok = self.model.meta.tokenizer
        if tok is None:  # load_bert checked; for the type checker
            raise ValueError("the classification checkpoint has no tokenizer")
        self.tokenizer = tok
        limit = self.model.config.max_seq_len
        self.max_length = min(max_length or self.model.meta.max_length or limit, limit)
        self.pad_id = pad_token_id(tok, self.model.config.pad_token_id)

    def predict_proba(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """(N, K) class probabilities, columns in the order of ``self.labels``.

        Args:
            texts: the N texts (an empty list gives a (0, K) array).
            batch_size: texts per forward pass.

        Raises:
            ValueError: an item is not a string.

        Examples:
            >>> clf.predict_proba(["To be, or not to be", "Exeunt"]).shape  # 3 classes
            (2, 3)
        """
        items = check_texts(texts)
        if not items:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        ids = encode_texts(self.tokenizer, items, self.max_length)
        logits = class_logits(self.model, ids, batch_size, self.pad_id)
        return torch.softmax(logits, dim=-1).numpy()

    def predict(self, texts: str | Sequence[str], batch_size: int = 32) -> list[Prediction]:
        """One :class:`Prediction` per text (a single string counts as one text), in order.

        Examples:
            >>> [p.label for p in clf.predict(["To be, or not to be", "Exeunt"])]  # one per text
        """
        items = [texts] if isinstance(texts, str) else list(texts)
        probs = self.predict_proba(items, batch_size)
        return [
            Prediction(
                self.labels[int(p.argmax())], {name: float(v) for name, v in zip(self.labels, p)}
            )
            for p in probs
        ]


def predict(
    model: ModelBase | str | os.PathLike[str], texts: str | Sequence[str], batch_size: int = 32
) -> list[Prediction]:
    """Label and class probabilities of each text with a classification checkpoint (a
    directory written by :func:`~attnkit.tasks.classification.finetune`, a Hugging Face
    BertForSequenceClassification directory or a loaded model).

    The same as ``Classifier(model).predict(texts, batch_size)``.

    Examples:
        >>> predict("runs/clf", ["To be, or not to be"])[0].probabilities  # label -> probability
    """
    return Classifier(model).predict(texts, batch_size)
