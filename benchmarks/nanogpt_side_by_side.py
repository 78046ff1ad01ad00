"""Pre-training side by side with nanoGPT on tinyshakespeare, in one run on one machine.

    python benchmarks/nanogpt_side_by_side.py --nanogpt PATH/TO/nanoGPT [--out bench_out]

Runs, one after the other, with the same 2 CPU threads:

1. nanoGPT's published CPU command for shakespeare_char (4 layers, 4 heads, 128 wide, block 64,
   batch 12, 2000 iterations, lr 1e-3, no dropout, eval_iters 20) on the tinyshakespeare file,
   after its own ``data/shakespeare_char/prepare.py`` (fed the local file, no download);
2. ``attnkit pretrain`` with ``gpt-shakespeare-char-classic`` (the same recipe, step for step),
   ``gpt-shakespeare-char`` (the same model on a shorter, hotter schedule) and
   ``gpt-shakespeare-char-best`` (our best recipe for about 100 s), all on tinyshakespeare.

Each is timed as a whole process (start-up, data, compile and evaluations included), and the
final validation loss is read from its own output. nanoGPT is not part of attnkit: give the
path of a checkout. Prints a table and writes ``nanogpt_side_by_side.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NANOGPT_ARGS = [
    "config/train_shakespeare_char.py",
    "--device=cpu",
    "--compile=False",
    "--eval_iters=20",
    "--log_interval=100",
    "--block_size=64",
    "--batch_size=12",
    "--n_layer=4",
    "--n_head=4",
    "--n_embd=128",
    "--max_iters=2000",
    "--lr_decay_iters=2000",
    "--dropout=0.0",
]
CONFIGS = ("gpt-shakespeare-char-classic", "gpt-shakespeare-char", "gpt-shakespeare-char-best")
TOKENS_PER_ITER = 12 * 64


def tinyshakespeare() -> Path:
    sys.path.insert(0, str(ROOT / "src"))
    from attnkit.text.corpora import tinyshakespeare_path

    return tinyshakespeare_path()


def run_nanogpt(repo: Path, corpus: Path, env: dict) -> dict:
    data = repo / "data" / "shakespeare_char"
    if not (repo / "train.py").is_file() or not (data / "prepare.py").is_file():
        raise SystemExit(
            f"--nanogpt {repo}: not a nanoGPT checkout (no train.py / "
            f"data/shakespeare_char/prepare.py)"
        )
    shutil.copyfile(corpus, data / "input.txt")
    with tempfile.TemporaryDirectory() as shim:  # prepare.py imports requests; the file is local
        Path(shim, "requests.py").write_text("")
        penv = dict(env, PYTHONPATH=shim + os.pathsep + env.get("PYTHONPATH", ""))
        subprocess.run(
            [sys.executable, "prepare.py"],
            cwd=data,
            env=penv,
            check=True,
            stdout=subprocess.DEVNULL,
        )
    shutil.rmtree(repo / "out-shakespeare-char", ignore_errors=True)
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "train.py", *NANOGPT_ARGS],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"nanoGPT failed:\n{proc.stderr[-2000:]}")
    evals = re.findall(r"step (\d+): train loss ([\d.]+), val loss ([\d.]+)", proc.stdout)
    times = [
        float(t) for t in re.findall(r"iter \d+: loss [\d.]+, time ([\d.]+)ms", proc.stdout)[1:]
    ]
    step, _, val = evals[-1]
    iter_ms = sorted(times)[len(times) // 2] if times else float("nan")
    return {
        "name": "nanoGPT (reference)",
        "iters": int(step),
        "wall_s": wall,
        "val_loss": float(val),
        "tokens_per_s": TOKENS_PER_ITER / (iter_ms / 1e3),
        "tokens_per_s_note": "median logged iter",
    }


def run_attnkit(config: str, corpus: Path, env: dict, out: Path) -> dict:
    run_dir = out / f"run-{config}"
    cmd = [
        sys.executable,
        "-m",
        "attnkit",
        "pretrain",
        "--config",
        config,
        "--data",
        str(corpus),
        "--out",
        str(run_dir),
        "--train.progress",
        "false",
    ]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"attnkit pretrain --config {config} failed:\n{proc.stderr[-2000:]}")
    summary = json.loads((run_dir / "summary.json").read_text())
    return {
        "name": f"attnkit {config}",
        "iters": summary["iters"],
        "wall_s": wall,
        "val_loss": summary["val_loss"],
        "tokens_per_s": summary["tokens_per_second"],
        "tokens_per_s_note": "train steps only",
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nanogpt", required=True, type=Path, help="a nanoGPT checkout")
    ap.add_argument("--out", type=Path, default=Path("bench_out"))
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    corpus = tinyshakespeare()
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), PYTHONUNBUFFERED="1")
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"corpus {corpus}; {args.threads} threads; load average before {os.getloadavg()}")
    rows = [run_nanogpt(args.nanogpt.resolve(), corpus, env)]
    print(f"  {rows[-1]['name']}: {rows[-1]['wall_s']:.1f} s, val {rows[-1]['val_loss']:.4f}")
    for config in CONFIGS:
        rows.append(run_attnkit(config, corpus, env, args.out))
        print(f"  {rows[-1]['name']}: {rows[-1]['wall_s']:.1f} s, val {rows[-1]['val_loss']:.4f}")
    ref = rows[0]
    print()
    print(
        f"{'run':40s} {'iters':>5s} {'wall':>8s} {'vs nanoGPT':>10s} {'tokens/s':>9s} {'val loss':>8s}"
    )
    for r in rows:
        r["wall_ratio"] = r["wall_s"] / ref["wall_s"]
        r["tokens_per_s_ratio"] = r["tokens_per_s"] / ref["tokens_per_s"]
        print(
            f"{r['name']:40s} {r['iters']:5d} {r['wall_s']:7.1f}s {r['wall_ratio']:9.2f}x "
            f"{r['tokens_per_s']:9,.0f} {r['val_loss']:8.4f}"
        )
    default, best = rows[2], rows[3]
    checks = [
        (
            "gpt-shakespeare-char: val <= 1.89 in <= 0.7x nanoGPT's wall",
            f"val {default['val_loss']:.4f}, {default['wall_ratio']:.2f}x",
            default["val_loss"] <= 1.89 and default["wall_ratio"] <= 0.7,
        ),
        # the 105 s is nanoGPT's wall on this machine; the host's speed drifts from run
        # to run, so the wall of nanoGPT's run above is the same budget measured now
        (
            "best recipe: val <= 1.75 within nanoGPT's wall of this run",
            f"val {best['val_loss']:.4f}, {best['wall_s']:.1f} s vs {ref['wall_s']:.1f} s",
            best["val_loss"] <= 1.75 and best["wall_s"] <= ref["wall_s"],
        ),
        (
            "best recipe: val <= 1.75 within 105 s of wall (absolute)",
            f"val {best['val_loss']:.4f}, {best['wall_s']:.1f} s",
            best["val_loss"] <= 1.75 and best["wall_s"] <= 105,
        ),
        (
            "tokens/s of the same recipe (classic) vs nanoGPT, target 1.4x",
            f"{rows[1]['tokens_per_s_ratio']:.2f}x",
            rows[1]["tokens_per_s_ratio"] >= 1.4,
        ),
    ]
    print()
    for what, measured, ok in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {what}: {measured}")
    print(f"load average after {os.getloadavg()}")
    from attnkit.bench.report import write_json

    path = write_json(
        args.out / "nanogpt_side_by_side.json",
        {
            "rows": rows,
            "checks": [{"target": w, "measured": m, "ok": o} for w, m, o in checks],
            "nanogpt_args": NANOGPT_ARGS,
        },
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
