"""Fine-tuning BERT-family models for sequence classification, its metrics and predictions.

    >>> from attnkit.tasks.classification import finetune, predict
    >>> result = finetune("minilm", "train.csv", "eval.csv", out="runs/clf")
    >>> result.best["macro_f1"], result.baseline["macro_f1"]
    >>> predict("runs/clf", ["To be, or not to be"])[0].label

* **Data**: CSV (``.csv``, ``.tsv``) or JSON lines (``.jsonl``, ``.ndjson``) in UTF-8, with a
  text column and a label column (:func:`read_examples`). A missing column, an empty text or
  label, a file that is not UTF-8 or a training set with one class only is a ``ValueError``
  naming the file, the row and what was expected. Labels are strings; the classes are the
  training labels, sorted (numerically when they are all integers).
* **Model**: any attnkit or Hugging Face BERT-family checkpoint, or ``"minilm"``
  (:func:`classifier_from`). The encoder is kept and a new classification head (dropout +
  linear) is put on a pooled vector: the pooling of a sentence-transformers model (mean for
  MiniLM), else the checkpoint's pooler (as ``BertForSequenceClassification``), else its
  ``config.pooling``. A checkpoint that already classifies the same labels keeps its head.
* **Training**: AdamW (weight decay on matrices only), linear warm-up then linear decay,
  gradient clipping, cross-entropy with class weights ``w_c = N / (K * n_c)`` (:func:`class_weights`:
  N training rows, K classes, n_c rows of class c; 1 for every class of a balanced set, so the
  loss counts each class as much in total). Batches are length-sorted with dynamic padding
  (:func:`length_batches`): texts of about the same token count go together and are padded
  only to the longest of their batch; a batch without padding runs with no mask.
* **Early stopping**: the eval set is scored after every epoch (or every ``eval_every``
  steps); the best state by ``metric`` (macro-F1, accuracy or eval loss) is kept, and training
  stops after ``patience`` evaluations without improvement.
* **Outputs** in ``out``: the best model as an attnkit checkpoint (``config.json`` holds the
  label names), ``metrics.json`` (every evaluation, the best scores, the majority-class
  baseline, the class weights) and ``confusion.png``.

Metrics are computed here, from the confusion matrix (rows: true class, columns: predicted):
accuracy = trace / total; per class precision = TP / (TP + FP), recall = TP / (TP + FN),
F1 = 2 TP / (2 TP + FP + FN) (0 when the class is never true nor predicted); macro-F1 is the
unweighted mean of the per-class F1 over all classes.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

METRICS = ("macro_f1", "accuracy", "loss")
POOLINGS = ("pooler", "mean", "cls")
_CSV_SUFFIXES = {".csv": ",", ".tsv": "\t"}
_JSONL_SUFFIXES = (".jsonl", ".ndjson")


# --------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------
@dataclass
class LabelledTexts:
    """Texts and their labels (strings), with where they came from."""

    texts: list[str]
    labels: list[str]
    source: str = "<memory>"

    def __post_init__(self) -> None:
        if len(self.texts) != len(self.labels):
            raise ValueError(
                f"{self.source}: {len(self.texts)} texts but {len(self.labels)} "
                f"labels; expected one label per text"
            )
        for i, (t, y) in enumerate(zip(self.texts, self.labels)):
            if not isinstance(t, str) or not t.strip():
                raise ValueError(f"{self.source}: text {i} is {t!r}; expected a non-empty string")
            if not isinstance(y, str) or not y.strip():
                raise ValueError(f"{self.source}: label {i} is {y!r}; expected a non-empty string")

    def __len__(self) -> int:
        return len(self.texts)


def _decode(path: Path) -> str:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file; expected a CSV or JSONL file") from None
    except IsADirectoryError:
        raise ValueError(f"{path}: is a directory; expected a CSV or JSONL file") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ValueError(
            f"{path}: not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}); "
            f"expected a UTF-8 encoded file"
        ) from None


def _cell(value: Any, path: Path, where: str, column: str, what: str) -> str:
    if value is None:
        value = ""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(
            f"{path}:{where}: {what} in column {column!r} is a "
            f"{type(value).__name__}; expected a string"
        )
    text = str(value).strip()
    if not text:
        raise ValueError(
            f"{path}:{where}: empty {what} in column {column!r}; expected a {what} on every row"
        )
    return text


def read_examples(
    path: str | os.PathLike, text_column: str = "text", label_column: str = "label"
) -> LabelledTexts:
    """Texts and labels from a UTF-8 CSV/TSV file (with a header row) or a JSON-lines file."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in _CSV_SUFFIXES and suffix not in _JSONL_SUFFIXES:
        raise ValueError(
            f"{path}: suffix {path.suffix!r} is not supported; expected one of "
            f"{sorted([*_CSV_SUFFIXES, *_JSONL_SUFFIXES])}"
        )
    content = _decode(path)
    texts: list[str] = []
    labels: list[str] = []
    if suffix in _CSV_SUFFIXES:
        reader = csv.DictReader(io.StringIO(content, newline=""), delimiter=_CSV_SUFFIXES[suffix])
        columns = reader.fieldnames or []
        for col in (text_column, label_column):
            if col not in columns:
                raise ValueError(
                    f"{path}: no column {col!r}; expected one of its columns {columns}"
                )
        try:
            for row in reader:
                where = f"line {reader.line_num}"
                if not any((v or "").strip() for v in row.values() if isinstance(v, str)):
                    continue  # a blank line
                texts.append(_cell(row.get(text_column), path, where, text_column, "text"))
                labels.append(_cell(row.get(label_column), path, where, label_column, "label"))
        except csv.Error as e:
            raise ValueError(f"{path}: line {reader.line_num}: not valid CSV ({e})") from None
    else:
        seen_columns: set[str] = set()
        for n, line in enumerate(content.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(
                    f"{path}:line {n}: not valid JSON ({e.msg}); expected one object per line"
                ) from None
            if not isinstance(obj, dict):
                raise ValueError(
                    f"{path}:line {n}: a JSON {type(obj).__name__}; expected an "
                    f"object with {text_column!r} and {label_column!r}"
                )
            seen_columns |= set(obj)
            for col in (text_column, label_column):
                if col not in obj:
                    raise ValueError(
                        f"{path}:line {n}: no column {col!r}; expected one of its "
                        f"keys {sorted(obj)}"
                    )
            texts.append(_cell(obj[text_column], path, f"line {n}", text_column, "text"))
            labels.append(_cell(obj[label_column], path, f"line {n}", label_column, "label"))
    if not texts:
        raise ValueError(
            f"{path}: holds no rows; expected a {text_column!r} and a {label_column!r} on each row"
        )
    return LabelledTexts(texts, labels, str(path))


def _as_examples(data: Any, text_column: str, label_column: str, name: str) -> LabelledTexts:
    if isinstance(data, LabelledTexts):
        return data
    if isinstance(data, (str, os.PathLike)):
        return read_examples(data, text_column, label_column)
    if isinstance(data, tuple) and len(data) == 2:
        return LabelledTexts(list(data[0]), [str(y) for y in data[1]], f"<{name}>")
    raise ValueError(
        f"{name} must be a file path, a LabelledTexts or a (texts, labels) pair, "
        f"got {type(data).__name__}"
    )


def label_names(labels: Sequence[str]) -> list[str]:
    """The classes of a label column: sorted, numerically when every label is an integer."""
    names = sorted(set(labels))
    try:
        return sorted(names, key=int)
    except ValueError:
        return names


def class_weights(y: Sequence[int], num_classes: int) -> torch.Tensor:
    """Weights ``w_c = N / (K * n_c)`` for the cross-entropy: N rows, K classes, n_c rows of
    class c. Every class of a balanced set gets 1; a class absent from ``y`` is an error."""
    counts = np.bincount(np.asarray(y, dtype=np.int64), minlength=num_classes)
    if len(counts) > num_classes or (counts == 0).any():
        raise ValueError(
            f"class counts {counts.tolist()} for {num_classes} classes; expected every "
            f"class in 0..{num_classes - 1} at least once"
        )
    return torch.tensor(len(y) / (num_classes * counts), dtype=torch.float32)


# --------------------------------------------------------------------------------------------
# metrics
# --------------------------------------------------------------------------------------------
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
    """(K, K) counts: row = true class, column = predicted class."""
    t, p = _check_pairs(y_true, y_pred, num_classes)
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (t, p), 1)
    return cm


