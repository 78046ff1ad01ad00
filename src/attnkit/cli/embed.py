"""``attnkit embed`` (sentence embeddings of texts) and ``attnkit similarity`` (of two texts,
or of one word's contextual vectors in them).

    attnkit embed "a first text" "a second" --out vecs.npy
    attnkit embed --file texts.txt | head -1
    attnkit similarity "The bank raised rates." "We sat on the river bank." --word bank
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from attnkit.cli.types import UsageError, add_device_args, device_and_dtype, positive_int

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from attnkit.tasks.sentence import Encoder


def _model_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default="minilm",
        help="known name (minilm), attnkit or Hugging Face directory (default: minilm)",
    )
    add_device_args(parser)


def load_encoder(args: argparse.Namespace, quantize: str | None = None) -> Encoder:
    """The --model encoder on --device, its weights in --dtype (``quantize``: see Encoder)."""
    from attnkit.checkpoints import load
    from attnkit.models.bert import Bert
    from attnkit.tasks.sentence import Encoder

    device, dtype = device_and_dtype(args)
    model = load(args.model, device=device, dtype=dtype)
    if not isinstance(model, Bert):
        raise ValueError(
            f"--model {args.model!r}: embeddings need a BERT-family encoder "
            f"(config.arch='bert'), got {type(model).__name__}"
        )
    return Encoder(model, device=device, quantize=quantize)


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
    parser.add_argument(
        "--int8",
        action="store_true",
        help="dynamic int8 linears (int8 weights, per-token 8-bit activations; CPU, float32)",
    )


def embed_command(args: argparse.Namespace) -> int:
    """Streams: texts are read a window of ``STREAM_BATCHES`` batches at a time and each
    window's vectors are written (and flushed) before the next is read, so any number of
    lines passes through in bounded memory."""
    from itertools import chain

    from attnkit._util.fs import atomic_write
    from attnkit.text.batching import chunked
    from attnkit.text.inputs import iter_texts

    if args.texts and args.file:
        raise UsageError("give texts as arguments or --file, not both")
    if args.out and Path(args.out).suffix not in (".npy", ".jsonl"):
        raise UsageError(f"--out {args.out!r}: expected a file name ending in .npy or .jsonl")
    try:
        texts = iter_texts(args.texts, args.file, sys.stdin)
        first = next(texts, None)
    except OSError as e:
        raise UsageError(f"--file {args.file!r}: {e.strerror}") from None
    if first is None:
        raise UsageError("no texts to embed: expected texts as arguments, --file or lines on stdin")
    enc = load_encoder(args, quantize="int8" if args.int8 else None)

    def windows() -> Iterator[tuple[list[str], np.ndarray]]:
        for window in chunked(chain([first], texts), args.batch_size * STREAM_BATCHES):
            vecs = enc.encode(window, batch_size=args.batch_size, normalize=not args.no_normalize)
            yield window, vecs

    if not args.out:
        for window, vecs in windows():
            sys.stdout.write("".join(_jsonl(window, vecs)))
            sys.stdout.flush()
        return 0
    written: list[int] = []  # the row count, known once the stream ends
    if args.out.endswith(".npy"):
        atomic_write(args.out, lambda tmp: written.append(_stream_npy(tmp, windows(), enc.dim)))
    else:
        atomic_write(args.out, lambda tmp: written.append(_stream_jsonl(tmp, windows())))
    print(f"wrote {written[0]} embeddings of dimension {enc.dim} to {args.out}", file=sys.stderr)
    return 0


# texts read (and vectors written) per window, in batches of --batch-size: enough for the
# length-sorted batches to pad little, few enough that memory stays flat
STREAM_BATCHES = 16


def _jsonl(texts: list[str], vecs: np.ndarray) -> Iterator[str]:
    for t, v in zip(texts, vecs):
        yield json.dumps({"text": t, "embedding": [round(float(x), 7) for x in v]}) + "\n"


def _stream_jsonl(path: str, windows: Iterator[tuple[list[str], np.ndarray]]) -> int:
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        for window, vecs in windows:
            f.writelines(_jsonl(window, vecs))
            n += len(window)
    return n


def _stream_npy(path: str, windows: Iterator[tuple[list[str], np.ndarray]], dim: int) -> int:
    """An (N, dim) float32 .npy file whose N is known only at the end: the rows go to an
    unnamed temporary file beside ``path``, then the header and the rows into ``path``."""
    import shutil
    import tempfile

    import numpy as np

    n = 0
    with tempfile.TemporaryFile(dir=os.path.dirname(path) or ".") as rows:
        for _, vecs in windows:
            rows.write(np.ascontiguousarray(vecs, dtype="<f4").tobytes())
            n += len(vecs)
        rows.seek(0)
        with open(path, "wb") as f:
            header = {"descr": "<f4", "fortran_order": False, "shape": (n, dim)}
            np.lib.format.write_array_header_1_0(f, header)
            shutil.copyfileobj(rows, f)
    return n


def similarity_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("a", help="first text")
    parser.add_argument("b", help="second text")
    parser.add_argument("--word", help="compare this word's contextual vectors in the two texts")
    depth = parser.add_mutually_exclusive_group()
    depth.add_argument(
        "--layer",
        type=int,
        help="with --word: the depth compared, 0 = embeddings, N = after block N "
        "(default: the last block)",
    )
    depth.add_argument(
        "--layers",
        choices=["all"],
        help="with --word: 'all' prints the cosine at every depth (embeddings + each block)",
    )
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    _model_argument(parser)


def similarity_command(args: argparse.Namespace) -> int:
    if args.word is None and (args.layer is not None or args.layers is not None):
        raise UsageError("--layer and --layers compare a word's vectors: give --word too")
    enc = load_encoder(args)
    if args.word is None:
        cos = enc.similarity(args.a, args.b)
        if args.json:
            print(json.dumps({"a": args.a, "b": args.b, "pooling": enc.pooling, "cosine": cos}))
        else:
            print(f"{cos:.6f}")
        return 0
    n_layers = len(enc.model.blocks)
    layer = n_layers if args.layer is None else args.layer
    if not 0 <= layer <= n_layers:
        raise UsageError(f"--layer {layer}: expected 0 (embeddings) to {n_layers}")
    curve = enc.word_similarity_by_layer(args.a, args.b, args.word)
    pieces = [enc.word_pieces(t, args.word) for t in (args.a, args.b)]
    if args.json:
        record: dict[str, object] = {
            "word": args.word,
            "pieces": {"a": pieces[0], "b": pieces[1]},
            "pooling": "mean of sub-word pieces",
        }
        if args.layers == "all":
            record["cosine_by_layer"] = curve
        else:
            record.update(layer=layer, cosine=curve[layer])
        print(json.dumps(record))
        return 0
    print(f"word {args.word!r}: pieces {pieces[0]} in a, {pieces[1]} in b (mean of pieces)")
    if args.layers == "all":
        for i, c in enumerate(curve):
            print(f"{_layer_name(i):>11}  {c:.6f}")
    else:
        print(f"{_layer_name(layer)} of {n_layers}: cosine {curve[layer]:.6f}")
    return 0


def _layer_name(i: int) -> str:
    return "embeddings" if i == 0 else f"layer {i}"
