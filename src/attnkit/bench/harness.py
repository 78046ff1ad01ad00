"""Measuring, shared by every ``attnkit bench`` command: devices, rounds and the run's record.

* Devices: :func:`resolve_device`, :func:`synchronize`, :func:`available_memory_bytes`.
* Timing: :func:`time_fn`, :func:`time_interleaved` (round-robin medians),
  :func:`interleaved_samples` and :func:`timed_rounds` (every round kept), :func:`spread`,
  :func:`in_turns` (the order of a round flips every other round), :func:`timed`; CUDA is synchronised around every call so queued kernels are counted.
* Operations: :data:`MODES`, :data:`DTYPES`, :func:`random_qkv` and :func:`make_op` (forward, or
  forward + backward with fresh gradients), the one op maker of the attention benchmarks;
  :func:`short_error` for a failed one.
* The run's record: :func:`environment` (versions, processor, threads, GPU), :func:`load_text`
  (the machine's load), :func:`shared_data_file`.

Peak memory is measured in :mod:`attnkit.bench.memory`, results are reported through
:mod:`attnkit.bench.report` and drawn by :mod:`attnkit.bench.plots`. Only the standard library
and torch are imported here.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch

from attnkit._util import devices

T = TypeVar("T")
MiB = 1024**2
GiB = 1024**3

# --------------------------------------------------------------------------------------------
# devices
# --------------------------------------------------------------------------------------------


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None``/``"auto"`` -> cuda when available, else cpu; anything else is checked (by
    :func:`attnkit._util.devices.resolve_device`, the one place devices are decided)."""
    return devices.resolve_device(device, "device")


def synchronize(device: str | torch.device | None = None) -> None:
    """Wait for queued CUDA work; a no-op on CPU."""
    if device is None:
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()
        return
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def available_memory_bytes(device: str | torch.device = "cpu") -> int:
    """Memory that can still be allocated on ``device``: free GPU memory, or MemAvailable."""
    dev = torch.device(device)
    if dev.type == "cuda":
        free, _total = torch.cuda.mem_get_info(dev)
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 8 * GiB  # unknown platform: assume a small machine


# --------------------------------------------------------------------------------------------
# timing
# --------------------------------------------------------------------------------------------


def _check_counts(warmup: int, repeat: int) -> None:
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup must be an int >= 0, got {warmup!r}")
    if isinstance(repeat, bool) or not isinstance(repeat, int) or repeat < 1:
        raise ValueError(f"repeat must be an int >= 1, got {repeat!r}")


def time_fn(
    fn: Callable[[], Any],
    warmup: int = 1,
    repeat: int = 5,
    *,
    device: str | torch.device | None = None,
    min_seconds: float = 0.0,
    max_seconds: float | None = None,
) -> float:
    """Median wall time of ``fn()`` in seconds.

    ``warmup`` untimed calls come first (compilation, lazy initialisation), then ``repeat``
    timed calls; more follow while less than ``min_seconds`` has been spent (so fast functions
    get enough samples), and none once ``max_seconds`` has been spent (so slow ones end; there
    is always at least one timed call). On CUDA the device is synchronised before and after
    each call, so queued kernels are counted.
    """
    return time_interleaved(
        {"fn": fn}, warmup, repeat, device=device, min_seconds=min_seconds, max_seconds=max_seconds
    )["fn"]


MAX_ROUNDS = 10_000


def time_interleaved(
    fns: Mapping[str, Callable[[], Any]],
    warmup: int = 1,
    repeat: int = 5,
    *,
    device: str | torch.device | None = None,
    min_seconds: float = 0.0,
    max_seconds: float | None = None,
    samples: Mapping[str, Sequence[float]] | None = None,
) -> dict[str, float]:
    """Median seconds per callable, timing them round-robin (one call of each per round).

    Interleaving means a slow spell of a shared machine hits every callable alike, so their
    ratios are steadier than when each is timed in its own block; the order of a round is
    reversed every other round (:func:`in_turns`), so no callable always runs first (just after
    the previous round's last one freed its memory). ``repeat``, ``min_seconds`` and
    ``max_seconds`` count rounds and time as in :func:`time_fn`. ``samples`` are timings
    already taken (name -> seconds), counted in the medians too. :func:`interleaved_samples`
    returns every timing instead of the medians.
    """
    taken = interleaved_samples(
        fns,
        warmup,
        repeat,
        device=device,
        min_seconds=min_seconds,
        max_seconds=max_seconds,
        samples=samples,
    )
    return {name: statistics.median(s) for name, s in taken.items()}


