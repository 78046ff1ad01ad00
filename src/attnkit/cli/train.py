"""``attnkit pretrain``: pre-train a GPT (causal LM), a BERT (masked LM) or an encoder-decoder
(translation/summary pairs, or span corruption on plain text) from a TOML config.

    attnkit pretrain --config gpt-shakespeare-char --data shakespeare --out runs/char \\
        --model.n_layer 4 --train.max_iters 2000
    attnkit pretrain --out runs/char --resume           # continue from the latest checkpoint
    attnkit pretrain --out runs/more --train.init_from runs/char --data more.txt  # start there
    attnkit generate --model runs/char --prompt "ROMEO:" --max-new-tokens 300
    attnkit pretrain --config gpt-shakespeare-char --train.lr 1e-3 --print-config

``--config`` is a TOML file or the name of one shipped in ``attnkit/configs``; any
``--section.key VALUE`` (or ``--section.key=VALUE``) overrides one key of it.
``--print-config`` prints the config those give, every data and train key resolved, as TOML
(a file ``--config`` reads back to the same run), and exits without training.

An ``--out`` that already holds a run is refused (exit 2) unless ``--resume`` or
``--overwrite`` says what to do with it (:mod:`attnkit.training.rundir` has the rules).

Ctrl-C (SIGINT) stops a run with ``attnkit: interrupted`` and status 130, the latest complete
checkpoint kept for ``--resume``. A process started with SIGINT ignored (what a
non-interactive shell does to a command it starts with ``&``) would otherwise train on through
every SIGINT without a word, because Python installs its KeyboardInterrupt handler only when
SIGINT is not ignored at start-up; ``pretrain`` installs it in that case too.
"""

from __future__ import annotations

import argparse
import os
import signal
import threading
from pathlib import Path

from attnkit.cli.types import DEVICE_DTYPES, UsageError
from attnkit.training import config as run_config

USAGE = (
    "attnkit pretrain --config NAME|FILE [--data NAME|PATH] (--out DIR [--resume | --overwrite] "
    "| --print-config) [--device D] [--dtype T] [--section.key VALUE ...]"
)


def split_overrides(rest: list[str]) -> list[tuple[str, object]]:
    """``--model.n_layer 4 --train.lr=1e-3`` -> [("model.n_layer", 4), ("train.lr", 0.001)]."""
    pairs: list[tuple[str, object]] = []
    i = 0
    while i < len(rest):
        word = rest[i]
        if not word.startswith("--") or "." not in word.split("=", 1)[0]:
            raise UsageError(
                f"unexpected argument {word!r}; expected --config, --data, --out, "
                f"--resume, --overwrite or a dotted config key such as --train.max_iters 100"
            )
        key = word[2:]
        if "=" in key:
            pairs.append(run_config.parse_override(key))
            i += 1
        else:
            if i + 1 >= len(rest):
                raise UsageError(f"config key {key!r} needs a value, e.g. --{key} VALUE")
            pairs.append(run_config.parse_override(f"{key}={rest[i + 1]}"))
            i += 2
    return pairs


def pretrain_arguments(parser: argparse.ArgumentParser) -> None:
    parser.usage = USAGE
    parser.add_argument(
        "--config", help="a TOML run config: a path, or a name shipped in attnkit/configs"
    )
    parser.add_argument(
        "--data",
        help="corpus name (shakespeare, kjv, tinyshakespeare) or a "
        ".txt/.jsonl file or directory; for an encoder-decoder (model.arch encdec) also "
        "pairs: bible:en-es (en, en-web, es, fr, it) or a .tsv/.jsonl file of "
        "source/target pairs; sets data.corpus",
    )
    parser.add_argument(
        "--out",
        help="output directory (required unless --print-config). One that already holds a run (checkpoints/, run_config.json, "
        "the model, metrics...) is refused without --resume or --overwrite. A '..' is allowed "
        "only at the start of DIR (../runs/x, not runs/x/../y); an entry of DIR that the run "
        "writes (checkpoints/, step-* folders and their files, run_config.json, metrics, the "
        "model files) may not be a symlink that leads outside DIR",
    )
    ways = parser.add_mutually_exclusive_group()
    ways.add_argument(
        "--resume",
        action="store_true",
        help="continue from the latest complete checkpoint in --out",
    )
    ways.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run in --out: its files are set aside and deleted once the new "
        "run's first checkpoint is complete (if the new run ends before that, the old one is "
        "put back and --resume continues it)",
    )
    parser.add_argument(
        "--device",
        metavar="auto|cpu|cuda[:N]|mps",
        help="sets train.device (default: the config's, else auto)",
    )
    parser.add_argument(
        "--dtype",
        choices=DEVICE_DTYPES,
        help="sets train.dtype, the autocast dtype (default: the config's, else float32)",
    )
    parser.add_argument(
        "--print-config",
        action="store_true",
        help="print the resolved config (after --data and the overrides) as TOML and exit "
        "without training",
    )


def stop_on_sigint() -> None:
    """Make SIGINT raise KeyboardInterrupt even if this process started with it ignored."""
    main = threading.current_thread() is threading.main_thread()
    if main and signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def pretrain_command(args: argparse.Namespace) -> int:
    stop_on_sigint()
    overrides = split_overrides(list(args.rest))
    if args.out is None and not args.print_config:
        raise UsageError("--out DIR is required (the run's directory), except with --print-config")
    out = Path(args.out or ".")
    from attnkit.training import rundir

    if not args.print_config:
        rundir.check_paths(out)
    if args.resume and not args.print_config and int(os.environ.get("RANK", "0")) == 0:
        rundir.recover(out, rundir.has_checkpoint)  # an overwrite killed early: the old run returns
    if args.config:
        base = run_config.read_file(run_config.find_config(args.config))
    elif args.resume and (out / "run_config.json").is_file():
        base = run_config.read_file(out / "run_config.json")
        base.get("model", {}).pop("vocab_size", None)
    elif any(key == "train.init_from" for key, _ in overrides):
        base = {}  # the model, its config and tokenizer come from the checkpoint
    else:
        raise UsageError(
            "--config is required (e.g. --config gpt-shakespeare-char), except with "
            "--resume on a directory holding run_config.json or with --train.init_from DIR"
        )
    if args.data:
        overrides.append(("data.corpus", args.data))
    if args.device:
        overrides.append(("train.device", args.device))
    if args.dtype:
        overrides.append(("train.dtype", args.dtype))
    cfg = run_config.build(base, overrides)
    if args.print_config:
        from attnkit.cli.catalog import config_toml

        run_config.check_train(cfg)
        print(config_toml(cfg), end="")
        return 0
    from attnkit.training.loop import format_summary, pretrain

    if cfg.train.threads:  # torch threads per process: process state, set here
        import torch

        torch.set_num_threads(cfg.train.threads)
    summary = pretrain(cfg, out, resume=args.resume, overwrite=args.overwrite)
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, rank 0 reports
        print(format_summary(summary, out))
    return 0
