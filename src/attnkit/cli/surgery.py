"""``attnkit swap``: replace a loaded model's attention with a variant and report what changes.

    attnkit swap --model minilm --variant lsh --variant-param n_hashes=4 --text-file FILE
    attnkit swap --model DIR --variant performer --layers 0-2 --json "some text" "another"

The library side is :mod:`attnkit.surgery` (``swap_attention`` + ``compare``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from attnkit.cli.types import (
    UsageError,
    add_device_args,
    device_and_dtype,
    positive_int,
    set_threads,
    threads_argument,
)


def swap_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("texts", nargs="*", help="texts to run (or --text-file)")
    parser.add_argument(
        "--model",
        default="minilm",
        help="known name (minilm), attnkit or Hugging Face directory (default: minilm)",
    )
    from attnkit.surgery import variant_names

    parser.add_argument(
        "--variant", required=True, help=f"attention to put in: one of {', '.join(variant_names())}"
    )
    parser.add_argument(
        "--variant-param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a parameter of the variant, e.g. n_hashes=4 (repeatable; values are "
        "read as int, float, true/false or none)",
    )
    parser.add_argument(
        "--text-file", metavar="FILE", help="one text per non-empty line ('-' reads stdin)"
    )
    parser.add_argument(
        "--layers",
        metavar="I,J-K",
        help="swap only these layers, 0-based, e.g. 0,2-3 (default: all)",
    )
    parser.add_argument("--batch-size", type=positive_int, default=32)
    parser.add_argument(
        "--max-length",
        type=positive_int,
        metavar="N",
        help="tokens per text (default: the model's sentence length, else its positions)",
    )
    parser.add_argument(
        "--rounds",
        type=positive_int,
        default=3,
        help="timed passes of each model; the fastest counts (default 3)",
    )
    add_device_args(parser)
    threads_argument(parser)
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def _texts(args: argparse.Namespace) -> list[str]:
    if args.texts and args.text_file:
        raise UsageError("give texts as arguments or --text-file, not both")
    if args.texts:
        return list(args.texts)
    if args.text_file is None:
        raise UsageError("no texts: expected texts as arguments or --text-file FILE")
    try:
        if args.text_file == "-":
            lines = sys.stdin.read().splitlines()
        else:
            lines = Path(args.text_file).read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise UsageError(
            f"--text-file {args.text_file!r}: {e.strerror}; expected a readable text file"
        ) from None
    except UnicodeDecodeError:
        raise UsageError(f"--text-file {args.text_file!r} is not UTF-8 text") from None
    texts = [line for line in lines if line.strip()]
    if not texts:
        raise UsageError(
            f"--text-file {args.text_file!r} has no non-empty lines; expected one text per line"
        )
    return texts


def swap_command(args: argparse.Namespace) -> int:
    from attnkit import surgery
    from attnkit.checkpoints import load
    from attnkit.models.bert import Bert
    from attnkit.models.gpt import GPT

    params = surgery.parse_params(args.variant_param)
    surgery.resolve_params(args.variant, params)  # bad names fail before the model loads
    texts = _texts(args)
    set_threads(args.threads)
    device, dtype = device_and_dtype(args)
    model = load(args.model, device=device, dtype=dtype)
    if not isinstance(model, (GPT, Bert)):
        raise UsageError(
            f"--model {args.model!r} is a {type(model).__name__}; expected a GPT or BERT model"
        )
    layers = (
        None if args.layers is None else surgery.parse_layers(args.layers, model.config.n_layer)
    )
    swapped = surgery.swap_attention(model, args.variant, layers=layers, **params)
    assert isinstance(swapped, (GPT, Bert))  # a copy of the same class
    report = surgery.compare(
        model,
        swapped,
        texts,
        batch_size=args.batch_size,
        max_length=args.max_length,
        rounds=args.rounds,
    )
    cfg = model.config
    if args.json:
        print(
            json.dumps({"model": str(args.model), "arch": cfg.arch, **report.to_dict()}, indent=2)
        )
    else:
        title = (
            f"attnkit swap: {args.model} ({cfg.arch}, {cfg.n_layer} layers x {cfg.d_model}, "
            f"{cfg.n_heads} heads)"
        )
        print(report.format(title))
    return 0
