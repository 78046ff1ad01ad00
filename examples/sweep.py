"""Run a tiny sweep: train a few small GPTs on the same token budget through an Optuna study
(a SQLite file in OUT), then print the table. Start the script again in another shell with
the same --out and the two processes split the points.

    python examples/sweep.py --layers 1,2 --tokens 20000 --out sweep_out
"""

import argparse
import tempfile

from attnkit.experiments import Axis, Budget, SweepSpec, grid_points, run

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--layers", default="1,2", help="model.n_layer values to sweep")
parser.add_argument("--widths", default="32", help="model.d_model values to sweep")
parser.add_argument("--tokens", type=float, default=20000, help="training tokens per point")
parser.add_argument("--out", default="")
args = parser.parse_args()

base = {
    "model": {"n_heads": 2, "max_seq_len": 32},
    "data": {"corpus": "shakespeare", "tokenizer": "char"},
    "train": {"batch_size": 4, "block_size": 32, "eval_iters": 2, "warmup_iters": 2},
}
axes = [Axis.parse(f"model.n_layer={args.layers}"), Axis.parse(f"model.d_model={args.widths}")]
spec = SweepSpec(base, tuple(grid_points(axes)), Budget("tokens", args.tokens))
out = args.out or tempfile.mkdtemp(prefix="attnkit-sweep-")
outcome = run(spec, out)  # resumable: run it again after a kill and finished points are kept
print(f"{len(outcome.results.rows)} points in {out} (study {outcome.storage})")
for row in outcome.results.rows:
    print(
        f"n_layer={row['params']['model.n_layer']} d_model={row['params']['model.d_model']}: "
        f"best val loss {row['best_val_loss']:.3f}"
    )
