"""``attnkit bench attention``: every attention backend next to raw PyTorch SDPA.

Two sections, one run:

* **dense**: for each sequence length N, forward and forward+backward time, throughput relative
  to ``torch.nn.functional.scaled_dot_product_attention`` called directly, GFLOP/s, peak memory
  and the largest difference from the SDPA output, for ``attention(..., backend=b)`` with each
  backend b and for a plain matmul-softmax-matmul ("naive"; skipped where its N x N scores
  would not fit in memory).
* **window**: sliding-window attention (causal, window w) against dense causal SDPA at the
  same N: speed-up and peak memory; beside attnkit's backends, two baselines doing the same
  work written here with PyTorch alone: SDPA given the band as a dense bool mask
  ("sdpa-band", built once outside the timing) and FlexAttention's compiled forward with the
  band as a BlockMask ("flex-band", also built once), so attnkit's windowed path is compared
  with what a user would write instead of it.

Times are medians over interleaved rounds whose order flips every other round; the tables
print each with its spread ((slowest - fastest) / median).

A third table checks the figures attnkit promises (see :data:`TARGETS`), each marked pass or
fail with both sides printed. Results go to ``<out>/attention.json`` and a log-log plot of time
and memory against N to ``<out>/attention.png``.

Shapes are (B, H, N, D) = (1, 8, N, 64) by default. FLOPs count the two matmuls over the
(query, key) pairs the mask allows, 4 * B * H * D per pair forward; forward+backward counts 3.5
times that (the backward does 2.5 times the forward's matmul work).

One benchmark, one cohesive job, so the module stays whole past 400 lines.
"""

from __future__ import annotations

import dataclasses
import logging
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from attnkit.bench.harness import (
    DTYPES,
    MODES,
    GiB,
    MiB,
    Shape,
    available_memory_bytes,
    environment,
    interleaved_samples,
    make_op,
    random_qkv,
    short_error,
    spread,
    synchronize,
)
from attnkit.bench.memory import ProbeCase, measure_peak_memories
from attnkit.bench.plots import plot_loglog
from attnkit.bench.report import (
    Check,
    Report,
    Table,
    fmt_bytes,
    fmt_ratio,
    fmt_seconds,
    render_checks,
    write_json,
)

logger = logging.getLogger(__name__)

REFERENCE = "sdpa (raw)"
DENSE_BACKENDS = ("auto", "sdpa", "math", "flex", "naive")
# sdpa-band, flex-band: the equal-work baselines written with PyTorch alone (module docstring)
BAND_BASELINES = ("sdpa-band", "flex-band")
WINDOW_BACKENDS = ("auto", "windowed", "flex", *BAND_BASELINES, "naive")
LABELS = {
    "sdpa-band": "sdpa (raw) band mask",
    "flex-band": "flex_attention (raw, compiled) band",
}

# Defaults of the options left unset: the full run, and --quick (a few minutes on a CPU, still
# reaching every target's N). "window_sizes": None means the same as "sizes".
FULL: dict[str, Any] = dict(
    sizes=[1024 * 2**i for i in range(7)],
    window_sizes=None,
    dense_max=None,
    backends=list(DENSE_BACKENDS),
    window_backends=["auto", *BAND_BASELINES, "flex", "naive"],
    reference_max=None,
    repeat=5,
    min_seconds=1.0,
    max_seconds=10.0,
)
QUICK: dict[str, Any] = dict(
    sizes=[1024, 2048, 4096],
    window_sizes=[16384, 65536],
    dense_max=16384,
    backends=["auto", "sdpa", "naive"],
    window_backends=["auto", *BAND_BASELINES],
    reference_max=2048,
    repeat=3,
    min_seconds=0.5,
    max_seconds=3.0,
)
SLOW_REFERENCES = ("naive", "math")  # what --reference-max limits
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
    "window_vs_flex": "window 512 forward at least as fast as compiled FlexAttention, N=16384",
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


def band_mask(n: int, causal: bool, window: int, device: torch.device) -> torch.Tensor:
    """(n, n) bool, True where query i may see key j: the sliding window of ``window`` keys."""
    i = torch.arange(n, device=device)[:, None]
    j = torch.arange(n, device=device)[None, :]
    return ((j <= i) & (i - j < window)) if causal else ((i - j).abs() < window)


