"""``attnkit pretrain`` and ``attnkit sample``.

    attnkit pretrain --config configs/gpt-shakespeare-char.toml --data shakespeare --out runs/char \\
        --model.n_layer 4 --train.max_iters 2000
    attnkit pretrain --out runs/char --resume           # continue from the latest checkpoint
    attnkit sample --model runs/char --prompt "ROMEO:" --tokens 300
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from attnkit.training import config as run_config

USAGE = (
    "attnkit pretrain --config NAME|FILE [--data NAME|PATH] --out DIR [--resume] "
    "[--section.key VALUE ...]"
)


def _split_overrides(rest: list[str]) -> list[tuple[str, object]]:
    """``--model.n_layer 4 --train.lr=1e-3`` -> [("model.n_layer", 4), ("train.lr", 0.001)]."""
    pairs: list[tuple[str, object]] = []
    i = 0
    while i < len(rest):
        word = rest[i]
        if not word.startswith("--") or "." not in word.split("=", 1)[0]:
            raise ValueError(
                f"unexpected argument {word!r}; expected --config, --data, --out, "
                f"--resume or a dotted config key such as --train.max_iters 100"
            )
        key = word[2:]
        if "=" in key:
            pairs.append(run_config.parse_override(key))
            i += 1
        else:
            if i + 1 >= len(rest):
                raise ValueError(f"config key {key!r} needs a value, e.g. --{key} VALUE")
            pairs.append(run_config.parse_override(f"{key}={rest[i + 1]}"))
            i += 2
    return pairs


def pretrain_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="attnkit pretrain",
        usage=USAGE,
        description="pre-train a GPT (causal LM) or BERT (masked LM)",
    )
    parser.add_argument("--config", help="a TOML run config (a path or a name in configs/)")
    parser.add_argument(
        "--data",
        help="corpus name (shakespeare, kjv, tinyshakespeare) or a "
        ".txt/.jsonl file or directory; sets data.corpus",
    )
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue from the latest complete checkpoint in --out",
    )
    args, rest = parser.parse_known_args(argv)
    overrides = _split_overrides(rest)
    out = Path(args.out)
    if args.config:
        base = run_config.read_file(run_config.find_config(args.config))
    elif args.resume and (out / "run_config.json").is_file():
        base = run_config.read_file(out / "run_config.json")
        base.get("model", {}).pop("vocab_size", None)
    else:
        raise ValueError(
            "--config is required (e.g. --config gpt-shakespeare-char), except with "
            "--resume on a directory holding run_config.json"
        )
    if args.data:
        overrides.append(("data.corpus", args.data))
    cfg = run_config.build(base, overrides)
    from attnkit.training.loop import pretrain

    pretrain(cfg, out, resume=args.resume)
    return 0


main = pretrain_main  # the command line hands `attnkit pretrain ...` to main(argv)


def sample_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", required=True, help="a checkpoint directory (attnkit pretrain --out)"
    )
    parser.add_argument("--prompt", default="\n", help="text to continue (default: a newline)")
    parser.add_argument("--tokens", type=int, default=300, help="new tokens to generate")
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--top-k", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1337)


def sample_command(args: argparse.Namespace) -> int:
    from attnkit.checkpoints.io import load

    if args.tokens < 1:
        raise ValueError(f"--tokens must be >= 1, got {args.tokens}")
    if args.temperature <= 0:
        raise ValueError(f"--temperature must be > 0, got {args.temperature}")
    model = load(args.model)
    if model.config.arch != "gpt" or getattr(model, "tokenizer", None) is None:
        raise ValueError(
            f"{args.model}: 'sample' needs a GPT checkpoint with a tokenizer.json, "
            f"got arch={model.config.arch!r}"
        )
    tok = model.tokenizer
    ids = tok.encode(args.prompt, add_special_tokens=False).ids
    if not ids:
        raise ValueError(f"--prompt {args.prompt!r} encodes to no tokens with this tokenizer")
    from attnkit.generation import generate

    out = generate(
        model,
        ids,
        args.tokens,
        temperature=args.temperature,
        top_k=args.top_k or None,
        seed=args.seed,
        context="slide",
    )
    sys.stdout.write(tok.decode(out) + "\n")
    return 0