def accuracy(y_true: Sequence[int], y_pred: Sequence[int]) -> float:
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
    a zero denominator)."""
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
    """The unweighted mean over all ``num_classes`` classes of F1 = 2TP / (2TP + FP + FN)."""
    return float(per_class_scores(confusion_matrix(y_true, y_pred, num_classes))["f1"].mean())


def scores(y_true: Sequence[int], y_pred: Sequence[int], labels: Sequence[str]) -> dict[str, Any]:
    """accuracy, macro_f1, per-class precision/recall/F1/support and the confusion matrix."""
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
    """Scores of always predicting the most frequent training class (lowest index on a tie)."""
    counts = np.bincount(np.asarray(y_train, dtype=np.int64), minlength=len(labels))
    majority = int(np.argmax(counts))
    out = scores(y_eval, [majority] * len(y_eval), labels)
    out["predicts"] = labels[majority]
    return out


def plot_confusion(
    cm: np.ndarray, labels: Sequence[str], path: str | os.PathLike, title: str = "confusion matrix"
) -> Path:
    """A PNG heatmap of the confusion matrix with the counts written in (matplotlib Agg)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    from attnkit._util.fs import atomic_write

    cm = np.asarray(cm)
    k = len(labels)
    fig, ax = plt.subplots(figsize=(1.2 * k + 2.5, 1.1 * k + 2))
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
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    finally:
        plt.close(fig)


