"""``attnkit embed`` (sentence embeddings of texts) and ``attnkit similarity`` (of two texts,
or of one word's contextual vectors in them).

    attnkit embed "a first text" "a second" --out vecs.npy
    attnkit embed --file texts.txt | head -1
    attnkit similarity "The bank raised rates." "We sat on the river bank." --word bank
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from attnkit.cli.types import UsageError, positive_int

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np


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

    from attnkit._util.fs import atomic_write, atomic_write_text
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
        matrix = vecs.astype(np.float32)
        atomic_write(args.out, lambda tmp: _save_npy(tmp, matrix))
    else:
        lines = (
            json.dumps({"text": t, "embedding": [round(float(x), 7) for x in v]})
            for t, v in zip(texts, vecs)
        )
        if args.out:
            atomic_write_text(args.out, "".join(line + "\n" for line in lines))
        else:
            for line in lines:
                print(line)
            return 0
    print(
        f"wrote {len(texts)} embeddings of dimension {vecs.shape[1]} to {args.out}", file=sys.stderr
    )
    return 0


def _save_npy(path: str, matrix: np.ndarray) -> None:
    import numpy as np

    with open(path, "wb") as f:  # a file object: np.save would add .npy to a path
        np.save(f, matrix)


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
