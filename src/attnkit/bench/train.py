"""``attnkit bench train``: training throughput and model FLOPs utilisation of a GPT.

Runs full optimizer steps (forward, backward, gradient clipping, AdamW) of the model in a run
config (default ``gpt-shakespeare-char``) on random tokens, and reports tokens/s and MFU: model
FLOPs per second over the peak of this device, where the peak is measured here as the best
dense matmul throughput in the same dtype (or given with ``--peak-tflops``). Model FLOPs per
token are ``6 N + 6 L T C`` (N weights in matmuls incl. the LM head, L layers, T block, C
width; the second term is causal attention's score and value products, forward and backward).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch

from attnkit.bench.harness import environment
from attnkit.bench.report import Report, write_json


@dataclass(frozen=True)
class TrainSettings:
    """One run of ``attnkit bench train``."""

    config: str = "gpt-shakespeare-char"
    vocab: int = 65
    iters: int = 40
    warmup: int = 5
    dtype: str | None = None  # None: the config's
    compile: bool = False
    device: torch.device = torch.device("cpu")
    peak_tflops: float | None = None  # None: measured
    out: Path = Path("bench_out")

    def __post_init__(self) -> None:
        if self.iters < 1 or self.warmup < 0:
            raise ValueError(
                f"--iters must be >= 1 and --warmup >= 0, got {self.iters} and {self.warmup}"
            )


def model_flops_per_token(cfg: Any, block_size: int) -> float:
    C, L, T, V, F = cfg.d_model, cfg.n_layer, block_size, cfg.vocab_size, cfg.d_ff
    attention = 2 * C * C + 2 * C * cfg.n_kv_heads * cfg.head_dim  # q, o and k, v projections
    mlp = (3 if cfg.mlp == "swiglu" else 2) * C * F
    matmul_weights = L * (attention + mlp) + V * C  # the blocks, then the LM head
    return 6.0 * matmul_weights + 6.0 * L * T * C


def measured_peak(device: torch.device, dtype: torch.dtype, n: int | None = None) -> float:
    """Best FLOP/s of an n x n matmul in ``dtype`` on ``device``."""
    n = n or (4096 if device.type == "cuda" else 1024)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(8):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return 2.0 * n**3 / best


def run(args: TrainSettings) -> Report:
    """Time ``args.iters`` optimizer steps after ``args.warmup``; writes train.json."""
    from attnkit.models import build_model
    from attnkit.training import config as run_config
    from attnkit.training import optim, precision
    from attnkit.training.loop import loss_sums

    device = args.device
    cfg = run_config.build(run_config.read_file(run_config.find_config(args.config)), [])
    tc = cfg.train
    dtype_name = args.dtype or tc.dtype
    dtype = precision.check_dtype(dtype_name, device)
    fields = dict(cfg.model, vocab_size=args.vocab)
    fields.setdefault("max_seq_len", tc.block_size)
    from attnkit.models import ModelConfig

    mcfg = ModelConfig(**fields)
    torch.manual_seed(0)
    raw = build_model(mcfg).to(device)
    model = cast(torch.nn.Module, torch.compile(raw)) if args.compile else raw
    opt = optim.make_optimizer(
        raw, tc.lr, tc.weight_decay, (tc.beta1, tc.beta2), device, fused=tc.fused_adamw
    )
    B, T = tc.batch_size, tc.block_size
    g = torch.Generator().manual_seed(0)
    data = torch.randint(0, args.vocab, (args.warmup + args.iters, B, T + 1), generator=g).to(
        device
    )

    def step(i: int) -> None:
        x, y = data[i, :, :-1], data[i, :, 1:]
        with precision.autocast(device, dtype_name):
            loss, _ = loss_sums(model, x, y)
        (loss / y.numel()).backward()
        torch.nn.utils.clip_grad_norm_(raw.parameters(), tc.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)

    for i in range(args.warmup):
        step(i)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for i in range(args.warmup, args.warmup + args.iters):
        step(i)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    tokens_per_second = args.iters * B * T / seconds
    flops = model_flops_per_token(mcfg, T) * tokens_per_second
    peak = args.peak_tflops * 1e12 if args.peak_tflops else measured_peak(device, dtype)
    mfu = flops / peak
    result: dict[str, Any] = {
        "config": args.config,
        "device": str(device),
        "dtype": dtype_name,
        "compile": args.compile,
        "threads": torch.get_num_threads(),
        "parameters": sum(p.numel() for p in raw.parameters()),
        "batch_size": B,
        "block_size": T,
        "iters": args.iters,
        "seconds_per_iter": seconds / args.iters,
        "tokens_per_second": tokens_per_second,
        "model_tflops": flops / 1e12,
        "peak_tflops": peak / 1e12,
        "peak_source": "given" if args.peak_tflops else "measured matmul",
        "mfu": mfu,
        "environment": environment(),
    }
    lines = [
        f"bench train: {args.config} ({result['parameters']:,} parameters) on {device}, "
        f"{dtype_name}{', compiled' if args.compile else ''}, {result['threads']} threads",
        f"  {seconds / args.iters * 1e3:.1f} ms/iter  {tokens_per_second:,.0f} tokens/s  "
        f"{flops / 1e9:.1f} GFLOP/s  MFU {mfu * 100:.1f}% of {peak / 1e9:.1f} GFLOP/s "
        f"({result['peak_source']})",
    ]
    path = write_json(Path(args.out) / "train.json", result)
    lines.append(f"  wrote {path}")
    return Report("\n".join(lines), (path,))
