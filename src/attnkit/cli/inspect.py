"""``attnkit inspect``: attention maps of one text, with statistics, heatmaps and a viewer.

    attnkit inspect --model minilm --text "The cat sat on the mat." --out runs/inspect
    attnkit inspect --model runs/char --text "ROMEO:" --layers 0,3 --heads 0,1 --out runs/i2

Writes into ``--out``:

* ``layer_<l>.png`` (every captured head of layer l), ``head_<l>_<h>.png`` (the flagged heads,
  or every captured head when ``--heads`` is given), ``rollout.png`` (and ``flow.png`` with
  ``--flow``) when every layer and head is captured;
* ``viewer.html``: the self-contained interactive viewer;
* ``maps.npz``: ``tokens``, ``input_ids``, ``layers``, ``heads``, ``layer_<l>`` (H, T, T)
  float32 for each captured layer, ``rollout``/``flow`` when computed (plain arrays:
  ``np.load(path)`` needs no pickle);
* ``stats.json``: the per-head statistics, labels and the rules behind them;

and prints the flagged heads. ``--timing`` also times the plain forward pass against the
forward pass with every layer captured.

A text of more tokens than the model has positions (``max_seq_len``) is refused with one line
naming both counts; ``--truncate`` keeps its first ``max_seq_len`` tokens instead. Attention
maps that hold NaN or inf (a checkpoint with non-finite weights) are refused too: nothing is
written.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING

from attnkit.cli.types import (
    UsageError,
    add_device_args,
    device_and_dtype,
    index_list,
    positive_int,
)

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import torch

    from attnkit.models.common import ModelBase

MAX_HEAD_PNGS = 16


def inspect_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default="minilm",
        help="known name (minilm), attnkit or Hugging Face directory (default: minilm)",
    )
    parser.add_argument("--text", required=True, help="the text to inspect")
    parser.add_argument(
        "--layers", type=index_list, help="layers to capture, e.g. 0,3 (default: all)"
    )
    parser.add_argument(
        "--heads", type=index_list, help="heads to capture, e.g. 0,5 (default: all)"
    )
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument(
        "--flow",
        action="store_true",
        help="also compute attention flow (max-flow; short texts only)",
    )
    parser.add_argument(
        "--timing",
        action="store_true",
        help="time the forward pass with and without capturing every layer",
    )
    parser.add_argument("--rounds", type=positive_int, default=7, help="timing rounds (default: 7)")
    parser.add_argument("--title", default=None, help="title of the viewer page")
    parser.add_argument(
        "--truncate",
        action="store_true",
        help="keep the first max_seq_len tokens of a longer text (default: refuse it)",
    )
    add_device_args(parser)


def _tokenize(
    model: ModelBase, text: str, truncate: bool = False
) -> tuple[torch.Tensor, list[str]]:
    """The text's token ids (1, T) and tokens. A text of more tokens than the model has
    positions is refused, or cut to its first max_seq_len tokens with ``truncate``."""
    import torch

    tok = model.meta.tokenizer
    if tok is None:
        raise UsageError(
            "the model has no tokenizer (tokenizer.json); expected a checkpoint with one"
        )
    if not text.strip():
        raise UsageError(f"--text {text!r} is empty; expected some text")
    enc = tok.encode(text)
    ids, tokens = list(enc.ids), list(enc.tokens)
    limit = model.config.max_seq_len
    if len(ids) > limit:
        if not truncate:
            raise UsageError(
                f"--text is {len(ids)} tokens long, more than the model's {limit} positions "
                f"(max_seq_len); shorten it, or pass --truncate to keep the first {limit} tokens"
            )
        ids, tokens = ids[:limit], tokens[:limit]
    if not ids:
        raise UsageError(f"--text {text!r} gives no tokens")
    return torch.tensor([ids]), tokens


def inspect_command(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    import attnkit
    from attnkit._util.fs import atomic_write, atomic_write_text
    from attnkit._util.optional import MissingDependency
    from attnkit.inspect import render, stats
    from attnkit.inspect.capture import attention_layers, capture, capture_overhead
    from attnkit.inspect.html import write_viewer

    device, dtype = device_and_dtype(args)
    model = attnkit.load(args.model, device=device, dtype=dtype)
    input_ids, tokens = _tokenize(model, args.text, args.truncate)
    input_ids = input_ids.to(device)
    n_layers = len(attention_layers(model))
    n_heads = model.config.n_heads
    with (
        torch.no_grad(),
        capture(model, layers=args.layers, heads=args.heads, tokens=tokens) as maps,
    ):
        model(input_ids)
    weights = [w.float().cpu() for w in maps.stacked(0)]  # one (H, T, T) per captured layer
    for layer, w in zip(maps.layers, weights):
        if not bool(torch.isfinite(w).all()):
            raise ValueError(
                f"--model {args.model!r}: the attention maps of layer {layer} hold NaN or inf "
                f"(the checkpoint's weights are not finite); expected finite maps, wrote nothing"
            )
    rows = stats.head_stats(maps)
    everything = maps.layers == list(range(n_layers)) and maps.heads == list(range(n_heads))
    roll = stats.rollout(weights) if everything else None
    flow = None
    if args.flow:
        if not everything:
            raise UsageError("--flow needs every layer and head captured; drop --layers/--heads")
        flow = stats.attention_flow(weights)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    flagged = [r for r in rows if r["labels"]]
    picked = (
        [(r["layer"], r["head"]) for r in rows]
        if args.heads is not None
        else [(r["layer"], r["head"]) for r in flagged]
    )
    written: list[Path] = []
    no_plots: MissingDependency | None = None
    try:  # the PNGs need matplotlib; everything else is written without it
        for layer, w in zip(maps.layers, weights):
            written.append(
                render.plot_layer(
                    w, tokens, out / f"layer_{layer}.png", title=f"layer {layer}", heads=maps.heads
                )
            )
        for layer, head in picked[:MAX_HEAD_PNGS]:
            w = weights[maps.layers.index(layer)][maps.heads.index(head)]
            written.append(
                render.plot_head(
                    w, tokens, out / f"head_{layer}_{head}.png", title=f"layer {layer} head {head}"
                )
            )
        if roll is not None:
            written.append(render.plot_rollout(roll, tokens, out / "rollout.png"))
        if flow is not None:
            written.append(
                render.plot_rollout(flow, tokens, out / "flow.png", title="attention flow")
            )
    except MissingDependency as e:
        no_plots = e

    arrays = {
        "tokens": np.array(tokens, dtype=str),
        "input_ids": input_ids[0].cpu().numpy(),
        "layers": np.array(maps.layers),
        "heads": np.array(maps.heads),
    }
    for layer, w in zip(maps.layers, weights):
        arrays[f"layer_{layer}"] = w.numpy().astype(np.float32)
    if roll is not None:
        arrays["rollout"] = roll.numpy()
    if flow is not None:
        arrays["flow"] = flow.numpy()
    written.append(atomic_write(out / "maps.npz", lambda tmp: _save_npz(tmp, arrays)))
    report = {
        "model": str(args.model),
        "text": args.text,
        "tokens": tokens,
        "layers": maps.layers,
        "heads": maps.heads,
        "sources": maps.sources,
        "rules": [dataclasses.asdict(r) for r in stats.RULES],
        "stats": rows,
    }
    written.append(atomic_write_text(out / "stats.json", json.dumps(report, indent=1) + "\n"))
    title = args.title if args.title is not None else f"{args.model}: {args.text[:60]}"
    written.append(
        write_viewer(
            out / "viewer.html",
            tokens,
            weights,
            maps.layers,
            maps.heads,
            stats=rows,
            rollout=roll,
            title=title,
        )
    )

    print(
        f"{len(tokens)} tokens, {len(maps.layers)} layers x {len(maps.heads)} heads captured; "
        f"wrote {len(written)} files to {out}"
    )
    if flagged:
        print("flagged heads:")
        for r in flagged:
            print(f"  layer {r['layer']} head {r['head']}: {r['why']}")
    else:
        print("flagged heads: none")
    if args.timing:
        t = capture_overhead(model, input_ids, rounds=args.rounds)
        print(
            f"capture overhead ({n_layers} layers x {n_heads} heads, {len(tokens)} tokens, best of "
            f"{t['rounds']} rounds): plain forward {t['plain_s'] * 1e3:.2f} ms, with capture "
            f"{t['capture_s'] * 1e3:.2f} ms, ratio {t['ratio']:.2f}x"
        )
    if no_plots is not None:
        raise no_plots  # one line naming the extra to install; the other files are written
    return 0


def _save_npz(path: str, arrays: dict[str, np.ndarray]) -> None:
    import numpy as np

    with open(path, "wb") as f:  # a file object: np.savez would add .npz to a path
        np.savez(f, **arrays)  # type: ignore[arg-type]