def interleaved_samples(
    fns: Mapping[str, Callable[[], Any]],
    warmup: int = 1,
    repeat: int = 5,
    *,
    device: str | torch.device | None = None,
    min_seconds: float = 0.0,
    max_seconds: float | None = None,
    samples: Mapping[str, Sequence[float]] | None = None,
) -> dict[str, list[float]]:
    """Every timing (seconds) of each callable, taken as :func:`time_interleaved` does.

    Examples:
        >>> interleaved_samples({"a": lambda: None}, warmup=0, repeat=3)["a"]  # doctest: +SKIP
        [2.1e-07, 1.2e-07, 1.1e-07]
    """
    _check_counts(warmup, repeat)
    if not fns:
        return {}
    unknown = set(samples or {}) - set(fns)
    if unknown:
        raise ValueError(
            f"samples given for {sorted(unknown)}, which are not among the callables {list(fns)}"
        )
    for fn in fns.values():
        for _ in range(warmup):
            fn()
        synchronize(device)
    taken: dict[str, list[float]] = {name: list((samples or {}).get(name, ())) for name in fns}
    names = list(fns)
    start = time.perf_counter()
    rounds = 0
    while True:
        for name in in_turns(names, rounds):
            synchronize(device)
            t0 = time.perf_counter()
            fns[name]()
            synchronize(device)
            taken[name].append(time.perf_counter() - t0)
        rounds += 1
        elapsed = time.perf_counter() - start
        if max_seconds is not None and elapsed >= max_seconds:
            break
        if (rounds >= repeat and elapsed >= min_seconds) or rounds >= MAX_ROUNDS:
            break
    return taken


def spread(samples: Sequence[float]) -> float:
    """(slowest - fastest) / median of some timings: 0.05 means they span 5% of the median.

    Examples:
        >>> spread([1.0, 1.1, 0.9])
        0.2
    """
    if not samples:
        raise ValueError("spread of no samples")
    mid = statistics.median(samples)
    return (max(samples) - min(samples)) / mid if mid > 0 else 0.0


def timed(fn: Callable[[], T]) -> tuple[float, T]:
    """Wall seconds of one call of ``fn`` (no synchronisation), and what it returned."""
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def in_turns(items: Sequence[T], turn: int) -> list[T]:
    """``items`` in order on even turns and reversed on odd ones: alternating the order of a
    round means a machine that speeds up or slows down over a round does not always favour
    the same item."""
    return list(items) if turn % 2 == 0 else list(reversed(items))


def timed_rounds(
    fns: Mapping[str, Callable[[], Any]],
    repeat: int,
    max_seconds: float,
    *,
    device: str | torch.device | None = None,
) -> dict[str, list[float]]:
    """Every timed round of the callables, one call of each per round (round-robin): up to
    ``repeat`` rounds, no new round once ``max_seconds`` have been spent (at least one)."""
    return interleaved_samples(fns, 0, repeat, device=device, max_seconds=max_seconds)


# --------------------------------------------------------------------------------------------
# the operations of the attention benchmarks
# --------------------------------------------------------------------------------------------

MODES = ("fwd", "fwd_bwd")
DTYPES = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float64": torch.float64,
}
Shape = tuple[int, int, int]  # (B, H, D): batch, heads, head width
AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def random_qkv(
    n: int, shape: Shape, dtype: torch.dtype, device: torch.device, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v and an output gradient, each (B, H, N, D), drawn in float32 on the CPU from a
    generator seeded with ``seed + n`` (the same numbers on every device and dtype)."""
    b, h, d = shape
    gen = torch.Generator(device="cpu").manual_seed(seed + n)
    q, k, v, grad_out = (
        torch.randn(b, h, n, d, generator=gen, dtype=torch.float32).to(device=device, dtype=dtype)
        for _ in range(4)
    )  # (B, H, N, D) each
    return q, k, v, grad_out


def make_op(
    fn: AttentionFn,
    mode: str,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    grad_out: torch.Tensor,
) -> Callable[[], Any]:
    """The zero-argument operation to time: ``fn(q, k, v)`` without gradients ("fwd"), or
    forward and backward with fresh gradients each call ("fwd_bwd"; inputs ``fn`` ignores,
    such as LSH's keys, get no gradient)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if mode == "fwd":

        def forward() -> torch.Tensor:
            with torch.no_grad():
                return fn(q, k, v)

        return forward
    qg, kg, vg = (t.detach().requires_grad_(True) for t in (q, k, v))

    def forward_backward() -> tuple[torch.Tensor | None, ...]:
        out = fn(qg, kg, vg)
        return torch.autograd.grad(out, (qg, kg, vg), grad_out, allow_unused=True)

    return forward_backward


def short_error(e: BaseException, with_type: bool = False) -> str:
    """The first line of an error, for a table cell or a skip reason (160 characters)."""
    if with_type:
        return f"{type(e).__name__}: {e}".splitlines()[0][:160]
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return text if len(text) <= 160 else text[:157] + "..."


# --------------------------------------------------------------------------------------------
# the run's record
# --------------------------------------------------------------------------------------------


def environment() -> dict[str, Any]:
    """Where a benchmark ran: versions, processor, threads, GPU."""
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "processor": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_text(before: Sequence[float], after: Sequence[float]) -> str:
    """The machine's load average before and after a run, for a report."""
    return (
        f"load average (1, 5, 15 min): before {tuple(round(x, 2) for x in before)}, "
        f"after {tuple(round(x, 2) for x in after)} on {os.cpu_count()} CPUs"
    )


def shared_data_file(name: str) -> Path | None:
    """``../shared/data/<name>`` next to the repository (or the working directory), if there."""
    repo = Path(__file__).resolve().parents[3]
    for base in (repo, Path.cwd()):
        p = base.parent / "shared" / "data" / name
        if p.is_file():
            return p
    return None
