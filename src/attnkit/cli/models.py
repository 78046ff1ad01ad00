"""Command-line front ends for models and checkpoints: ``convert``, ``embed``, ``similarity``.

Each command is a pair ``<name>_arguments(parser)`` / ``<name>_command(args)`` named by a row
of ``attnkit.cli.COMMANDS``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from attnkit.cli import UsageError, positive_int


# --------------------------------------------------------------------------------------------
# convert
# --------------------------------------------------------------------------------------------
def convert_arguments(parser: argparse.ArgumentParser) -> None:
    way = parser.add_mutually_exclusive_group(required=True)
    way.add_argument(
        "--from-hf", metavar="DIR", help="Hugging Face directory to convert to attnkit"
    )
    way.add_argument("--to-hf", metavar="DIR", help="attnkit directory to convert to Hugging Face")
    parser.add_argument("out", metavar="OUT", help="output directory")


def convert_command(args: argparse.Namespace) -> int:
    from attnkit.checkpoints import hf, io

    src = Path(args.from_hf or args.to_hf)
    if not src.is_dir():
        raise UsageError(f"{src}: not a directory; expected a checkpoint directory")
    if args.from_hf:
        model = hf.load_hf_dir(src)
        io.save(model, args.out)
        kind = "attnkit"
    else:
        model = io.load(src)
        hf.export_hf(model, args.out)
        kind = "Hugging Face"
    cfg = model.config
    print(
        f"wrote {kind} checkpoint {args.out}: {cfg.arch} {cfg.n_layer}x{cfg.d_model}, "
        f"head={cfg.head}, {model.num_parameters():,} parameters"
    )
    return 0


# --------------------------------------------------------------------------------------------
# embed / similarity
# --------------------------------------------------------------------------------------------
def _model_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default="minilm",
        help="known name (minilm), attnkit or Hugging Face directory (default: minilm)",
    )


def embed_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("texts", nargs="*", help="texts to embed (default: --file, else stdin)")
    parser.add_argument("--file", help="read texts from this file, one per non-empty line")
    parser.add_argument(
        "--out", help="write a .npy matrix or a .jsonl file (default: JSONL on stdout)"
    )
    _model_argument(parser)
    parser.add_argument("--batch-size", type=positive_int, default=32)
    parser.add_argument(
        "--no-normalize", action="store_true", help="keep raw (unnormalised) vectors"
    )


def embed_command(args: argparse.Namespace) -> int:
    import numpy as np

    from attnkit.tasks.sentence import Encoder, read_texts

    if args.texts and args.file:
        raise UsageError("give texts as arguments or --file, not both")
    if args.out and Path(args.out).suffix not in (".npy", ".jsonl"):
        raise UsageError(f"--out {args.out!r}: expected a file name ending in .npy or .jsonl")
    try:
        texts = read_texts(args.texts, args.file, sys.stdin)
    except OSError as e:
        raise UsageError(f"--file {args.file!r}: {e.strerror}") from None
    if not texts:
        raise UsageError("no texts to embed: expected texts as arguments, --file or lines on stdin")
    enc = Encoder.load(args.model)
    vecs = enc.encode(texts, batch_size=args.batch_size, normalize=not args.no_normalize)
    if args.out and args.out.endswith(".npy"):
        np.save(args.out, vecs.astype(np.float32))
    else:
        lines = (
            json.dumps({"text": t, "embedding": [round(float(x), 7) for x in v]})
            for t, v in zip(texts, vecs)
        )
        if args.out:
            Path(args.out).write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        else:
            for line in lines:
                print(line)
            return 0
    print(
        f"wrote {len(texts)} embeddings of dimension {vecs.shape[1]} to {args.out}", file=sys.stderr
    )
    return 0


def similarity_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("a", help="first text")
    parser.add_argument("b", help="second text")
    parser.add_argument("--word", help="compare this word's contextual vectors in the two texts")
    _model_argument(parser)


def similarity_command(args: argparse.Namespace) -> int:
    from attnkit.tasks.sentence import Encoder

    enc = Encoder.load(args.model)
    print(f"{enc.similarity(args.a, args.b, word=args.word):.6f}")
    return 0
