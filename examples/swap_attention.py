"""Swap the attention of a real checkpoint (all-MiniLM-L6-v2) for an approximate variant and
measure how far its outputs move and how its speed changes.

    python examples/swap_attention.py --variant lsh --param n_hashes=4
"""

import argparse

import attnkit
from attnkit.surgery import compare, swap_attention
from attnkit.surgery.swap import parse_params

TEXTS = [
    "He swung the bat and hit the ball over the fence.",
    "A bat flew out of the cave at dusk.",
    "The committee will meet again next Tuesday to discuss the budget.",
    "Transformers compute attention between every pair of tokens.",
]

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--variant", default="local", help="local, bigbird, lsh, performer, linear")
parser.add_argument("--param", action="append", help="NAME=VALUE (default for local: block_size=4)")
parser.add_argument("--rounds", type=int, default=3, help="timed passes over the texts")
args = parser.parse_args()

model = attnkit.load("minilm")
params = args.param or (["block_size=4"] if args.variant == "local" else [])
swapped = swap_attention(model, args.variant, **parse_params(params))
report = compare(model, swapped, TEXTS, rounds=args.rounds)
print(report.format(f"minilm with {args.variant} attention"))
print(f"embedding cosine mean {report.embedding_cos_mean:.6f}")
