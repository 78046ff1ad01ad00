"""`attnkit finetune`, `attnkit classify` and `attnkit genre`: the command-line side of
:mod:`attnkit.tasks.classification` and :mod:`attnkit.text.genre`."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
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


def _training_arguments(
    parser: argparse.ArgumentParser, epochs: int, lr: float, max_length: int
) -> None:
    parser.add_argument("--epochs", type=positive_int, default=epochs, metavar="N")
    parser.add_argument("--batch-size", type=positive_int, default=16, metavar="B")
    parser.add_argument(
        "--lr", type=positive_float, default=lr, metavar="LR", help="peak learning rate"
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
        default=2,
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


def _config(args: argparse.Namespace) -> FinetuneConfig:
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
    )


def _passive_openmp() -> None:
    """Idle OpenMP threads sleep rather than spin, unless the user chose otherwise: spinning
    threads on a CPU shared with other work made training many times slower. Takes effect only
    when torch is not imported yet (as in the command line)."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _log(message: str) -> None:
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
    _training_arguments(parser, epochs=3, lr=5e-5, max_length=128)


def _score_table(best: dict[str, Any], baseline: dict[str, Any]) -> str:
    rows = [f"{'':12s}{'fine-tuned':>12s}{'majority baseline':>20s}"]
    for key, name in (("accuracy", "accuracy"), ("macro_f1", "macro-F1")):
        rows.append(f"{name:12s}{best[key]:12.4f}{baseline[key]:20.4f}")
    return "\n".join(rows)


def finetune_command(args: argparse.Namespace) -> int:
    _passive_openmp()
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
        config=_config(args),
        log=_log,
        progress=args.progress,
        overwrite=args.overwrite,
    )
    if not result.is_main:  # under torchrun, rank 0 reports
        return 0
    print(_score_table(result.best, result.baseline))
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
    from attnkit.tasks.sentence import iter_texts

    try:
        yield from iter_texts(args.texts, args.file, sys.stdin)
    except FileNotFoundError:
        raise ValueError(f"--file {args.file!r} does not exist; expected a text file") from None
    except UnicodeDecodeError as e:
        source = f"--file {args.file!r}" if args.file else "stdin"
        raise ValueError(f"{source} is not UTF-8 text ({e.reason} at byte {e.start})") from None


# texts read (and lines written) per window, in batches of --batch-size
STREAM_BATCHES = 16


# --------------------------------------------------------------------------------------------
# genre
# --------------------------------------------------------------------------------------------
def genre_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out",
        default="runs/genre",
        metavar="DIR",
        help="data/ (train.csv, eval.csv), model/ (checkpoint, metrics, "
        "confusion.png), genre.json and genre.png go here (a model/ already there is "
        "refused without --overwrite)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace the model/ of an earlier run"
    )
    parser.add_argument(
        "--model",
        default="minilm",
        metavar="DIR",
        help="checkpoint to fine-tune (default: all-MiniLM-L6-v2)",
    )
    parser.add_argument(
        "--words",
        type=positive_int,
        default=60,
        metavar="N",
        help="words per passage (at least; cut at a line end)",
    )
    parser.add_argument("--train-per-play", type=positive_int, default=20, metavar="N")
    parser.add_argument("--eval-per-play", type=positive_int, default=15, metavar="N")
    parser.add_argument(
        "--eval-fraction",
        type=probability,
        default=0.25,
        metavar="F",
        help="share of each genre's plays held out for evaluation",
    )
    _training_arguments(parser, epochs=2, lr=1e-4, max_length=96)


