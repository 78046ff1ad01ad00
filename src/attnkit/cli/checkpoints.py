"""``attnkit convert``: a checkpoint from Hugging Face to attnkit (``--from-hf``) or back.

attnkit convert --from-hf hf-minilm-dir runs/minilm
attnkit convert --to-hf runs/char runs/char-hf
"""

from __future__ import annotations

import argparse
from pathlib import Path

from attnkit.cli.types import UsageError


def convert_arguments(parser: argparse.ArgumentParser) -> None:
    way = parser.add_mutually_exclusive_group(required=True)
    way.add_argument(
        "--from-hf", metavar="DIR", help="Hugging Face directory to convert to attnkit"
    )
    way.add_argument("--to-hf", metavar="DIR", help="attnkit directory to convert to Hugging Face")
    parser.add_argument("out", metavar="OUT", help="output directory")


def convert_command(args: argparse.Namespace) -> int:
    from attnkit.checkpoints import load, save
    from attnkit.checkpoints.hf import export_hf

    src = Path(args.from_hf or args.to_hf)
    if not src.is_dir():
        raise UsageError(f"{src}: not a directory; expected a checkpoint directory")
    model = load(src)  # an attnkit or Hugging Face directory
    if args.from_hf:
        save(model, args.out)
        kind = "attnkit"
    else:
        export_hf(model, args.out)
        kind = "Hugging Face"
    cfg = model.config
    print(
        f"wrote {kind} checkpoint {args.out}: {cfg.arch} {cfg.n_layer}x{cfg.d_model}, "
        f"head={cfg.head}, {model.num_parameters():,} parameters"
    )
    return 0