# --------------------------------------------------------------------------------------------
# batches
# --------------------------------------------------------------------------------------------
def length_batches(
    lengths: Sequence[int],
    batch_size: int,
    shuffle: bool = False,
    generator: torch.Generator | None = None,
    pool: int = 50,
) -> list[list[int]]:
    """Batches of indices whose items have about the same length.

    Without ``shuffle``: all items sorted by length (longest first), cut into batches. With it:
    a random permutation cut into pools of ``pool * batch_size`` items, each pool sorted by
    length and cut into batches, and the batches put in random order.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    n = len(lengths)
    if not shuffle:
        order = sorted(range(n), key=lambda i: -lengths[i])
        return [order[s : s + batch_size] for s in range(0, n, batch_size)]
    perm = torch.randperm(n, generator=generator).tolist()
    size = pool * batch_size
    batches: list[list[int]] = []
    for s in range(0, n, size):
        chunk = sorted(perm[s : s + size], key=lambda i: -lengths[i])
        batches += [chunk[b : b + batch_size] for b in range(0, len(chunk), batch_size)]
    order = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in order]


def pad_batch(
    seqs: Sequence[Sequence[int]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Right-padded ids (B, T) to the longest sequence, and a mask (B, T) with 1 on real tokens
    (None when nothing is padded)."""
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)  # (B, T)
    mask = torch.zeros(len(seqs), T, dtype=torch.long)  # (B, T)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(list(s), dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids, (None if bool(mask.all()) else mask)


# --------------------------------------------------------------------------------------------
# model
# --------------------------------------------------------------------------------------------
def _load(model: Any) -> nn.Module:
    if isinstance(model, nn.Module):
        return model
    if isinstance(model, (str, os.PathLike)):
        from attnkit.checkpoints.io import load

        return load(model)
    raise ValueError(
        f"model must be a checkpoint directory, a known name such as 'minilm' or a "
        f"loaded attnkit model, got {type(model).__name__}"
    )


def _pooling_of(model: nn.Module) -> str:
    """How a model pools for classification (see the module docstring)."""
    cfg = model.config
    if cfg.head == "classification":
        return "pooler" if cfg.pooler else cfg.pooling
    sentence = (getattr(model, "extra_config", None) or {}).get("sentence") or {}
    if sentence.get("pooling") in ("mean", "cls"):
        return sentence["pooling"]
    return "pooler" if cfg.pooler else cfg.pooling


