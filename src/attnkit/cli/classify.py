"""`attnkit finetune` and `attnkit classify`: the command-line side of
:mod:`attnkit.tasks.classification`; the option set they share with `attnkit genre`
(:mod:`attnkit.cli.genre`)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from attnkit.cli.types import (
    add_device_args,
    device_and_dtype,
    non_negative_int,
    positive_float,
    positive_int,
    probability,
)

if TYPE_CHECKING:  # pragma: no cover
    from attnkit.tasks.classification import FinetuneConfig


def training_arguments(
    parser: argparse.ArgumentParser,
    epochs: int,
    lr: float,
    max_length: int,
    patience: int = 2,
    freeze_encoder: bool = False,
    batch_size: int = 16,
    probe_epochs: int = 0,
) -> None:
    parser.add_argument("--epochs", type=positive_int, default=epochs, metavar="N")
    parser.add_argument("--batch-size", type=positive_int, default=batch_size, metavar="B")
    parser.add_argument(
        "--lr", type=positive_float, default=lr, metavar="LR", help="peak learning rate"
    )
    parser.add_argument(
        "--freeze-encoder",
        action=argparse.BooleanOptionalAction,
        default=freeze_encoder,
        help="train the head only, on pooled vectors computed once "
        f"(default {'on' if freeze_encoder else 'off'})",
    )
    parser.add_argument(
        "--probe-epochs",
        type=non_negative_int,
        default=probe_epochs,
        metavar="N",
        help="first train the head alone on the frozen encoder for up to N epochs (at "
        f"--probe-lr), then fine-tune everything (default {probe_epochs}; 0: no probe)",
    )
    parser.add_argument("--probe-lr", type=positive_float, default=1e-2, metavar="LR")
    parser.add_argument(
        "--logger",
        default="csv",
        metavar="NAMES",
        help="also log the evaluations to tensorboard and/or wandb (offline), e.g. "
        "'csv,tensorboard'; files under the output directory",
    )
    parser.add_argument(
        "--max-length",
        type=positive_int,
        default=max_length,
        metavar="T",
        help="tokens kept per text",
    )
    parser.add_argument(
        "--patience",
        type=positive_int,
        default=patience,
        metavar="N",
        help="stop after N evaluations without a better --metric",
    )
    parser.add_argument(
        "--metric",
        default="macro_f1",
        choices=("macro_f1", "accuracy", "loss"),
        help="eval score that picks the kept state and drives early stopping",
    )
    parser.add_argument(
        "--eval-every",
        type=non_negative_int,
        default=0,
        metavar="STEPS",
        help="evaluate every STEPS steps (default 0: after every epoch)",
    )
    parser.add_argument(
        "--class-weights",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="weight the loss by N / (K * n_class) (default on)",
    )
    parser.add_argument(
        "--pooling",
        choices=("pooler", "mean", "cls"),
        help="pooled vector under the head (default: the checkpoint's)",
    )
    parser.add_argument(
        "--dropout",
        type=probability,
        metavar="P",
        help="dropout in the model (default: the checkpoint's)",
    )
    parser.add_argument("--seed", type=int, default=0)
    add_device_args(parser, dtype_help="autocast")  # under torchrun: one device per process
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="progress bar on stderr",
    )


def finetune_config(args: argparse.Namespace) -> FinetuneConfig:
    from attnkit.tasks.classification import FinetuneConfig

    return FinetuneConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        max_length=args.max_length,
        patience=args.patience,
        metric=args.metric,
        eval_every=args.eval_every,
        use_class_weights=args.class_weights,
        pooling=args.pooling,
        dropout=args.dropout,
        seed=args.seed,
        device=args.device,
        dtype=args.dtype,
        freeze_encoder=args.freeze_encoder,
        probe_epochs=args.probe_epochs,
        probe_lr=args.probe_lr,
        logger=args.logger,
    )


def passive_openmp() -> None:
    """Idle OpenMP threads sleep rather than spin, unless the user chose otherwise: spinning
    threads on a CPU shared with other work made training many times slower. Takes effect only
    when torch is not imported yet (as in the command line)."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def log_line(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# finetune
# --------------------------------------------------------------------------------------------
def finetune_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default="minilm",
        metavar="DIR",
        help="attnkit or Hugging Face BERT-family checkpoint, or 'minilm' (default)",
    )
    parser.add_argument("--train", required=True, metavar="FILE", help="training CSV/TSV/JSONL")
    parser.add_argument("--eval", required=True, metavar="FILE", help="evaluation CSV/TSV/JSONL")
    parser.add_argument("--text-column", default="text", metavar="NAME")
    parser.add_argument("--label-column", default="label", metavar="NAME")
    parser.add_argument(
        "--out",
        default="runs/finetune",
        metavar="DIR",
        help="where the checkpoint, metrics.json and confusion.png go (one that already "
        "holds a model or a run is refused without --overwrite)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace what --out holds; the old files are deleted once the new ones are written",
    )
    training_arguments(parser, epochs=3, lr=5e-5, max_length=128)