def _band_fn(
    impl: str, n: int, causal: bool, window: int, device: torch.device
) -> Callable[..., torch.Tensor]:
    """A baseline of :data:`BAND_BASELINES`, its mask built here, once, outside any timing."""
    if impl == "sdpa-band":
        mask = band_mask(n, causal, window, device)
        return lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    def allowed(b: Any, h: Any, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
        return ((j <= i) & (i - j < window)) if causal else ((i - j).abs() < window)

    block_mask = create_block_mask(allowed, None, None, n, n, device=str(device))
    compiled = torch.compile(flex_attention, dynamic=False)

    def flex_band(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return compiled(q, k, v, block_mask=block_mask)

    return flex_band


def _impl_fn(
    impl: str,
    causal: bool,
    window: int | None,
    n: int | None = None,
    device: torch.device | None = None,
) -> Callable[..., torch.Tensor]:
    """impl: "sdpa (raw)", "naive", a band baseline (needs ``n`` and ``device``) or an attnkit
    backend name."""
    if impl in BAND_BASELINES:
        if window is None or n is None or device is None:
            raise ValueError(f"{impl} needs the window, N and the device")
        return _band_fn(impl, n, causal, window, device)
    if impl == REFERENCE:
        if window is not None:
            raise ValueError("raw SDPA is the dense reference; it takes no window")
        return lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    if impl == "naive":
        return lambda q, k, v: naive_attention(q, k, v, causal, window)
    from attnkit.attention import attention

    def attnkit_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        out = attention(q, k, v, causal=causal, window=window, backend=impl)
        assert isinstance(out, torch.Tensor)  # no weights asked for
        return out

    return attnkit_attention


def memory_case(
    impl: str,
    n: int,
    shape: Shape,
    dtype: str,
    device: str,
    causal: bool,
    window: int | None,
    mode: str,
    seed: int,
) -> Callable[[], Any]:
    """Build the inputs of one measurement in a memory-probe process; returns the operation."""
    dev = torch.device(device)
    q, k, v, grad_out = random_qkv(n, shape, DTYPES[dtype], dev, seed)
    return make_op(_impl_fn(impl, causal, window, n, dev), mode, q, k, v, grad_out)


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


def flops(n: int, shape: Shape, causal: bool, window: int | None, mode: str) -> float:
    b, h, d = shape
    fwd = 4.0 * b * h * d * allowed_pairs(n, causal, window)
    return fwd if mode == "fwd" else fwd * BWD_FLOP_FACTOR


def score_bytes_estimate(impl: str, n: int, shape: Shape, dtype: torch.dtype, mode: str) -> int:
    """Rough peak bytes of the N x N tensors an impl materialises; 0 for fused kernels."""
    b, h, _ = shape
    elem = torch.empty((), dtype=dtype).element_size()
    if impl == "sdpa-band":
        return n * n * (1 + 4)  # the bool mask, and the float mask SDPA may make of it
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
    spread: float | None = None  # (slowest - fastest) / median of the timed rounds
    rounds: int | None = None  # how many timings the median is of
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
    def compiled(self) -> bool:
        """Whether its first call compiles (FlexAttention): that call is no timing sample."""
        return "flex" in self.impl or "flex" in (self.backend or "")

    @property
    def label(self) -> str:
        if self.impl == REFERENCE and self.section == "window":
            name = "dense sdpa (raw)"
        elif self.impl in (REFERENCE, "naive"):
            name = self.impl
        elif self.impl in LABELS:
            name = LABELS[self.impl]
        else:
            name = f"attnkit {self.impl}"
        return f"{name} w={self.window}" if self.window is not None else name


def _plan_backend(
    impl: str, q: torch.Tensor, causal: bool, window: int | None, grad: bool
) -> str | None:
    if impl in (REFERENCE, "naive", *BAND_BASELINES):
        return None
    from attnkit.attention import explain

    t = q.detach().requires_grad_(grad)
    return explain(t, t, t, causal=causal, window=window, backend=impl).backend


# --------------------------------------------------------------------------------------------
# running a section at one N
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class AttentionSettings:
    """One run of ``attnkit bench attention``: every option, defaults resolved (see
    :func:`preset` for those of the full and the --quick run)."""

    sizes: list[int]
    window_sizes: list[int]
    dense_max: int | None
    backends: list[str]
    window_backends: list[str]
    reference_max: int | None
    repeat: int
    min_seconds: float
    max_seconds: float
    batch: int = 1
    heads: int = 8
    head_dim: int = 64
    dtype: str = "float32"
    device: torch.device = torch.device("cpu")
    causal: bool = True
    window: int = 512
    warmup: int = 0
    memory: bool = True
    seed: int = 0
    quick: bool = False
    out: Path = Path("bench_out")
    probe_timeout: float | None = None

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {list(DTYPES)}, got {self.dtype!r}")
        if self.warmup < 0:
            raise ValueError(f"--warmup must be >= 0, got {self.warmup}")
        if not self.max_seconds > 0:
            raise ValueError(f"--max-seconds must be > 0, got {self.max_seconds}")
        if not 0 <= self.min_seconds <= self.max_seconds:
            raise ValueError(
                f"--min-seconds must be in [0, --max-seconds={self.max_seconds}], "
                f"got {self.min_seconds}"
            )

    @property
    def shape(self) -> Shape:
        return (self.batch, self.heads, self.head_dim)

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]


def preset(quick: bool) -> dict[str, Any]:
    """The defaults of the options a run leaves unset: :data:`QUICK` or :data:`FULL`
    (``window_sizes`` None: the same as ``sizes``)."""
    return dict(QUICK if quick else FULL)


def _skip_reason(
    impl: str,
    n: int,
    mode: str,
    s: AttentionSettings,
    budget: int,
    dense_max: int | None,
    window: int | None,
) -> str | None:
    if impl in ("flex", "flex-band") and mode == "fwd_bwd" and s.device.type == "cpu":
        return "FlexAttention has no backward on CPU"
    dense_n = impl in (REFERENCE, "sdpa-band")  # N x N work, or an N x N mask
    if dense_n and window is not None and dense_max is not None and n > dense_max:
        return f"not run above N={dense_max} (--dense-max)"
    if impl in SLOW_REFERENCES and s.reference_max is not None and n > s.reference_max:
        return f"not run above N={s.reference_max} (--reference-max)"
    need = score_bytes_estimate(impl, n, s.shape, s.torch_dtype, mode)
    if need > budget:
        return f"N x N scores need ~{fmt_bytes(need)}, over the {fmt_bytes(budget)} budget"
    return None


def run_point(
    section: str,
    n: int,
    impls: list[str],
    causal: bool,
    window: int | None,
    s: AttentionSettings,
    dense_max: int | None = None,
    log: Callable[[str], None] = logger.info,
    known_reference: Row | None = None,
) -> list[Row]:
    """Measure every impl at one N. The first impl is the reference for ratios and errors;
    ``known_reference`` is its row measured earlier (same inputs), reused instead of re-run."""
    budget = int(MEMORY_SHARE.get(s.device.type, 0.5) * available_memory_bytes(s.device))
    q, k, v, grad_out = random_qkv(n, s.shape, s.torch_dtype, s.device, s.seed)
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
        try:
            fn = _impl_fn(row.impl, causal, row.window, n, s.device)
        except Exception as e:  # a baseline that cannot be built here: reported, not fatal
            for mode in MODES:
                row.get(mode).skipped = f"error: {short_error(e)}"
            continue
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
                op = make_op(fn, mode, q, k, v, grad_out)
                synchronize(s.device)
                t0 = time.perf_counter()
                result = op()  # first call: checks it runs, compiles what needs compiling
                synchronize(s.device)
                first = time.perf_counter() - t0
                if mode == "fwd":
                    outputs[row.impl] = result
                del result
                ops[mode][row.impl] = op
                if s.warmup == 0 and not row.compiled:
                    first_calls[mode][row.impl] = [first]  # nothing compiled: a sample too
            except Exception as e:  # a backend that cannot run here: reported, not fatal
                p.skipped = f"error: {short_error(e)}"
    # errors against the reference, or (window section) against naive when it ran, else
    # against SDPA with the band mask
    ref_impl = rows[0].impl if section == "dense" else "naive"
    if section == "window" and ref_impl not in outputs:
        ref_impl = "sdpa-band"
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
        taken = interleaved_samples(
            ops[mode],
            warmup=s.warmup,
            repeat=s.repeat,
            device=s.device,
            min_seconds=s.min_seconds,
            max_seconds=s.max_seconds,
            samples=first_calls[mode],
        )
        times = {name: statistics.median(ts) for name, ts in taken.items()}
        ref_time = (
            rows[0].get(mode).seconds if known_reference is not None else times.get(rows[0].impl)
        )
        for row in todo:
            p = row.get(mode)
            if row.impl not in times:
                continue
            p.seconds = times[row.impl]
            p.spread, p.rounds = spread(taken[row.impl]), len(taken[row.impl])
            p.gflops = flops(n, s.shape, causal, row.window, mode) / p.seconds / 1e9
            if ref_time is not None:
                p.vs_reference = ref_time / p.seconds
    ops.clear()
    del q, k, v, grad_out
    if s.memory:
        _measure_memory(todo, n, causal, s, log)
    return rows


def _probe_case(
    impl: str,
    n: int,
    s: AttentionSettings,
    causal: bool,
    window: int | None,
    mode: str,
    warmup: bool,
) -> ProbeCase:
    """One operation for the memory probe (built by :func:`memory_case` in the child)."""
    kwargs = dict(
        impl=impl,
        n=n,
        shape=s.shape,
        dtype=s.dtype,
        device=str(s.device),
        causal=causal,
        window=window,
        mode=mode,
        seed=s.seed,
    )
    return ProbeCase(memory_case, kwargs=kwargs, warmup=warmup)


def _measure_memory(
    rows: list[Row], n: int, causal: bool, s: AttentionSettings, log: Callable[[str], None]
) -> None:
    cases: list[ProbeCase] = []
    slots: list[Pass | None] = []
    # Priming: each operation once at a small N, so lazy set-up (autograd threads, kernel
    # dispatch, allocator pools) lands in no one's reading; these readings are dropped.
    primed = set()
    for row in rows:
        for mode in MODES:
            if row.get(mode).skipped or (row.impl, mode) in primed:
                continue
            primed.add((row.impl, mode))
            cases.append(_probe_case(row.impl, min(n, 256), s, causal, row.window, mode, False))
            slots.append(None)
    for row in rows:
        for mode in MODES:
            p = row.get(mode)
            if p.skipped:
                continue
            cases.append(_probe_case(row.impl, n, s, causal, row.window, mode, row.compiled))
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
        for slot in slots:
            if slot is not None:  # priming slots have no row
                slot.memory_skipped = f"memory probe failed: {short_error(e)}"
        return
    for slot, r in zip(slots, readings):
        if slot is None:
            continue
        if isinstance(r, Exception):
            slot.memory_skipped = short_error(r)
        else:
            slot.peak_bytes = r.peak_bytes


# --------------------------------------------------------------------------------------------
# checks against the targets
# --------------------------------------------------------------------------------------------


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


def _compared(key: str, p: Pass, ref: Pass, passed: bool) -> Check:
    """A speed target: both times and their ratio."""
    return Check(
        key,
        TARGETS[key],
        fmt_ratio(p.vs_reference),
        passed,
        attnkit=fmt_seconds(p.seconds),
        reference=fmt_seconds(ref.seconds),
    )


def evaluate_checks(rows: list[Row], window: int, causal: bool) -> list[Check]:
    checks = []

    def missing(key: str, why: str) -> Check:
        return Check(key, TARGETS[key], "-", None, note=why)

    for key, mode in (("dense_fwd", "fwd"), ("dense_fwd_bwd", "fwd_bwd")):
        row, ref = _find(rows, "dense", 4096, "auto"), _find(rows, "dense", 4096, REFERENCE)
        if not causal:
            checks.append(missing(key, "run was not causal (--no-causal)"))
        elif row is None or ref is None or row.get(mode).vs_reference is None:
            checks.append(missing(key, "N=4096 not in the dense sizes, or auto not run"))
        else:
            r = row.get(mode).vs_reference
            assert r is not None
            checks.append(_compared(key, row.get(mode), ref.get(mode), r >= 0.95))
    for key, mode, need in (("window_fwd", "fwd", 8.0), ("window_fwd_bwd", "fwd_bwd", 5.0)):
        row = _find(rows, "window", 16384, "auto", window)
        ref = _find(rows, "window", 16384, REFERENCE)
        if window != 512:
            checks.append(missing(key, f"run used window {window}, the target is for 512"))
        elif row is None or ref is None or row.get(mode).vs_reference is None:
            checks.append(missing(key, "N=16384 not in the window sizes, or a side was skipped"))
        else:
            r = row.get(mode).vs_reference
            assert r is not None
            checks.append(_compared(key, row.get(mode), ref.get(mode), r >= need))
    row = _find(rows, "window", 16384, "auto", window)
    flex = _find(rows, "window", 16384, "flex-band", window)
    if window != 512:
        checks.append(missing("window_vs_flex", f"run used window {window}, the target is for 512"))
    elif row is None or flex is None or row.fwd.seconds is None or flex.fwd.seconds is None:
        checks.append(
            missing("window_vs_flex", "N=16384 not in the window sizes, or flex-band not run")
        )
    else:
        ratio = flex.fwd.seconds / row.fwd.seconds
        checks.append(
            Check(
                "window_vs_flex",
                TARGETS["window_vs_flex"],
                fmt_ratio(ratio),
                ratio >= 1.0,
                attnkit=fmt_seconds(row.fwd.seconds),
                reference=fmt_seconds(flex.fwd.seconds),
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
            Check(
                "window_mem", TARGETS["window_mem"], fmt_bytes(b), b < 2 * GiB, attnkit=fmt_bytes(b)
            )
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
                "exact_mem",
                TARGETS["exact_mem"],
                fmt_bytes(b),
                b < 300 * MiB,
                attnkit=fmt_bytes(b),
                reference=ref_b,
            )
        )
    return checks


# --------------------------------------------------------------------------------------------
# printing and plotting
# --------------------------------------------------------------------------------------------


def _cell_time(p: Pass) -> str:
    if p.seconds is None:
        return "skip" if p.skipped else "-"
    if p.spread is None or (p.rounds or 0) < 2:
        return fmt_seconds(p.seconds)
    return f"{fmt_seconds(p.seconds)} ({100 * p.spread:.0f}%)"


def _cell_mem(p: Pass) -> str:
    if p.peak_bytes is not None:
        return fmt_bytes(p.peak_bytes)
    return "skip" if (p.skipped or p.memory_skipped) else "-"


def _cell_num(x: float | None, fmt: str = "{:.1f}") -> str:
    return fmt.format(x) if x is not None else "-"


def _render(rows: list[Row], title: str, dense: bool) -> str:
    """The table of one section: dense has GFLOP/s and "vs SDPA", window "speed-up"."""
    ratio = "vs SDPA" if dense else "speed-up"
    per_mode = [ratio, "GFLOP/s"] if dense else [ratio]
    columns = ["N", "impl", "runs", "fwd", *per_mode, "fwd+bwd", *per_mode]
    columns += ["peak fwd", "peak fwd+bwd", "max|err|"]
    t = Table(columns, title=title, align="rll" + "r" * (len(columns) - 3))
    last_n = None
    for r in rows:
        if last_n is not None and r.n != last_n:
            t.add_separator()
        last_n = r.n
        cells: list[Any] = [r.n, r.label, r.backend or "-"]
        for p in (r.fwd, r.fwd_bwd):
            cells += [_cell_time(p), fmt_ratio(p.vs_reference)]
            if dense:
                cells.append(_cell_num(p.gflops))
        cells += [
            _cell_mem(r.fwd),
            _cell_mem(r.fwd_bwd),
            "-" if r.max_abs_err is None else f"{r.max_abs_err:.1e}",
        ]
        t.add_row(*cells)
    return t.render()


def render_dense(rows: list[Row], title: str) -> str:
    return _render(rows, title, dense=True)


def render_window(rows: list[Row], title: str) -> str:
    return _render(rows, title, dense=False)


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
# the run
# --------------------------------------------------------------------------------------------


def run(s: AttentionSettings) -> Report:
    """Run both sections and the checks; writes attention.json and attention.png in
    ``s.out``. Progress goes to the log; the report holds the tables."""
    log = logger.info
    shape_text = f"B={s.batch} H={s.heads} D={s.head_dim} {s.dtype} on {s.device}"
    log(f"attnkit bench attention: {shape_text}, {torch.get_num_threads()} threads")
    rows: list[Row] = []
    dense_impls = [REFERENCE] + list(s.backends)
    for n in s.sizes:
        rows += run_point("dense", n, dense_impls, s.causal, None, s, log=log)
    window_impls = [REFERENCE] + list(s.window_backends)
    for n in s.window_sizes:
        # dense causal SDPA at this N was measured already when the dense section was causal
        known = _find(rows, "dense", n, REFERENCE) if s.causal else None
        rows += run_point(
            "window",
            n,
            window_impls,
            True,
            s.window,
            s,
            dense_max=s.dense_max,
            log=log,
            known_reference=known,
        )
        if s.memory and n <= (s.dense_max or n) and _find(rows, "dense", n, "auto") is None:
            rows.append(_exact_memory_row(n, s, log))
    checks = evaluate_checks(rows, s.window, s.causal)

    dense_rows = [r for r in rows if r.section == "dense"]
    window_rows = [r for r in rows if r.section == "window" and r.impl != "auto-dense"]
    mask = "causal" if s.causal else "no mask"
    parts = [
        "",
        render_dense(
            dense_rows, f"Dense attention ({mask}), {shape_text}; ratios: raw SDPA time / time"
        ),
        "",
        render_window(
            window_rows,
            f"Sliding window {s.window} (causal) vs dense causal SDPA, "
            f"{shape_text}; speed-up: SDPA time / time",
        ),
        "times: the median of interleaved rounds; in brackets their spread, "
        "(slowest - fastest) / median",
    ]
    extra = [r for r in rows if r.impl == "auto-dense"]
    if extra:
        parts.append(
            "exact attention (attnkit auto, dense causal), peak memory of the forward: "
            + ", ".join(f"N={r.n}: {_cell_mem(r.fwd)}" for r in extra)
        )
    parts += _notes(rows)
    parts += ["", render_checks(checks)]

    result = {
        "benchmark": "attention",
        "config": {
            "batch": s.batch,
            "heads": s.heads,
            "head_dim": s.head_dim,
            "dtype": s.dtype,
            "device": str(s.device),
            "causal": s.causal,
            "window": s.window,
            "quick": s.quick,
            **{key: getattr(s, key) for key in FULL},
            "warmup": s.warmup,
            "memory": s.memory,
            "flops": "4*B*H*D per allowed (query, key) pair forward; fwd+bwd = 3.5x forward",
        },
        "environment": environment(),
        "rows": [dataclasses.asdict(r) | {"label": r.label} for r in rows],
        "checks": [_check_json(c) for c in checks],
    }
    json_path = write_json(s.out / "attention.json", result)
    png_path = plot(rows, s.out / "attention.png", str(s.device))
    parts.append(f"\nwrote {json_path} and {png_path}")
    return Report(
        "\n".join(parts),
        (json_path, png_path),
        missed=any(c.passed is False for c in checks),
    )


def _check_json(c: Check) -> dict[str, Any]:
    return {
        "key": c.key,
        "target": c.target,
        "attnkit": c.attnkit,
        "reference": c.reference,
        "value": c.measured,
        "passed": c.passed,
        "note": c.note,
        "result": c.mark,
    }


def _exact_memory_row(n: int, s: AttentionSettings, log: Callable[[str], None]) -> Row:
    """Peak memory of attnkit's exact causal attention at N, for the exact-memory target."""
    row = Row("window", n, "auto-dense", None, True, backend="auto")
    # the first primes lazy set-up and is dropped
    cases = [_probe_case("auto", size, s, True, None, "fwd", False) for size in (min(n, 256), n)]
    row.fwd_bwd.memory_skipped = "forward only"
    log(f"  [exact N={n}] peak memory of attnkit auto, dense causal forward (separate process)")
    try:
        readings = measure_peak_memories(cases, device=s.device, timeout=s.probe_timeout)
    except Exception as e:
        row.fwd.memory_skipped = f"memory probe failed: {short_error(e)}"
        return row
    if isinstance(readings[-1], Exception):
        row.fwd.memory_skipped = short_error(readings[-1])
    else:
        row.fwd.peak_bytes = readings[-1].peak_bytes
    return row
