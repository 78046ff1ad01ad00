"""Inspect a model: capture MiniLM's attention maps on a sentence, print the head statistics
that stand out, and write the self-contained HTML viewer and a heatmap PNG.

    python examples/inspect_model.py --text "A bat flew out of the cave." --out inspect_out
"""

import argparse
from pathlib import Path

import torch

import attnkit
from attnkit.inspect import capture, render, stats
from attnkit.inspect.html import write_viewer

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--text", default="He swung the bat and hit the ball.")
parser.add_argument("--out", default="inspect_out")
parser.add_argument("--layers", default="0,5", help="comma-separated layer numbers")
args = parser.parse_args()

model = attnkit.load("minilm").eval()
enc = model.meta.tokenizer.encode(args.text)
ids = torch.tensor([enc.ids])  # (1, T)
layers = [int(x) for x in args.layers.split(",")]
with torch.no_grad(), capture(model, layers=layers, tokens=enc.tokens) as maps:
    model.hidden_states(ids)

rows = stats.head_stats(maps)  # one row per (layer, head)
for r in rows:
    if r["labels"]:
        print(f"layer {r['layer']} head {r['head']}: {', '.join(r['labels'])}  ({r['why']})")
out = Path(args.out)
out.mkdir(parents=True, exist_ok=True)
viewer = write_viewer(
    out / "viewer.html", enc.tokens, maps.stacked(), maps.layers, maps.heads, stats=list(rows)
)
first = maps.stacked()[0]  # (H, T, T) of the first captured layer
png = render.plot_layer(first, enc.tokens, out / f"layer{layers[0]}.png", heads=maps.heads)
print(f"{len(enc.tokens)} tokens, {len(layers)} layers x {len(maps.heads)} heads")
print(f"wrote {viewer} and {png}")