def score_table(
    best: dict[str, Any], baseline: dict[str, Any], tfidf: dict[str, Any] | None = None
) -> str:
    """Accuracy and macro-F1 of the model beside the majority and TF-IDF baselines (n/a
    without scikit-learn)."""
    rows = [f"{'':12s}{'fine-tuned':>12s}{'majority baseline':>20s}{'TF-IDF + LR':>14s}"]
    for key, name in (("accuracy", "accuracy"), ("macro_f1", "macro-F1")):
        other = f"{tfidf[key]:14.4f}" if tfidf is not None else f"{'n/a':>14s}"
        rows.append(f"{name:12s}{best[key]:12.4f}{baseline[key]:20.4f}{other}")
    return "\n".join(rows)


def finetune_command(args: argparse.Namespace) -> int:
    passive_openmp()
    from attnkit.tasks.classification import finetune, read_examples

    train = read_examples(args.train, args.text_column, args.label_column)
    eval_ = read_examples(args.eval, args.text_column, args.label_column)
    result = finetune(
        args.model,
        train,
        eval_,
        text_column=args.text_column,
        label_column=args.label_column,
        out=args.out,
        config=finetune_config(args),
        log=log_line,
        progress=args.progress,
        overwrite=args.overwrite,
    )
    if not result.is_main:  # under torchrun, rank 0 reports
        return 0
    print(score_table(result.best, result.baseline, result.tfidf))
    print(
        f"majority baseline predicts {result.baseline['predicts']!r}; kept the state of step "
        f"{result.best['step']} of {result.steps}{' (stopped early)' if result.stopped_early else ''}"
    )
    print(
        f"wrote {result.out} (checkpoint with labels {result.labels}, metrics.json, confusion.png)"
    )
    return 0


# --------------------------------------------------------------------------------------------
# classify
# --------------------------------------------------------------------------------------------
def classify_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "texts",
        nargs="*",
        metavar="TEXT",
        help="texts to classify (else one per line of --file or stdin)",
    )
    parser.add_argument(
        "--model",
        required=True,
        metavar="DIR",
        help="a checkpoint written by 'attnkit finetune' (or an HF classifier)",
    )
    parser.add_argument("--file", metavar="FILE", help="texts, one per non-empty line")
    parser.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object per text instead of tab-separated lines",
    )
    parser.add_argument("--batch-size", type=positive_int, default=32, metavar="B")
    add_device_args(parser)


def classify_command(args: argparse.Namespace) -> int:
    """Streams like ``attnkit embed``: a window of texts at a time, each window's lines
    written and flushed before the next is read."""
    from itertools import chain

    from attnkit.checkpoints import load
    from attnkit.tasks.classification import Classifier
    from attnkit.text.batching import chunked

    texts = _texts(args)
    first = next(texts, None)
    if first is None:
        raise ValueError("no texts to classify; expected TEXT arguments, --file or lines on stdin")
    device, dtype = device_and_dtype(args)
    clf = Classifier(load(args.model, device=device, dtype=dtype))
    for window in chunked(chain([first], texts), args.batch_size * STREAM_BATCHES):
        lines = []
        for text, pred in zip(window, clf.predict(window, args.batch_size)):
            if args.json:
                row = {"text": text, "label": pred.label, "probabilities": pred.probabilities}
                lines.append(json.dumps(row) + "\n")
            else:
                probs = " ".join(f"{name}={p:.4f}" for name, p in pred.probabilities.items())
                lines.append(f"{pred.label}\t{probs}\t{text}\n")
        sys.stdout.write("".join(lines))
        sys.stdout.flush()
    return 0


def _texts(args: argparse.Namespace) -> Iterator[str]:
    """The texts to classify, read lazily; a bad --file or stdin is a ValueError naming it."""
    from attnkit.text.inputs import iter_texts

    try:
        yield from iter_texts(args.texts, args.file, sys.stdin)
    except FileNotFoundError:
        raise ValueError(f"--file {args.file!r} does not exist; expected a text file") from None
    except UnicodeDecodeError as e:
        source = f"--file {args.file!r}" if args.file else "stdin"
        raise ValueError(f"{source} is not UTF-8 text ({e.reason} at byte {e.start})") from None


# texts read (and lines written) per window, in batches of --batch-size
STREAM_BATCHES = 16
