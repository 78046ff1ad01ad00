"""Choose an attention variant for long inputs: run exact attention and each variant on one
long random input and compare their error against exact attention and their time.

This is one tiny measurement on whatever machine runs it (random q, k, v; one length; the best
of a few runs), meant to show how to compare, not to rank the variants; `attnkit bench
variants` is the benchmark.

    python examples/long_inputs.py --seq-len 4096
"""

import argparse
import functools
import time

import torch

from attnkit.attention import attention, variants

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--seq-len", type=int, default=4096)
parser.add_argument("--heads", type=int, default=4)
parser.add_argument("--repeats", type=int, default=3)
args = parser.parse_args()

torch.manual_seed(0)
shape = (1, args.heads, args.seq_len, 64)  # (B, H, T, D)
q, k, v = (torch.randn(shape) for _ in range(3))


def best_time(fn):
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return out, min(times)


with torch.no_grad():
    exact, t_exact = best_time(lambda: attention(q, k, v, causal=True))
    print(f"N={args.seq_len}, {args.heads} heads, causal; best of {args.repeats} runs")
    print(f"{'attention':<10} {'time ms':>9} {'rel. error':>11}")
    print(f"{'exact':<10} {1e3 * t_exact:>9.1f} {0.0:>11.4f}")
    for name in variants.names():
        attn = variants.get(name)
        out, t = best_time(functools.partial(attn, q, k, v, causal=True))
        err = ((out - exact).norm() / exact.norm()).item()
        print(f"{name:<10} {1e3 * t:>9.1f} {err:>11.4f}")