def classifier_from(
    model: Any, labels: Sequence[str], pooling: str | None = None, dropout: float | None = None
) -> nn.Module:
    """A BERT-family model with a classification head for ``labels``.

    The encoder (and the pooler, when it is used) come from ``model``; the head is new, unless
    ``model`` already classifies exactly these labels with this pooling. ``pooling``: "pooler"
    (dense + tanh on the first token), "mean" or "cls"; default as the module docstring says.
    """
    from attnkit.models import build_model

    model = _load(model)
    cfg = getattr(model, "config", None)
    if cfg is None or cfg.arch != "bert":
        raise ValueError(
            f"fine-tuning for classification needs a BERT-family model "
            f"(config.arch='bert'), got {getattr(cfg, 'arch', type(model).__name__)!r}"
        )
    if getattr(model, "tokenizer", None) is None:
        raise ValueError(
            "the model has no tokenizer (tokenizer.json or vocab.txt); expected a "
            "checkpoint directory with one"
        )
    labels = [str(x) for x in labels]
    if len(labels) < 2 or len(set(labels)) != len(labels):
        raise ValueError(f"labels must be 2 or more distinct names, got {labels}")
    pooling = pooling or _pooling_of(model)
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {list(POOLINGS)}, got {pooling!r}")
    if pooling == "pooler" and not cfg.pooler:
        raise ValueError(
            "pooling 'pooler' needs a checkpoint with a pooler (dense + tanh); this "
            "one has none; expected 'mean' or 'cls'"
        )
    old_labels = (getattr(model, "extra_config", None) or {}).get("labels")
    if (
        cfg.head == "classification"
        and old_labels == labels
        and _pooling_of(model) == pooling
        and dropout is None
    ):
        return model
    new_cfg = cfg.replace(
        head="classification",
        num_labels=len(labels),
        pooler=pooling == "pooler",
        pooling=cfg.pooling if pooling == "pooler" else pooling,
        **({} if dropout is None else {"dropout": dropout}),
    )
    new = build_model(new_cfg)
    drop = ("mlm.", "classifier.") + (() if pooling == "pooler" else ("pooler.",))
    state = {k: v for k, v in model.state_dict().items() if not k.startswith(drop)}
    result = new.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith("classifier.")]
    if missing or result.unexpected_keys:
        raise ValueError(
            f"cannot move the encoder into a classifier: missing {missing}, "
            f"unexpected {result.unexpected_keys}"
        )
    new.tokenizer = model.tokenizer
    new.source = getattr(model, "source", None)
    new.extra_config = {"labels": labels}
    return new.to(next(model.parameters()).device)


def model_labels(model: nn.Module) -> list[str]:
    """The class names of a classification model: from its attnkit config, else the Hugging
    Face ``id2label``, else ``LABEL_<i>``."""
    cfg = getattr(model, "config", None)
    if cfg is None or cfg.head != "classification":
        raise ValueError(
            f"model {getattr(model, 'source', '')!r} has no classification head "
            f"(config.head={getattr(cfg, 'head', None)!r}); expected a checkpoint "
            f"written by finetune"
        )
    labels = (getattr(model, "extra_config", None) or {}).get("labels")
    if isinstance(labels, list) and len(labels) == cfg.num_labels:
        return [str(x) for x in labels]
    source = getattr(model, "source", None)
    if source and (Path(source) / "config.json").is_file():
        try:
            id2label = json.loads((Path(source) / "config.json").read_text()).get("id2label")
        except (OSError, json.JSONDecodeError):
            id2label = None
        if isinstance(id2label, dict) and len(id2label) == cfg.num_labels:
            return [str(id2label.get(str(i), f"LABEL_{i}")) for i in range(cfg.num_labels)]
    return [f"LABEL_{i}" for i in range(cfg.num_labels)]


def _pad_id(model: nn.Module) -> int:
    tok = model.tokenizer
    for name in ("[PAD]", "<pad>"):
        pid = tok.token_to_id(name)
        if pid is not None:
            return int(pid)
    return int(model.config.pad_token_id or 0)


def _encode(model: nn.Module, texts: Sequence[str], max_length: int) -> list[list[int]]:
    tok = model.tokenizer
    tok.no_padding()
    tok.enable_truncation(max_length)
    return [e.ids for e in tok.encode_batch(list(texts))]


