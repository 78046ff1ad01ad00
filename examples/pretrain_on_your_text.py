"""Pre-train a tiny character-level GPT on your own text, then sample from it.

python examples/pretrain_on_your_text.py my_text.txt --steps 300
python examples/pretrain_on_your_text.py            # the library's `shakespeare` corpus
"""

import argparse
import tempfile

import attnkit
from attnkit.training import build, pretrain

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("text", nargs="?", default="shakespeare", help="a .txt file or corpus name")
parser.add_argument("--steps", type=int, default=200)
parser.add_argument("--out", default="", help="run directory (default: a temporary one)")
parser.add_argument("--prompt", default="\n")
args = parser.parse_args()

cfg = build(
    {
        "model": {"n_layer": 2, "n_heads": 4, "d_model": 64, "max_seq_len": 64},
        "data": {"corpus": args.text, "tokenizer": "char"},
        "train": {
            "max_iters": args.steps,
            "batch_size": 8,
            "block_size": 64,
            "warmup_iters": min(20, args.steps // 2),
            "eval_interval": args.steps,
            "eval_iters": 2,
            "log_interval": max(1, args.steps // 4),
        },
    },
    [],
)
out = args.out or tempfile.mkdtemp(prefix="attnkit-pretrain-")
summary = pretrain(cfg, out)
print(f"trained {args.steps} steps into {out}; val loss {summary['best_val_loss']:.3f}")

model = attnkit.load(out).eval()  # the run directory loads like any checkpoint
ids = attnkit.generate(model, args.prompt, max_new_tokens=60, temperature=0.8, top_k=20, seed=0)
print(model.meta.tokenizer.decode(list(ids)))
