"""``attnkit eval``: scores of a trained model outside a training run, as JSON.

    attnkit eval perplexity --model runs/char                  # the run's own val split
    attnkit eval perplexity --model hf-gpt2-dir --data notes.txt --block-size 512 --stride 256
    attnkit eval perplexity --model runs/bpe --data shakespeare --split val
    attnkit eval classification --model runs/clf --file test.csv
    attnkit eval sts --model minilm --file sts-test.tsv --out sts.json

The JSON goes to stdout, or to ``--out FILE`` (written atomically). Without ``--data``,
perplexity reads the corpus, validation fraction and block size the run was trained with
(its ``run_config.json``); see :mod:`attnkit.evaluation` for the windows and the formats.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any

from attnkit.cli.types import UsageError, add_device_args, device_and_dtype, positive_int


def _out_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", metavar="FILE", help="write the JSON here (default: stdout)")
    parser.add_argument("--batch-size", type=positive_int, default=32)
    add_device_args(parser)


def _finite(value: Any) -> Any:
    """NaN and inf (a correlation of constant scores) as null, so the output is JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _emit(result: dict[str, Any], out: str | None) -> int:
    result = _finite(result)
    if out:
        from attnkit._util.fs import atomic_write_json

        atomic_write_json(out, result)
        print(f"wrote {out}", file=sys.stderr)
    else:
        sys.stdout.write(json.dumps(result, indent=2, allow_nan=False) + "\n")
    return 0


def perplexity_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", required=True, help="a GPT checkpoint directory: attnkit or HF GPT-2"
    )
    parser.add_argument(
        "--data",
        help="a corpus name (shakespeare, kjv, tinyshakespeare) or a .txt/.jsonl file or "
        "directory (default: the corpus the run was trained on)",
    )
    parser.add_argument(
        "--split",
        choices=("train", "val", "all"),
        help="which part, split as training splits it (default: val for a corpus name or "
        "the run's corpus, all for a file)",
    )
    parser.add_argument(
        "--val-fraction",
        type=float,
        help="the validation fraction of the split (default: the run's, else 0.1)",
    )
    parser.add_argument(
        "--block-size",
        type=positive_int,
        help="tokens per window (default: the run's train.block_size, else max_seq_len)",
    )
    parser.add_argument(
        "--stride",
        type=positive_int,
        help="tokens a window moves by; less than --block-size slides (default: block size)",
    )
    parser.add_argument(
        "--max-tokens",
        type=positive_int,
        help="score only the first N tokens of the data",
    )
    _out_argument(parser)
    parser.set_defaults(batch_size=8)


def perplexity_command(args: argparse.Namespace) -> int:
    from attnkit.checkpoints import load
    from attnkit.evaluation import eval_token_ids, perplexity, run_settings
    from attnkit.models.gpt import GPT
    from attnkit.text.corpora import NAMED

    settings = run_settings(args.model)
    data = args.data or settings.get("corpus")
    if data is None:
        raise UsageError(
            f"--model {args.model!r} has no run_config.json naming its corpus; give --data"
        )
    split = args.split or ("val" if args.data is None or data in NAMED else "all")
    val_fraction = (
        args.val_fraction if args.val_fraction is not None else settings.get("val_fraction", 0.1)
    )
    device, dtype = device_and_dtype(args)
    model = load(args.model, device=device, dtype=dtype)
    if not isinstance(model, GPT):
        raise ValueError(
            f"--model {args.model!r} is a {model.config.arch!r} model; perplexity needs a GPT"
        )
    tok = model.meta.tokenizer
    if tok is None:
        raise ValueError(f"--model {args.model!r} has no tokenizer; perplexity needs one")
    block = args.block_size or min(
        settings.get("block_size", model.config.max_seq_len), model.config.max_seq_len
    )
    if args.stride is not None and args.stride > block:
        raise UsageError(f"--stride {args.stride} exceeds the block size {block}")
    ids = eval_token_ids(tok, data, split, val_fraction)
    if args.max_tokens:
        ids = ids[: args.max_tokens]
    result = perplexity(model, ids, block, args.stride, args.batch_size)
    head = {"model": str(args.model), "data": str(data), "split": split}
    if split != "all":
        head["val_fraction"] = val_fraction
    return _emit({**head, **result}, args.out)


def classification_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="a classification checkpoint directory")
    parser.add_argument("--file", required=True, help="labelled texts: .csv, .tsv or .jsonl")
    parser.add_argument("--text-column", default="text")
    parser.add_argument("--label-column", default="label")
    _out_argument(parser)


def classification_command(args: argparse.Namespace) -> int:
    from attnkit.checkpoints import load
    from attnkit.evaluation import evaluate_classifier
    from attnkit.tasks.classification import Classifier

    device, dtype = device_and_dtype(args)
    clf = Classifier(load(args.model, device=device, dtype=dtype))
    result = evaluate_classifier(
        clf, args.file, args.text_column, args.label_column, args.batch_size
    )
    return _emit({"model": str(args.model), "file": str(args.file), **result}, args.out)


def sts_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", default="minilm", help="an encoder: minilm or a directory (default: minilm)"
    )
    parser.add_argument(
        "--file", required=True, help="scored sentence pairs: .tsv/.txt/.csv (STS) or .jsonl"
    )
    _out_argument(parser)


def sts_command(args: argparse.Namespace) -> int:
    from attnkit.cli.embed import load_encoder
    from attnkit.evaluation import evaluate_sts

    result = evaluate_sts(load_encoder(args), args.file, args.batch_size)
    return _emit({"model": str(args.model), "file": str(args.file), **result}, args.out)
