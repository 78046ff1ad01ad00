"""``attnkit bench attention``: every attention backend next to raw PyTorch SDPA.

Two sections, one run:

* **dense**: for each sequence length N, forward and forward+backward time, throughput relative
  to ``torch.nn.functional.scaled_dot_product_attention`` called directly, GFLOP/s, peak memory
  and the largest difference from the SDPA output, for ``attention(..., backend=b)`` with each
  backend b and for a plain matmul-softmax-matmul ("naive"; skipped where its N x N scores
  would not fit in memory).
* **window**: sliding-window attention (causal, window w) against dense causal SDPA at the
  same N: speed-up and peak memory.

A third table checks the figures attnkit promises (see :data:`TARGETS`), each marked pass or
fail with both sides printed. Results go to ``<out>/attention.json`` and a log-log plot of time
and memory against N to ``<out>/attention.png``.

Shapes are (B, H, N, D) = (1, 8, N, 64) by default. FLOPs count the two matmuls over the
(query, key) pairs the mask allows, 4 * B * H * D per pair forward; forward+backward counts 3.5
times that (the backward does 2.5 times the forward's matmul work).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from attnkit.bench.common import (
    GiB,
    MiB,
    ProbeCase,
    Table,
    available_memory_bytes,
    environment,
    fmt_bytes,
    fmt_ratio,
    fmt_seconds,
    measure_peak_memories,
    plot_loglog,
    resolve_device,
    synchronize,
    time_interleaved,
    write_json,
)

REFERENCE = "sdpa (raw)"
DENSE_BACKENDS = ("auto", "sdpa", "math", "flex", "naive")
WINDOW_BACKENDS = ("auto", "windowed", "flex", "naive")

# Defaults of the options left unset: the full run, and --quick (a few minutes on a CPU, still
# reaching every target's N). "window_sizes": None means the same as "sizes".
FULL = dict(
    sizes=[1024 * 2**i for i in range(7)],
    window_sizes=None,
    dense_max=None,
    backends=list(DENSE_BACKENDS),
    window_backends=["auto", "flex", "naive"],
    reference_max=None,
    repeat=5,
    min_seconds=1.0,
    max_seconds=10.0,
)
QUICK = dict(
    sizes=[1024, 2048, 4096],
    window_sizes=[16384, 65536],
    dense_max=16384,
    backends=["auto", "sdpa", "naive"],
    window_backends=["auto"],
    reference_max=2048,
    repeat=3,
    min_seconds=0.5,
    max_seconds=3.0,
)
SLOW_REFERENCES = ("naive", "math")  # what --reference-max limits
DTYPES = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float64": torch.float64,
}
MODES = ("fwd", "fwd_bwd")
BWD_FLOP_FACTOR = 3.5  # forward + backward FLOPs relative to forward

# Share of the free memory a run may plan to use for N x N scores (naive, math): the rest is
# left to the machine and whoever else is on it.
MEMORY_SHARE = {"cpu": 0.4, "cuda": 0.8}

# The figures this benchmark checks: (key, description, target text, comparison).
TARGETS = {
    "dense_fwd": "auto >= 0.95x raw SDPA throughput, dense causal forward, N=4096",
    "dense_fwd_bwd": "auto >= 0.95x raw SDPA throughput, dense causal fwd+bwd, N=4096",
    "window_fwd": "window 512 forward >= 8x faster than dense causal SDPA, N=16384",
    "window_fwd_bwd": "window 512 fwd+bwd >= 5x faster than dense causal SDPA, N=16384",
    "window_mem": "window 512 fwd+bwd peak memory < 2 GiB, N=65536",
    "exact_mem": "exact attention (auto, dense causal) forward adds < 300 MiB, N=16384",
}


# --------------------------------------------------------------------------------------------
# the operations being measured
# --------------------------------------------------------------------------------------------


def naive_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, window: int | None = None
):
    """matmul -> mask -> softmax -> matmul, materialising the (B, H, N, N) scores."""
    n_q, n_k = q.shape[-2], k.shape[-2]
    scores = (q @ k.transpose(-2, -1)) * (q.shape[-1] ** -0.5)  # (B, H, Tq, Tk)
    if causal or window is not None:
        i = torch.arange(n_q, device=q.device)[:, None] + (n_k - n_q)
        j = torch.arange(n_k, device=q.device)[None, :]
        allowed = torch.ones(n_q, n_k, dtype=torch.bool, device=q.device)
        if causal:
            allowed &= j <= i
        if window is not None:
            allowed &= (i - j < window) if causal else ((i - j).abs() < window)
        scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v  # (B, H, Tq, D)


def _impl_fn(impl: str, causal: bool, window: int | None) -> Callable[..., torch.Tensor]:
    """impl: "sdpa (raw)", "naive" or an attnkit backend name."""
    if impl == REFERENCE:
        if window is not None:
            raise ValueError("raw SDPA is the dense reference; it takes no window")
        return lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    if impl == "naive":
        return lambda q, k, v: naive_attention(q, k, v, causal, window)
    from attnkit.attention import attention

    return lambda q, k, v: attention(q, k, v, causal=causal, window=window, backend=impl)


def _inputs(
    n: int, shape: tuple[int, int, int], dtype: torch.dtype, device: torch.device, seed: int
):
    b, h, d = shape
    gen = torch.Generator(device="cpu").manual_seed(seed + n)
    q, k, v = (
        torch.randn(b, h, n, d, generator=gen, dtype=torch.float32).to(device=device, dtype=dtype)
        for _ in range(3)
    )  # (B, H, N, D)
    grad_out = torch.randn(b, h, n, d, generator=gen, dtype=torch.float32).to(
        device=device, dtype=dtype
    )
    return q, k, v, grad_out


def _make_op(fn: Callable, mode: str, q, k, v, grad_out) -> Callable[[], Any]:
    if mode == "fwd":

        def forward():
            with torch.no_grad():
                return fn(q, k, v)

        return forward
    qg, kg, vg = (t.detach().requires_grad_(True) for t in (q, k, v))

    def forward_backward():
        out = fn(qg, kg, vg)
        return torch.autograd.grad(out, (qg, kg, vg), grad_out)  # fresh gradients each call

    return forward_backward


def memory_case(
    impl: str,
    n: int,
    shape: tuple[int, int, int],
    dtype: str,
    device: str,
    causal: bool,
    window: int | None,
    mode: str,
    seed: int,
) -> Callable[[], Any]:
    """Build the inputs of one measurement in a memory-probe process; returns the operation."""
    q, k, v, grad_out = _inputs(n, shape, DTYPES[dtype], torch.device(device), seed)
    return _make_op(_impl_fn(impl, causal, window), mode, q, k, v, grad_out)


# --------------------------------------------------------------------------------------------
# sizes, FLOPs, memory estimates
# --------------------------------------------------------------------------------------------


def allowed_pairs(n: int, causal: bool, window: int | None) -> int:
    """Number of (query, key) pairs attention computes for length n."""
    if window is None or window >= n:
        return n * (n + 1) // 2 if causal else n * n
    w = window
    if causal:  # query i sees min(i + 1, w) keys
        return w * (w + 1) // 2 + (n - w) * w
    # |i - j| < w: the full band minus the two corners cut off at the ends
    return n * (2 * w - 1) - w * (w - 1)


def flops(
    n: int, shape: tuple[int, int, int], causal: bool, window: int | None, mode: str
) -> float:
    b, h, d = shape
    fwd = 4.0 * b * h * d * allowed_pairs(n, causal, window)
    return fwd if mode == "fwd" else fwd * BWD_FLOP_FACTOR


def score_bytes_estimate(
    impl: str, n: int, shape: tuple[int, int, int], dtype: torch.dtype, mode: str
) -> int:
    """Rough peak bytes of the N x N tensors an impl materialises; 0 for fused kernels."""
    b, h, _ = shape
    elem = torch.empty((), dtype=dtype).element_size()
    if impl == "naive":
        copies = 3 if mode == "fwd" else 5  # scores, masked scores, weights (+ their gradients)
    elif impl == "math":
        elem = max(elem, 4)  # computed in float32 at least
        copies = 5 if mode == "fwd" else 8
    else:
        return 0
    return b * h * n * n * elem * copies + n * n  # + the bool mask


# --------------------------------------------------------------------------------------------
# results
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Pass:
    """One (impl, N, mode) measurement; ``skipped`` says why a number is missing."""

    seconds: float | None = None
    gflops: float | None = None
    vs_reference: float | None = None  # reference time / this time (>1 = faster)
    peak_bytes: int | None = None
    skipped: str | None = None
    memory_skipped: str | None = None


@dataclasses.dataclass
class Row:
    section: str  # "dense" or "window"
    n: int
    impl: str
    window: int | None
    causal: bool
    backend: str | None = None  # what attnkit ran (auto's choice)
    max_abs_err: float | None = None
    fwd: Pass = dataclasses.field(default_factory=Pass)
    fwd_bwd: Pass = dataclasses.field(default_factory=Pass)

    def get(self, mode: str) -> Pass:
        return self.fwd if mode == "fwd" else self.fwd_bwd

    @property
    def label(self) -> str:
        if self.impl == REFERENCE and self.section == "window":
            name = "dense sdpa (raw)"
        elif self.impl in (REFERENCE, "naive"):
            name = self.impl
        else:
            name = f"attnkit {self.impl}"
        return f"{name} w={self.window}" if self.window is not None else name


def _plan_backend(
    impl: str, q: torch.Tensor, causal: bool, window: int | None, grad: bool
) -> str | None:
    if impl in (REFERENCE, "naive"):
        return None
    from attnkit.attention import explain

    t = q.detach().requires_grad_(grad)
    return explain(t, t, t, causal=causal, window=window, backend=impl).backend


def _short(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return text if len(text) <= 160 else text[:157] + "..."


# --------------------------------------------------------------------------------------------
# running a section at one N
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Settings:
    shape: tuple[int, int, int]
    dtype: torch.dtype
    device: torch.device
    warmup: int
    repeat: int
    min_seconds: float
    max_seconds: float
    memory: bool
    seed: int
    probe_timeout: float | None
    reference_max: int | None = None

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).removeprefix("torch.")


def _skip_reason(
    impl: str,
    n: int,
    mode: str,
    s: Settings,
    budget: int,
    dense_max: int | None,
    window: int | None,
) -> str | None:
    if impl == "flex" and mode == "fwd_bwd" and s.device.type == "cpu":
        return "FlexAttention has no backward on CPU"
    if impl == REFERENCE and window is not None and dense_max is not None and n > dense_max:
        return f"dense reference not run above N={dense_max} (--dense-max)"
    if impl in SLOW_REFERENCES and s.reference_max is not None and n > s.reference_max:
        return f"not run above N={s.reference_max} (--reference-max)"
    need = score_bytes_estimate(impl, n, s.shape, s.dtype, mode)
    if need > budget:
        return f"N x N scores need ~{fmt_bytes(need)}, over the {fmt_bytes(budget)} budget"
    return None


def run_point(
    section: str,
    n: int,
    impls: list[str],
    causal: bool,
    window: int | None,
    s: Settings,
    dense_max: int | None = None,
    log: Callable[[str], None] = print,
    known_reference: Row | None = None,
) -> list[Row]:
    """Measure every impl at one N. The first impl is the reference for ratios and errors;
    ``known_reference`` is its row measured earlier (same inputs), reused instead of re-run."""
    budget = int(MEMORY_SHARE.get(s.device.type, 0.5) * available_memory_bytes(s.device))
    q, k, v, grad_out = _inputs(n, s.shape, s.dtype, s.device, s.seed)
    rows = []
    for impl in impls:
        w = None if impl == REFERENCE else window
        rows.append(Row(section, n, impl, w, causal))
    if known_reference is not None:
        if known_reference.impl != rows[0].impl or known_reference.n != n:
            raise ValueError(
                f"known_reference must be the {rows[0].impl} row at N={n}, got "
                f"{known_reference.impl} at N={known_reference.n}"
            )
        rows[0] = dataclasses.replace(known_reference, section=section, max_abs_err=None)
    todo = rows[1:] if known_reference is not None else rows
    ops: dict[str, dict[str, Callable]] = {m: {} for m in MODES}
    first_calls: dict[str, dict[str, list[float]]] = {m: {} for m in MODES}
    outputs: dict[str, torch.Tensor] = {}
    for row in todo:
        fn = _impl_fn(row.impl, causal, row.window)
        for mode in MODES:
            p = row.get(mode)
            p.skipped = _skip_reason(row.impl, n, mode, s, budget, dense_max, window)
            if p.skipped:
                continue
            try:
                plan = _plan_backend(row.impl, q, causal, row.window, grad=mode == "fwd_bwd")
                if plan is not None and row.backend is None:
                    row.backend = plan
                elif plan is not None and plan != row.backend:
                    row.backend = f"{row.backend}/{plan}"  # forward / training choice differ
                op = _make_op(fn, mode, q, k, v, grad_out)
                synchronize(s.device)
                t0 = time.perf_counter()
                result = op()  # first call: checks it runs, compiles what needs compiling
                synchronize(s.device)
                first = time.perf_counter() - t0
                if mode == "fwd":
                    outputs[row.impl] = result
                del result
                ops[mode][row.impl] = op
                if s.warmup == 0 and "flex" not in (row.backend or ""):
                    first_calls[mode][row.impl] = [
                        first
                    ]  # nothing compiled: a sample like the rest
            except Exception as e:  # a backend that cannot run here: reported, not fatal
                p.skipped = f"error: {_short(e)}"
    # errors against the reference, or (window section) against naive when it ran
    ref_impl = rows[0].impl if section == "dense" else "naive"
    ref_out = outputs.get(ref_impl)
    if ref_out is not None:
        for row in rows:
            if row.impl in outputs and row.window == window:
                row.max_abs_err = float((outputs[row.impl].float() - ref_out.float()).abs().max())
    outputs.clear()
    for mode in MODES:
        if not ops[mode]:
            continue
        log(f"  [{section} N={n}] timing {mode.replace('_', '+')}: {', '.join(ops[mode])}")
        times = time_interleaved(
            ops[mode],
            warmup=s.warmup,
            repeat=s.repeat,
            device=s.device,
            min_seconds=s.min_seconds,
            max_seconds=s.max_seconds,
            samples=first_calls[mode],
        )
        ref_time = (
            rows[0].get(mode).seconds if known_reference is not None else times.get(rows[0].impl)
        )
        for row in todo:
            p = row.get(mode)
            if row.impl not in times:
                continue
            p.seconds = times[row.impl]
            p.gflops = flops(n, s.shape, causal, row.window, mode) / p.seconds / 1e9
            if ref_time is not None:
                p.vs_reference = ref_time / p.seconds
    ops.clear()
    del q, k, v, grad_out
    if s.memory:
        _measure_memory(todo, n, causal, s, log)
    return rows


def _measure_memory(
    rows: list[Row], n: int, causal: bool, s: Settings, log: Callable[[str], None]
) -> None:
    cases, slots = [], []
    # Priming: each operation once at a small N, so lazy set-up (autograd threads, kernel
    # dispatch, allocator pools) lands in no one's reading; these readings are dropped.
    primed = set()
    for row in rows:
        for mode in MODES:
            if row.get(mode).skipped or (row.impl, mode) in primed:
                continue
            primed.add((row.impl, mode))
            kwargs = dict(
                impl=row.impl,
                n=min(n, 256),
                shape=s.shape,
                dtype=s.dtype_name,
                device=str(s.device),
                causal=causal,
                window=row.window,
                mode=mode,
                seed=s.seed,
            )
            cases.append(ProbeCase(memory_case, kwargs=kwargs, warmup=False))
            slots.append(None)
    for row in rows:
        for mode in MODES:
            p = row.get(mode)
            if p.skipped:
                continue
            compiled = "flex" in (row.backend or "")
            kwargs = dict(
                impl=row.impl,
                n=n,
                shape=s.shape,
                dtype=s.dtype_name,
                device=str(s.device),
                causal=causal,
                window=row.window,
                mode=mode,
                seed=s.seed,
            )
            cases.append(ProbeCase(memory_case, kwargs=kwargs, warmup=compiled))
            slots.append(p)
    if not cases:
        return
    log(
        f"  [{rows[0].section} N={n}] peak memory of {sum(p is not None for p in slots)} operations "
        "(separate process)"
    )
    try:
        readings = measure_peak_memories(cases, device=s.device, timeout=s.probe_timeout)
    except Exception as e:  # the probe process died (out of memory, timeout)
        for p in slots:
            p.memory_skipped = f"memory probe failed: {_short(e)}"
        return
    for p, r in zip(slots, readings):
        if p is None:
            continue
        if isinstance(r, Exception):
            p.memory_skipped = _short(r)
        else:
            p.peak_bytes = r.peak_bytes


# --------------------------------------------------------------------------------------------
# checks against the targets
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Check:
    key: str
    target: str
    attnkit: str
    reference: str
    value: str
    passed: bool | None  # None: not measured in this run
    note: str = ""

    @property
    def mark(self) -> str:
        return {True: "PASS", False: "FAIL", None: "n/a"}[self.passed]


def _find(
    rows: list[Row], section: str, n: int, impl: str, window: int | None = None
) -> Row | None:
    for r in rows:
        if (
            r.section == section
            and r.n == n
            and r.impl == impl
            and (window is None or r.window == window)
        ):
            return r
    return None


def evaluate_checks(rows: list[Row], window: int, causal: bool) -> list[Check]:
    checks = []

    def missing(key: str, why: str) -> Check:
        return Check(key, TARGETS[key], "-", "-", "-", None, why)

    for key, mode in (("dense_fwd", "fwd"), ("dense_fwd_bwd", "fwd_bwd")):
        row, ref = _find(rows, "dense", 4096, "auto"), _find(rows, "dense", 4096, REFERENCE)
        if not causal:
            checks.append(missing(key, "run was not causal (--no-causal)"))
        elif row is None or ref is None or row.get(mode).vs_reference is None:
            checks.append(missing(key, "N=4096 not in the dense sizes, or auto not run"))
        else:
            r = row.get(mode).vs_reference
            checks.append(
                Check(
                    key,
                    TARGETS[key],
                    fmt_seconds(row.get(mode).seconds),
                    fmt_seconds(ref.get(mode).seconds),
                    fmt_ratio(r),
                    r >= 0.95,
                )
            )
    for key, mode, need in (("window_fwd", "fwd", 8.0), ("window_fwd_bwd", "fwd_bwd", 5.0)):
        row = _find(rows, "window", 16384, "auto", window)
        ref = _find(rows, "window", 16384, REFERENCE)
        if window != 512:
            checks.append(missing(key, f"run used window {window}, the target is for 512"))
        elif row is None or ref is None or row.get(mode).vs_reference is None:
            checks.append(missing(key, "N=16384 not in the window sizes, or a side was skipped"))
        else:
            r = row.get(mode).vs_reference
            checks.append(
                Check(
                    key,
                    TARGETS[key],
                    fmt_seconds(row.get(mode).seconds),
                    fmt_seconds(ref.get(mode).seconds),
                    fmt_ratio(r),
                    r >= need,
                )
            )
    row = _find(rows, "window", 65536, "auto", window)
    if window != 512:
        checks.append(missing("window_mem", f"run used window {window}, the target is for 512"))
    elif row is None or row.fwd_bwd.peak_bytes is None:
        checks.append(
            missing("window_mem", "N=65536 not in the window sizes, or memory not measured")
        )
    else:
        b = row.fwd_bwd.peak_bytes
        checks.append(
            Check("window_mem", TARGETS["window_mem"], fmt_bytes(b), "-", fmt_bytes(b), b < 2 * GiB)
        )
    row = _find(rows, "dense", 16384, "auto") or _find(rows, "window", 16384, "auto-dense")
    if not causal and row is not None and row.section == "dense":
        row = _find(rows, "window", 16384, "auto-dense")
    ref = _find(rows, "dense", 16384, REFERENCE) or _find(rows, "window", 16384, REFERENCE)
    if row is None or row.fwd.peak_bytes is None:
        checks.append(missing("exact_mem", "N=16384 not measured, or memory not measured"))
    else:
        b = row.fwd.peak_bytes
        ref_b = (
            fmt_bytes(ref.fwd.peak_bytes)
            if ref is not None and ref.fwd.peak_bytes is not None
            else "-"
        )
        checks.append(
            Check(
                "exact_mem", TARGETS["exact_mem"], fmt_bytes(b), ref_b, fmt_bytes(b), b < 300 * MiB
            )
        )
    return checks


# --------------------------------------------------------------------------------------------
# printing and plotting
# --------------------------------------------------------------------------------------------


def _cell_time(p: Pass) -> str:
    return fmt_seconds(p.seconds) if p.seconds is not None else ("skip" if p.skipped else "-")


def _cell_mem(p: Pass) -> str:
    if p.peak_bytes is not None:
        return fmt_bytes(p.peak_bytes)
    return "skip" if (p.skipped or p.memory_skipped) else "-"


def _cell_num(x: float | None, fmt: str = "{:.1f}") -> str:
    return fmt.format(x) if x is not None else "-"


def render_dense(rows: list[Row], title: str) -> str:
    t = Table(
        [
            "N",
            "impl",
            "runs",
            "fwd",
            "vs SDPA",
            "GFLOP/s",
            "fwd+bwd",
            "vs SDPA",
            "GFLOP/s",
            "peak fwd",
            "peak fwd+bwd",
            "max|err|",
        ],
        title=title,
        align="rllrrrrrrrrr",
    )
    last_n = None
    for r in rows:
        if last_n is not None and r.n != last_n:
            t.add_separator()
        last_n = r.n
        t.add_row(
            r.n,
            r.label,
            r.backend or "-",
            _cell_time(r.fwd),
            fmt_ratio(r.fwd.vs_reference),
            _cell_num(r.fwd.gflops),
            _cell_time(r.fwd_bwd),
            fmt_ratio(r.fwd_bwd.vs_reference),
            _cell_num(r.fwd_bwd.gflops),
            _cell_mem(r.fwd),
            _cell_mem(r.fwd_bwd),
            "-" if r.max_abs_err is None else f"{r.max_abs_err:.1e}",
        )
    return t.render()


def render_window(rows: list[Row], title: str) -> str:
    t = Table(
        [
            "N",
            "impl",
            "runs",
            "fwd",
            "speed-up",
            "fwd+bwd",
            "speed-up",
            "peak fwd",
            "peak fwd+bwd",
            "max|err|",
        ],
        title=title,
        align="rllrrrrrrr",
    )
    last_n = None
    for r in rows:
        if last_n is not None and r.n != last_n:
            t.add_separator()
        last_n = r.n
        t.add_row(
            r.n,
            r.label,
            r.backend or "-",
            _cell_time(r.fwd),
            fmt_ratio(r.fwd.vs_reference),
            _cell_time(r.fwd_bwd),
            fmt_ratio(r.fwd_bwd.vs_reference),
            _cell_mem(r.fwd),
            _cell_mem(r.fwd_bwd),
            "-" if r.max_abs_err is None else f"{r.max_abs_err:.1e}",
        )
    return t.render()


def render_checks(checks: list[Check]) -> str:
    t = Table(
        ["target", "attnkit", "reference", "measured", "result"], title="Targets", align="lrrrl"
    )
    for c in checks:
        t.add_row(
            c.target, c.attnkit, c.reference, c.value, c.mark + (f" ({c.note})" if c.note else "")
        )
    return t.render()


def _notes(rows: list[Row]) -> list[str]:
    seen: dict[str, list[str]] = {}
    for r in rows:
        if r.impl == "auto-dense":  # printed on its own line
            continue
        for mode in MODES:
            p = r.get(mode)
            for why in (p.skipped, p.memory_skipped):
                if why:
                    seen.setdefault(f"{r.label} {mode.replace('_', '+')}: {why}", []).append(
                        str(r.n)
                    )
    return [f"  skipped {what} (N={','.join(ns)})" for what, ns in seen.items()]


def plot(rows: list[Row], path: Path, device: str) -> Path:
    def series(mode: str, attr: str) -> dict[str, list[tuple[float, float | None]]]:
        out: dict[str, list[tuple[float, float | None]]] = {}
        for r in rows:
            if r.impl == "auto-dense":
                continue
            name = (
                REFERENCE if r.impl == REFERENCE else r.label
            )  # one line for SDPA over both sections
            value = getattr(r.get(mode), attr)
            if attr == "peak_bytes" and value is not None:
                value = value / MiB
            pts = out.setdefault(name, [])
            if all(x != r.n for x, _ in pts):
                pts.append((r.n, value))
        return out

    panels = [
        ("forward time", "seconds", series("fwd", "seconds")),
        ("forward + backward time", "seconds", series("fwd_bwd", "seconds")),
        ("peak memory added, forward + backward", "MiB", series("fwd_bwd", "peak_bytes")),
    ]
    windowed = {r.label: {"linestyle": "--"} for r in rows if r.window is not None}
    return plot_loglog(path, panels, title=f"attnkit attention on {device}", styles=windowed)


# --------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------


def _sizes(text: str) -> list[int]:
    from attnkit.cli import size_list  # the same parsing as every other size option

    return size_list(text)


def _names(allowed: tuple[str, ...]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        names = [x.strip() for x in text.split(",") if x.strip()]
        bad = [x for x in names if x not in allowed]
        if bad or not names:
            raise argparse.ArgumentTypeError(
                f"expected a comma-separated subset of {','.join(allowed)}; got {text!r}"
            )
        return names

    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from attnkit.cli import positive_int

    def default(key: str) -> str:
        full, quick = FULL[key], QUICK[key]
        show = lambda v: (
            ",".join(map(str, v)) if isinstance(v, list) else ("none" if v is None else str(v))
        )
        return f"(default {show(full)}; --quick: {show(quick)})"

    parser.add_argument(
        "--quick",
        action="store_true",
        help="a small run that still reaches every target's N: a few minutes on a CPU",
    )
    parser.add_argument(
        "--sizes",
        type=_sizes,
        metavar="N,N,...",
        help=f"dense section sequence lengths, e.g. 1k,2k,4k {default('sizes')}",
    )
    parser.add_argument(
        "--window-sizes",
        type=_sizes,
        metavar="N,N,...",
        help="sliding-window section lengths (default: --sizes; --quick: 16k,64k)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("bench_out"),
        metavar="DIR",
        help="where attention.json and attention.png go (default: bench_out)",
    )
    parser.add_argument(
        "--device", default="auto", help="cpu, cuda or auto (default: cuda if available)"
    )
    parser.add_argument("--dtype", default="float32", choices=tuple(DTYPES))
    parser.add_argument(
        "--causal",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="causal masking in the dense section (default: causal)",
    )
    parser.add_argument(
        "--window",
        type=positive_int,
        default=512,
        metavar="W",
        help="window of the sliding-window section (default 512)",
    )
    parser.add_argument(
        "--backends",
        type=_names(DENSE_BACKENDS),
        help=f"dense section, each next to raw SDPA {default('backends')}",
    )
    parser.add_argument(
        "--window-backends",
        type=_names(WINDOW_BACKENDS),
        help=f"window section, each next to dense causal SDPA {default('window_backends')}",
    )
    parser.add_argument(
        "--dense-max",
        type=positive_int,
        metavar="N",
        help=f"longest N at which the window section runs dense SDPA {default('dense_max')}",
    )
    parser.add_argument(
        "--reference-max",
        type=positive_int,
        metavar="N",
        help="longest N for the slow N x N references, naive and math; they are also "
        f"skipped where their scores would not fit in memory {default('reference_max')}",
    )
    parser.add_argument("--batch", type=positive_int, default=1, metavar="B")
    parser.add_argument("--heads", type=positive_int, default=8, metavar="H")
    parser.add_argument("--head-dim", type=positive_int, default=64, metavar="D")
    parser.add_argument(
        "--repeat", type=positive_int, help=f"timed rounds per measurement {default('repeat')}"
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=0,
        help="untimed calls before timing, besides the first call that checks the output "
        "(default 0)",
    )
    parser.add_argument(
        "--min-seconds",
        type=float,
        help=f"keep timing a measurement at least this long {default('min_seconds')}",
    )
    parser.add_argument(
        "--max-seconds",
        type=float,
        help="stop timing a measurement after this long; there is always one timed "
        f"round besides the first, checking call {default('max_seconds')}",
    )
    parser.add_argument(
        "--no-memory", dest="memory", action="store_false", help="skip peak-memory probes"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    """Every preset option: the value given, else the --quick or full default."""
    preset = QUICK if args.quick else FULL
    got = {
        key: getattr(args, key) if getattr(args, key) is not None else preset[key] for key in FULL
    }
    if args.window_sizes is None and (args.sizes is not None or not args.quick):
        got["window_sizes"] = got["sizes"]
    return got


def run(args: argparse.Namespace) -> int:
    device = resolve_device(args.device)
    opt = _settings(args)
    if args.warmup < 0:
        raise ValueError(f"--warmup must be >= 0, got {args.warmup}")
    if not opt["max_seconds"] > 0:
        raise ValueError(f"--max-seconds must be > 0, got {opt['max_seconds']}")
    if not 0 <= opt["min_seconds"] <= opt["max_seconds"]:
        raise ValueError(
            f"--min-seconds must be in [0, --max-seconds={opt['max_seconds']}], got {opt['min_seconds']}"
        )
    sizes, window_sizes, dense_max = opt["sizes"], opt["window_sizes"], opt["dense_max"]
    s = Settings(
        shape=(args.batch, args.heads, args.head_dim),
        dtype=DTYPES[args.dtype],
        device=device,
        warmup=args.warmup,
        repeat=opt["repeat"],
        min_seconds=opt["min_seconds"],
        max_seconds=opt["max_seconds"],
        memory=args.memory,
        seed=args.seed,
        probe_timeout=None,
        reference_max=opt["reference_max"],
    )

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    shape_text = f"B={args.batch} H={args.heads} D={args.head_dim} {args.dtype} on {device}"
    log(f"attnkit bench attention: {shape_text}, {torch.get_num_threads()} threads")
    rows: list[Row] = []
    dense_impls = [REFERENCE] + list(opt["backends"])
    for n in sizes:
        rows += run_point("dense", n, dense_impls, args.causal, None, s, log=log)
    window_impls = [REFERENCE] + list(opt["window_backends"])
    for n in window_sizes:
        # dense causal SDPA at this N was measured already when the dense section was causal
        known = _find(rows, "dense", n, REFERENCE) if args.causal else None
        rows += run_point(
            "window",
            n,
            window_impls,
            True,
            args.window,
            s,
            dense_max=dense_max,
            log=log,
            known_reference=known,
        )
        if s.memory and n <= (dense_max or n) and _find(rows, "dense", n, "auto") is None:
            rows.append(_exact_memory_row(n, s, log))
    checks = evaluate_checks(rows, args.window, args.causal)

    dense_rows = [r for r in rows if r.section == "dense"]
    window_rows = [r for r in rows if r.section == "window" and r.impl != "auto-dense"]
    mask = "causal" if args.causal else "no mask"
    print()
    print(
        render_dense(
            dense_rows, f"Dense attention ({mask}), {shape_text}; ratios: raw SDPA time / time"
        )
    )
    print()
    print(
        render_window(
            window_rows,
            f"Sliding window {args.window} (causal) vs dense causal SDPA, "
            f"{shape_text}; speed-up: SDPA time / time",
        )
    )
    extra = [r for r in rows if r.impl == "auto-dense"]
    if extra:
        print(
            "exact attention (attnkit auto, dense causal), peak memory of the forward: "
            + ", ".join(f"N={r.n}: {_cell_mem(r.fwd)}" for r in extra)
        )
    notes = _notes(rows)
    if notes:
        print("\n".join(notes))
    print()
    print(render_checks(checks))

    out_dir = Path(args.out)
    result = {
        "benchmark": "attention",
        "config": {
            "batch": args.batch,
            "heads": args.heads,
            "head_dim": args.head_dim,
            "dtype": args.dtype,
            "device": str(device),
            "causal": args.causal,
            "window": args.window,
            "quick": args.quick,
            **opt,
            "warmup": args.warmup,
            "memory": args.memory,
            "flops": "4*B*H*D per allowed (query, key) pair forward; fwd+bwd = 3.5x forward",
        },
        "environment": environment(),
        "rows": [dataclasses.asdict(r) | {"label": r.label} for r in rows],
        "checks": [dataclasses.asdict(c) | {"result": c.mark} for c in checks],
    }
    json_path = write_json(out_dir / "attention.json", result)
    png_path = plot(rows, out_dir / "attention.png", str(device))
    print(f"\nwrote {json_path} and {png_path}")
    if args.strict and any(c.passed is False for c in checks):
        return 1
    return 0


def _exact_memory_row(n: int, s: Settings, log: Callable[[str], None]) -> Row:
    """Peak memory of attnkit's exact causal attention at N, for the exact-memory target."""
    row = Row("window", n, "auto-dense", None, True, backend="auto")
    cases = []
    for size in (min(n, 256), n):  # the first primes lazy set-up and is dropped
        kwargs = dict(
            impl="auto",
            n=size,
            shape=s.shape,
            dtype=s.dtype_name,
            device=str(s.device),
            causal=True,
            window=None,
            mode="fwd",
            seed=s.seed,
        )
        cases.append(ProbeCase(memory_case, kwargs=kwargs, warmup=False))
    row.fwd_bwd.memory_skipped = "forward only"
    log(f"  [exact N={n}] peak memory of attnkit auto, dense causal forward (separate process)")
    try:
        readings = measure_peak_memories(cases, device=s.device, timeout=s.probe_timeout)
    except Exception as e:
        row.fwd.memory_skipped = f"memory probe failed: {_short(e)}"
        return row
    if isinstance(readings[-1], Exception):
        row.fwd.memory_skipped = _short(readings[-1])
    else:
        row.fwd.peak_bytes = readings[-1].peak_bytes
    return row


def main(argv: list[str] | None = None) -> int:
    """Run as ``python -m attnkit.bench.attention``; same options as ``attnkit bench attention``."""
    from attnkit.cli import main as cli_main

    return cli_main(["bench", "attention", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
