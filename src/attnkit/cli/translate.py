"""``attnkit translate``: run an encoder-decoder checkpoint on texts (translation, summaries).

    attnkit translate --model runs/en-es "In the beginning God created the heaven."
    attnkit translate --model runs/en-es --file verses.txt --beams 4 > out.txt
    cat verses.txt | attnkit translate --model runs/en-es --batch-size 32

Texts come from the arguments, or one per line from ``--file`` or standard input. Lines are
read ``--batch-size`` x 4 at a time, sorted by length within that window and decoded in
batches of ``--batch-size``, and each window's outputs are written, one line per input line
and in its order, before the next is read: a long file streams with bounded memory. An empty
input line gives an empty output line.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable

from attnkit.cli.types import (
    UsageError,
    add_device_args,
    device_and_dtype,
    positive_int,
    set_threads,
    threads_argument,
)


def translate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", required=True, help="an encoder-decoder checkpoint directory (pretrain --out)"
    )
    parser.add_argument("text", nargs="*", help="texts to translate (else --file or stdin)")
    parser.add_argument("--file", help="a UTF-8 text file, one input per line ('-': stdin)")
    parser.add_argument(
        "--beams", type=positive_int, default=1, help="beam size (default 1: greedy)"
    )
    parser.add_argument(
        "--max-new-tokens",
        type=positive_int,
        metavar="N",
        help="tokens per output at most (default: as many as the model's positions allow)",
    )
    parser.add_argument(
        "--batch-size", type=positive_int, default=16, help="inputs decoded together (default 16)"
    )
    parser.add_argument(
        "--length-penalty",
        type=float,
        default=1.0,
        help="beam search: score / length**penalty (default 1.0)",
    )
    parser.add_argument(
        "--no-repeat-ngram-size",
        type=int,
        default=0,
        metavar="N",
        help="forbid repeating any n-gram of N tokens (default 0: off)",
    )
    add_device_args(parser)
    threads_argument(parser)


def _lines(args: argparse.Namespace) -> Iterable[str]:
    if args.text:
        if args.file:
            raise UsageError("give texts as arguments or --file, not both")
        return list(args.text)
    if args.file and args.file != "-":
        try:
            f = open(args.file, encoding="utf-8")  # read lazily; closed at exit
        except OSError as e:
            raise UsageError(
                f"--file {args.file!r}: {e.strerror}; expected a readable text file"
            ) from None
        return (line.rstrip("\r\n") for line in f)
    return (line.rstrip("\r\n") for line in sys.stdin)


def translate_command(args: argparse.Namespace) -> int:
    from attnkit.checkpoints import load
    from attnkit.generation.translate import translate
    from attnkit.models.encdec import EncoderDecoder
    from attnkit.text.batching import chunked

    set_threads(args.threads)
    lines = _lines(args)
    device, dtype = device_and_dtype(args)
    model = load(args.model, device=device, dtype=dtype)
    if not isinstance(model, EncoderDecoder):
        raise UsageError(
            f"--model {args.model!r} is a {model.config.arch!r} model; 'translate' needs an "
            f"encoder-decoder checkpoint (model.arch = 'encdec')"
        )
    tok = model.meta.tokenizer
    if tok is None:
        raise UsageError(f"--model {args.model!r} has no tokenizer.json; 'translate' needs one")
    limit = model.config.max_seq_len - 1
    if args.max_new_tokens and args.max_new_tokens > limit:
        raise UsageError(
            f"--max-new-tokens {args.max_new_tokens} exceeds what the model's positions allow "
            f"({limit}); expected at most {limit}"
        )
    options = dict(
        num_beams=args.beams,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        length_penalty=args.length_penalty,
        no_repeat_ngram_size=args.no_repeat_ngram_size,
    )
    out = sys.stdout
    for window in chunked(lines, args.batch_size * 4):
        filled = [i for i, text in enumerate(window) if text.strip()]
        results = [""] * len(window)
        if filled:
            done = translate(model, tok, [window[i] for i in filled], **options)
            for i, text in zip(filled, done):
                results[i] = text
        out.write("".join(r + "\n" for r in results))
        out.flush()
    return 0