@torch.no_grad()
def _logits(
    model: nn.Module, ids_list: list[list[int]], batch_size: int, pad_id: int
) -> torch.Tensor:
    """(N, K) float32 logits in the input order, length-sorted batches, eval mode."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = torch.empty(len(ids_list), model.config.num_labels)
    try:
        for idx in length_batches([len(s) for s in ids_list], batch_size):
            ids, mask = pad_batch([ids_list[i] for i in idx], pad_id)
            logits = model(ids.to(device), attention_mask=None if mask is None else mask.to(device))
            out[torch.tensor(idx)] = logits.float().cpu()  # (B, K)
    finally:
        model.train(was_training)
    return out


@dataclass
class Prediction:
    label: str
    probabilities: dict[str, float]


class Classifier:
    """A loaded classification checkpoint: ``predict`` and ``predict_proba`` on texts."""

    def __init__(self, model: Any, max_length: int | None = None):
        self.model = _load(model).eval()
        self.labels = model_labels(self.model)
        if getattr(self.model, "tokenizer", None) is None:
            raise ValueError(
                "the classification checkpoint has no tokenizer; expected a "
                "tokenizer.json beside it"
            )
        saved = (getattr(self.model, "extra_config", None) or {}).get("max_length")
        self.max_length = min(
            max_length or saved or self.model.config.max_seq_len, self.model.config.max_seq_len
        )
        self.pad_id = _pad_id(self.model)

    def predict_proba(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """(N, K) class probabilities, columns in the order of ``self.labels``."""
        texts = _check_texts(texts)
        if not texts:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        logits = _logits(
            self.model, _encode(self.model, texts, self.max_length), batch_size, self.pad_id
        )
        return torch.softmax(logits, dim=-1).numpy()

    def predict(self, texts: str | Sequence[str], batch_size: int = 32) -> list[Prediction]:
        items = [texts] if isinstance(texts, str) else list(texts)
        probs = self.predict_proba(items, batch_size)
        return [
            Prediction(
                self.labels[int(p.argmax())], {name: float(v) for name, v in zip(self.labels, p)}
            )
            for p in probs
        ]


def _check_texts(texts: Sequence[str]) -> list[str]:
    items = [texts] if isinstance(texts, str) else list(texts)
    for i, t in enumerate(items):
        if not isinstance(t, str):
            raise ValueError(f"text {i} is a {type(t).__name__}; expected a string")
    return items


def predict(model: Any, texts: str | Sequence[str], batch_size: int = 32) -> list[Prediction]:
    """Label and class probabilities of each text with a classification checkpoint (a
    directory written by :func:`finetune`, a Hugging Face BertForSequenceClassification
    directory or a loaded model)."""
    return Classifier(model).predict(texts, batch_size)


# --------------------------------------------------------------------------------------------
# fine-tuning
# --------------------------------------------------------------------------------------------
@dataclass
class FinetuneConfig:
    """Hyper-parameters of :func:`finetune` (every one checked)."""

    epochs: int = 3
    batch_size: int = 16
    lr: float = 5e-5
    weight_decay: float = 0.01
    warmup_fraction: float = 0.1
    grad_clip: float = 1.0
    max_length: int = 128
    use_class_weights: bool = True
    metric: str = "macro_f1"
    patience: int = 2
    eval_every: int = 0  # steps between evaluations; 0: after every epoch
    eval_batch_size: int = 64
    pooling: str | None = None
    dropout: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "max_length", "patience", "eval_batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if (
            isinstance(self.eval_every, bool)
            or not isinstance(self.eval_every, int)
            or self.eval_every < 0
        ):
            raise ValueError(
                f"eval_every must be an int >= 0 (0: every epoch), got {self.eval_every!r}"
            )
        for name in ("lr", "weight_decay", "grad_clip"):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
                or value < 0
            ):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if not isinstance(self.warmup_fraction, (int, float)) or not 0 <= self.warmup_fraction < 1:
            raise ValueError(f"warmup_fraction must be in [0, 1), got {self.warmup_fraction!r}")
        if self.metric not in METRICS:
            raise ValueError(f"metric must be one of {list(METRICS)}, got {self.metric!r}")
        if self.pooling is not None and self.pooling not in POOLINGS:
            raise ValueError(
                f"pooling must be one of {list(POOLINGS)} or None, got {self.pooling!r}"
            )


@dataclass
class FinetuneResult:
    model: nn.Module
    labels: list[str]
    best: dict[str, Any]  # scores of the kept (best) state on the eval set
    baseline: dict[str, Any]  # majority-class scores on the same eval set
    history: list[dict[str, Any]] = field(default_factory=list)
    class_weights: list[float] = field(default_factory=list)
    steps: int = 0
    epochs: float = 0.0
    stopped_early: bool = False
    seconds: float = 0.0
    out: Path | None = None


def _better(metric: str, new: float, old: float | None) -> bool:
    if old is None:
        return True
    return new < old - 1e-12 if metric == "loss" else new > old + 1e-12


def finetune(
    model: Any,
    train: Any,
    eval: Any,
    *,
    text_column: str = "text",
    label_column: str = "label",
    out: str | os.PathLike | None = None,
    config: FinetuneConfig | None = None,
    log: Callable[[str], None] | None = None,
    progress: bool = False,
    **overrides: Any,
) -> FinetuneResult:
    """Fine-tune ``model`` (a checkpoint directory, ``"minilm"`` or a loaded BERT-family model)
    to classify ``train`` (a CSV/JSONL path, a :class:`LabelledTexts` or (texts, labels)),
    choosing the kept state by its score on ``eval``; write the checkpoint and metrics to
    ``out`` when given. ``overrides`` set :class:`FinetuneConfig` fields."""
    cfg = config or FinetuneConfig()
    if overrides:
        unknown = sorted(set(overrides) - {f for f in FinetuneConfig.__dataclass_fields__})
        if unknown:
            raise ValueError(
                f"unknown finetune option(s) {unknown}; expected fields of "
                f"FinetuneConfig: {sorted(FinetuneConfig.__dataclass_fields__)}"
            )
        cfg = FinetuneConfig(**{**asdict(cfg), **overrides})
    say = log or (lambda message: None)
    train_set = _as_examples(train, text_column, label_column, "train")
    eval_set = _as_examples(eval, text_column, label_column, "eval")
    labels = label_names(train_set.labels)
    if len(labels) < 2:
        raise ValueError(
            f"{train_set.source}: every row has label {labels[0]!r}; expected at least "
            f"2 classes to classify"
        )
    unseen = sorted(set(eval_set.labels) - set(labels))
    if unseen:
        raise ValueError(
            f"{eval_set.source}: label(s) {unseen} do not occur in {train_set.source}; "
            f"expected eval labels among the training labels {labels}"
        )
    index = {name: i for i, name in enumerate(labels)}
    y_train = [index[y] for y in train_set.labels]
    y_eval = [index[y] for y in eval_set.labels]

    torch.manual_seed(cfg.seed)
    net = classifier_from(model, labels, cfg.pooling, cfg.dropout)
    max_length = min(cfg.max_length, net.config.max_seq_len)
    pad_id = _pad_id(net)
    device = next(net.parameters()).device
    train_ids = _encode(net, train_set.texts, max_length)
    eval_ids = _encode(net, eval_set.texts, max_length)
    weights = (
        class_weights(y_train, len(labels)) if cfg.use_class_weights else torch.ones(len(labels))
    )
    baseline = majority_baseline(y_train, y_eval, labels)
    y_train_t = torch.tensor(y_train)

    decay = [p for p in net.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in net.parameters() if p.requires_grad and p.dim() < 2]
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=cfg.lr,
    )
    gen = torch.Generator().manual_seed(cfg.seed)
    lengths = [len(s) for s in train_ids]
    per_epoch = math.ceil(len(train_ids) / cfg.batch_size)
    total = per_epoch * cfg.epochs
    warmup = int(total * cfg.warmup_fraction)

    def lr_at(step: int) -> float:  # linear warm-up, then linear decay to 0
        if step < warmup:
            return cfg.lr * (step + 1) / (warmup + 1)
        return cfg.lr * max(0.0, (total - step) / max(1, total - warmup))

    def evaluate() -> tuple[dict[str, Any], float]:
        logits = _logits(net, eval_ids, cfg.eval_batch_size, pad_id)  # (N, K)
        loss = float(F.cross_entropy(logits, torch.tensor(y_eval), weight=weights))
        return scores(y_eval, logits.argmax(-1).tolist(), labels), loss

    say(
        f"fine-tuning on {len(train_ids)} texts ({', '.join(f'{n} {y_train.count(i)}' for i, n in enumerate(labels))}), "
        f"evaluating on {len(eval_ids)}; {cfg.epochs} epoch(s) of {per_epoch} batches of {cfg.batch_size}; "
        f"class weights {[round(float(w), 3) for w in weights]}"
    )
    history: list[dict[str, Any]] = []
    best_value: float | None = None
    best_state: dict[str, torch.Tensor] | None = None
    best_scores: dict[str, Any] = {}
    bad = 0
    step = 0
    stopped = False
    run_loss, run_n = 0.0, 0
    start = time.perf_counter()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc="finetune", unit="batch")
    net.train()
    for epoch in range(cfg.epochs):
        batches = length_batches(lengths, cfg.batch_size, shuffle=True, generator=gen)
        for b, idx in enumerate(batches):
            ids, mask = pad_batch([train_ids[i] for i in idx], pad_id)
            for group in opt.param_groups:
                group["lr"] = lr_at(step)
            logits = net(ids.to(device), attention_mask=None if mask is None else mask.to(device))
            loss = F.cross_entropy(
                logits.float(), y_train_t[idx].to(device), weight=weights.to(device)
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
            opt.step()
            step += 1
            run_loss += float(loss.detach()) * len(idx)
            run_n += len(idx)
            if bar is not None:
                bar.update(1)
            last = b == len(batches) - 1
            final = last and epoch == cfg.epochs - 1  # the last step is always evaluated
            if (
                (cfg.eval_every and step % cfg.eval_every == 0)
                or (not cfg.eval_every and last)
                or final
            ):
                sc, eval_loss = evaluate()
                row = {
                    "step": step,
                    "epoch": round(step / per_epoch, 3),
                    "train_loss": run_loss / max(run_n, 1),
                    "eval_loss": eval_loss,
                    "accuracy": sc["accuracy"],
                    "macro_f1": sc["macro_f1"],
                    "seconds": round(time.perf_counter() - start, 2),
                }
                history.append(row)
                run_loss, run_n = 0.0, 0
                value = eval_loss if cfg.metric == "loss" else sc[cfg.metric]
                improved = _better(cfg.metric, value, best_value)
                say(
                    f"step {step} (epoch {row['epoch']:g}): train loss {row['train_loss']:.4f}, "
                    f"eval loss {eval_loss:.4f}, accuracy {sc['accuracy']:.4f}, macro-F1 "
                    f"{sc['macro_f1']:.4f}{' (best)' if improved else ''}"
                )
                if improved:
                    best_value, bad = value, 0
                    best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
                    best_scores = {**sc, "eval_loss": eval_loss, "step": step}
                else:
                    bad += 1
                    if bad >= cfg.patience:
                        stopped = True
                        say(f"early stop: no better {cfg.metric} in {bad} evaluation(s)")
                        break
        if stopped:
            break
    if bar is not None:
        bar.close()
    if best_state is not None:
        net.load_state_dict(best_state)
    net.eval()
    net.extra_config = {
        "labels": labels,
        "max_length": max_length,
        "classification": {
            "text_column": text_column,
            "label_column": label_column,
            "pooling": _pooling_of(net),
            "best": {k: best_scores.get(k) for k in ("accuracy", "macro_f1", "eval_loss", "step")},
            "base_model": str(getattr(net, "source", None)),
        },
    }
    result = FinetuneResult(
        net,
        labels,
        best_scores,
        baseline,
        history,
        [float(w) for w in weights],
        step,
        round(step / per_epoch, 3),
        stopped,
        round(time.perf_counter() - start, 2),
    )
    if out is not None:
        result.out = save_result(result, out, cfg, train_set.source, eval_set.source)
    return result


def save_result(
    result: FinetuneResult,
    out: str | os.PathLike,
    cfg: FinetuneConfig,
    train_source: str = "",
    eval_source: str = "",
) -> Path:
    """Write the model checkpoint, ``metrics.json`` and ``confusion.png`` into ``out``."""
    from attnkit._util.fs import atomic_write_json
    from attnkit.checkpoints.io import save

    out = Path(out)
    save(result.model, out)
    if result.best.get("confusion") is not None:
        plot_confusion(
            np.array(result.best["confusion"]),
            result.labels,
            out / "confusion.png",
            title=f"eval: accuracy {result.best['accuracy']:.3f}, "
            f"macro-F1 {result.best['macro_f1']:.3f}",
        )
    atomic_write_json(
        out / "metrics.json",
        {
            "labels": result.labels,
            "best": result.best,
            "baseline": result.baseline,
            "history": result.history,
            "class_weights": result.class_weights,
            "steps": result.steps,
            "epochs": result.epochs,
            "stopped_early": result.stopped_early,
            "seconds": result.seconds,
            "config": asdict(cfg),
            "train": train_source,
            "eval": eval_source,
        },
    )
    return out