def genre_command(args: argparse.Namespace) -> int:
    _passive_openmp()
    from attnkit._util.fs import atomic_write_json
    from attnkit._util.optional import MissingDependency
    from attnkit.tasks.classification import LabelledTexts, finetune
    from attnkit.text.genre import FOLIO_GENRES, LEFT_OUT, build_genre_dataset, write_csv

    if args.eval_fraction <= 0:
        raise ValueError(f"--eval-fraction must be in (0, 1), got {args.eval_fraction!r}")
    out = Path(args.out)
    data = build_genre_dataset(
        words=args.words,
        train_per_play=args.train_per_play,
        eval_per_play=args.eval_per_play,
        eval_fraction=args.eval_fraction,
        seed=args.seed,
    )
    write_csv(data.train, out / "data" / "train.csv")
    write_csv(data.eval, out / "data" / "eval.csv")
    title = lambda name: FOLIO_GENRES[name][0]  # noqa: E731
    _log(
        f"genre data: {len(data.train)} training passages from {len(data.train_plays)} plays "
        f"{data.counts('train')}, {len(data.eval)} evaluation passages from "
        f"{len(data.eval_plays)} other plays {data.counts('eval')}"
    )
    _log(
        "held-out plays: "
        + "; ".join(f"{title(p)} ({FOLIO_GENRES[p][1]})" for p in data.eval_plays)
    )
    _log("left out: " + "; ".join(f"{k} ({v})" for k, v in LEFT_OUT.items()))
    train = LabelledTexts(
        [p.text for p in data.train], [p.label for p in data.train], str(out / "data" / "train.csv")
    )
    eval_ = LabelledTexts(
        [p.text for p in data.eval], [p.label for p in data.eval], str(out / "data" / "eval.csv")
    )
    result = finetune(
        args.model,
        train,
        eval_,
        out=out / "model",
        config=_config(args),
        log=_log,
        progress=args.progress,
        overwrite=args.overwrite,
    )
    best, base = result.best, result.baseline
    summary = {
        "model": args.model,
        "train_passages": len(data.train),
        "eval_passages": len(data.eval),
        "train_plays": data.train_plays,
        "eval_plays": data.eval_plays,
        "train_counts": data.counts("train"),
        "eval_counts": data.counts("eval"),
        "finetuned": {
            "accuracy": best["accuracy"],
            "macro_f1": best["macro_f1"],
            "per_class": best["per_class"],
            "confusion": best["confusion"],
        },
        "majority_baseline": {
            "predicts": base["predicts"],
            "accuracy": base["accuracy"],
            "macro_f1": base["macro_f1"],
        },
        "macro_f1_gain_points": round(100 * (best["macro_f1"] - base["macro_f1"]), 2),
        "steps": result.steps,
        "seconds": result.seconds,
        "stopped_early": result.stopped_early,
    }
    atomic_write_json(out / "genre.json", summary)
    no_plot: MissingDependency | None = None
    try:
        _plot_scores(
            best,
            base,
            out / "genre.png",
            f"{args.model} on {len(data.eval)} passages of {len(data.eval_plays)} held-out plays",
        )
    except MissingDependency as e:  # the scores are still printed and in genre.json
        no_plot = e
    print(
        f"Shakespeare genre (First Folio: comedy / history / tragedy), {args.model} fine-tuned "
        f"on {len(data.train)} passages of {len(data.train_plays)} plays, evaluated on "
        f"{len(data.eval)} passages of {len(data.eval_plays)} held-out plays"
    )
    print(_score_table(best, base))
    print(
        f"macro-F1 gain over the majority baseline (always {base['predicts']!r}): "
        f"{summary['macro_f1_gain_points']:+.1f} points; {result.steps} steps in "
        f"{result.seconds:.0f} s"
    )
    written = [out / "genre.json", out / "genre.png", out / "model" / "confusion.png"]
    print("wrote " + ", ".join(str(path) for path in written if path.is_file()))
    if no_plot is not None:
        raise no_plot  # one line naming the extra to install
    return 0


def _plot_scores(best: dict[str, Any], base: dict[str, Any], path: Path, title: str) -> Path:
    import numpy as np

    from attnkit._util.fs import atomic_write
    from attnkit._util.optional import figure

    names = ["accuracy", "macro-F1"]
    keys = ["accuracy", "macro_f1"]
    x = np.arange(len(names))
    fig = figure(6, 4)
    ax = fig.add_subplot()
    for offset, scores_, label in ((-0.2, best, "fine-tuned"), (0.2, base, "majority baseline")):
        bars = ax.bar(x + offset, [scores_[k] for k in keys], 0.4, label=label)
        ax.bar_label(bars, fmt="%.3f")
    ax.set_xticks(x, names)
    ax.set_ylim(0, 1)
    ax.set_title(title, fontsize=9)
    ax.legend()
    fig.tight_layout()
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
