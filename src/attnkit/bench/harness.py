"""The benchmark harness shared by every ``attnkit bench`` command.

One cohesive job (so past 400 lines): measuring and reporting, never what is measured.

* Devices: :func:`resolve_device`, :func:`synchronize`, :func:`available_memory_bytes`.
* Timing: :func:`time_fn`, :func:`time_interleaved` (round-robin medians), :func:`timed_rounds`
  (every round kept), :func:`in_turns` (the order of a round flips every other round),
  :func:`timed`; CUDA is synchronised around every call so queued kernels are counted.
* Operations: :data:`MODES`, :data:`DTYPES`, :func:`random_qkv` and :func:`make_op` (forward, or
  forward + backward with fresh gradients), the one op maker of the attention benchmarks.
* Peak memory: :func:`peak_memory`, :func:`measure_peak_memories`, each operation measured in a
  fresh child process so earlier work in this process (allocator caches, freed-but-kept heap
  pages, compiled kernels) cannot hide or inflate it. :func:`keep_freed_memory` makes glibc's
  malloc reuse freed large blocks in a timing process (see there).
* Results: :class:`Check` (a target and whether it was met), :class:`Report` (the text a
  command prints, and whether a target was missed); :class:`Table`, the ``fmt_*`` cells,
  :func:`write_json` (atomic), :func:`plot_loglog` (matplotlib's object API; needs the
  ``viz`` extra), :func:`environment`, :func:`load_text`, :func:`shared_data_file`.

Only the standard library and torch are imported at module level.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch

T = TypeVar("T")
MiB = 1024**2
GiB = 1024**3

# --------------------------------------------------------------------------------------------
# devices
# --------------------------------------------------------------------------------------------


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None``/``"auto"`` -> cuda when available, else cpu; anything else is checked."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(
            f"device must be 'cpu', 'cuda', 'cuda:<index>' or 'auto', got {device!r}"
        ) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device {str(device)!r} was asked for but CUDA is not available here; expected 'cpu'"
        )
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    return dev


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
    ratios are steadier than when each is timed in its own block. ``repeat``, ``min_seconds``
    and ``max_seconds`` count rounds and time as in :func:`time_fn`. ``samples`` are timings
    already taken (name -> seconds), counted in the medians too.
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
    start = time.perf_counter()
    rounds = 0
    while True:
        for name, fn in fns.items():
            synchronize(device)
            t0 = time.perf_counter()
            fn()
            synchronize(device)
            taken[name].append(time.perf_counter() - t0)
        rounds += 1
        elapsed = time.perf_counter() - start
        if max_seconds is not None and elapsed >= max_seconds:
            break
        if (rounds >= repeat and elapsed >= min_seconds) or rounds >= MAX_ROUNDS:
            break
    return {name: statistics.median(s) for name, s in taken.items()}


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
    samples: dict[str, list[float]] = {name: [] for name in fns}
    start = time.perf_counter()
    for _ in range(repeat):
        for name, t in time_interleaved(fns, warmup=0, repeat=1, device=device).items():
            samples[name].append(t)
        if time.perf_counter() - start >= max_seconds:
            break
    return samples


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
# peak memory, measured in a fresh process
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class MemoryReading:
    """What one memory probe saw.

    peak_bytes: peak memory added by the operation over ``baseline_bytes`` (inputs allocated).
    method: "cuda_max_allocated", "vm_hwm" (Linux peak RSS, reset right before the operation)
        or "ru_maxrss" (high-water mark of the whole process; see ``exact``).
    exact: False when the process had already been larger before the operation than at its
        baseline and the high-water mark could not be reset, so a peak below that earlier
        high-water mark cannot be seen; ``peak_bytes`` is then a lower bound.
    """

    peak_bytes: int
    baseline_bytes: int
    method: str
    exact: bool = True


@dataclasses.dataclass(frozen=True)
class ProbeCase:
    """One operation for :func:`measure_peak_memories`.

    ``make_op(*args, **kwargs)`` allocates the inputs and returns the zero-argument operation.
    ``warmup`` runs it once before measuring (leave on for anything compiled on first use).
    """

    make_op: Callable[..., Callable[[], Any]]
    args: tuple = ()
    kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    warmup: bool = True


def peak_memory(
    make_op: Callable[..., Callable[[], Any]],
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    **options: Any,
) -> int:
    """Peak memory in bytes that one call of an operation adds; the arguments and ``options``
    (``device``, ``warmup``, ``timeout``) as for :func:`measure_peak_memory`."""
    return measure_peak_memory(make_op, args, kwargs, **options).peak_bytes


def measure_peak_memory(
    make_op: Callable[..., Callable[[], Any]],
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    *,
    device: str | torch.device = "cpu",
    warmup: bool = True,
    timeout: float | None = None,
) -> MemoryReading:
    """Measure the peak memory one call of an operation adds, in a fresh Python process.

    ``make_op(*args, **kwargs)`` runs in the child process: it allocates the inputs and returns
    a zero-argument callable, the operation. The child then (if ``warmup``) calls it once and
    drops the result, so one-time costs such as compilation are left out; takes the baseline
    with the inputs alive; calls the operation once more and reports the peak over that
    baseline. ``make_op`` must be a function defined at the top level of a module (or of the
    script being run); arguments travel as JSON (plain values, tuples, dtypes, devices).

    On CUDA the reading is ``torch.cuda.max_memory_allocated`` after a reset. On CPU it is the
    peak resident set size: on Linux the peak counter (VmHWM) is reset right before the
    operation, and glibc is told to return freed blocks over 128 KiB to the system at once, so
    memory freed earlier cannot be reused unseen. Elsewhere ``ru_maxrss`` is used.
    """
    case = ProbeCase(make_op, tuple(args), dict(kwargs or {}), warmup)
    (result,) = measure_peak_memories([case], device=device, timeout=timeout)
    if isinstance(result, Exception):
        raise result
    return result


def measure_peak_memories(
    cases: Sequence[ProbeCase],
    *,
    device: str | torch.device = "cpu",
    timeout: float | None = None,
) -> list[MemoryReading | Exception]:
    """Measure several operations one after another in one fresh child process.

    Each case is built, measured as in :func:`measure_peak_memory` (the peak counter is reset
    and the baseline taken again for every case) and released before the next, which saves
    starting Python and torch once per case. A case that raises gives its exception (a
    ``RuntimeError`` naming the case) in its slot instead of a reading; a child that dies
    (killed for memory, say) raises ``RuntimeError``.
    """
    if not cases:
        return []
    dev = resolve_device(device)
    wire = [
        [_target_ref(c.make_op), _encode(list(c.args)), _encode(dict(c.kwargs)), bool(c.warmup)]
        for c in cases
    ]
    payload = {
        "cases": wire,
        "device": str(dev),
        "threads": torch.get_num_threads(),
        "sys_path": list(sys.path),
    }
    env = dict(os.environ)
    # The child must find the same modules as this process (tests, scripts on sys.path).
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    # Fixed glibc thresholds: blocks over 128 KiB are mmap'ed and unmapped on free.
    env.setdefault("MALLOC_MMAP_THRESHOLD_", str(128 * 1024))
    env.setdefault("MALLOC_TRIM_THRESHOLD_", str(128 * 1024))
    names = ", ".join(_name(c.make_op) for c in cases)
    with tempfile.TemporaryDirectory(prefix="attnkit-probe-") as tmp:
        inp, out = Path(tmp, "in.json"), Path(tmp, "out.json")
        inp.write_text(json.dumps(payload))
        cmd = [sys.executable, "-m", "attnkit.bench.harness", "--probe", str(inp), str(out)]
        try:
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise TimeoutError(
                f"memory probe of {names} ran past its timeout of {timeout} s"
            ) from None
        if proc.returncode != 0 or not out.exists():
            lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
            why = lines[-1] if lines else "no error output"
            if proc.returncode < 0:
                why = f"killed by signal {-proc.returncode} (out of memory?); {why}"
            raise RuntimeError(
                f"memory probe of {names} failed with exit code {proc.returncode}: {why}"
            )
        results = json.loads(out.read_text())
    readings: list[MemoryReading | Exception] = []
    for case, r in zip(cases, results):
        if "error" in r:
            readings.append(RuntimeError(f"memory probe of {_name(case.make_op)}: {r['error']}"))
        else:
            readings.append(MemoryReading(**r))
    return readings


def _target_ref(make_op: Callable) -> list:
    """How the child finds make_op: [module, qualname], or ["__main__", file, qualname]."""
    module = getattr(make_op, "__module__", None)
    qualname = getattr(make_op, "__qualname__", "")
    if module is None or "<locals>" in qualname or "<lambda>" in qualname:
        raise ValueError(
            f"make_op {_name(make_op)} must be a function defined at the top level of a module or script"
        )
    if module != "__main__":
        return [module, qualname]
    # The child's __main__ is this module, so a function from the caller's script is found by
    # file and name and loaded there, much as multiprocessing's spawn does.
    main_file = getattr(sys.modules["__main__"], "__file__", None)
    if main_file is None:
        raise ValueError(
            f"make_op {_name(make_op)} is defined in an interactive session; expected a function "
            "defined at the top level of an importable module or script"
        )
    return ["__main__", os.path.abspath(main_file), qualname]


def _resolve_target(ref: list) -> Callable:
    import importlib
    import importlib.util

    if ref[0] == "__main__":
        _, main_file, qualname = ref
        module = sys.modules.get("__probe_main__")
        if module is None:
            spec = importlib.util.spec_from_file_location("__probe_main__", main_file)
            if spec is None or spec.loader is None:
                raise ImportError(f"cannot load the script {main_file!r} in the probe process")
            module = importlib.util.module_from_spec(spec)
            sys.modules["__probe_main__"] = module
            spec.loader.exec_module(module)
    else:
        module, qualname = importlib.import_module(ref[0]), ref[1]
    obj: Any = module
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def _encode(x: Any) -> Any:
    """JSON form of probe arguments: plain values, lists, dicts, tuples, dtypes and devices."""
    if x is None or isinstance(x, (bool, int, float, str)):
        return x
    if isinstance(x, tuple):
        return {"__tuple__": [_encode(v) for v in x]}
    if isinstance(x, list):
        return [_encode(v) for v in x]
    if isinstance(x, dict):
        if not all(isinstance(key, str) for key in x):
            raise TypeError(f"probe argument dicts need str keys, got {list(x)!r}")
        return {"__dict__": {key: _encode(v) for key, v in x.items()}}
    if isinstance(x, torch.dtype):
        return {"__dtype__": str(x).removeprefix("torch.")}
    if isinstance(x, torch.device):
        return {"__device__": str(x)}
    raise TypeError(
        f"probe arguments must be plain values, tuples, dtypes or devices; got {type(x).__name__}"
    )


def _decode(x: Any) -> Any:
    if isinstance(x, list):
        return [_decode(v) for v in x]
    if isinstance(x, dict):
        if "__tuple__" in x:
            return tuple(_decode(v) for v in x["__tuple__"])
        if "__dict__" in x:
            return {key: _decode(v) for key, v in x["__dict__"].items()}
        if "__dtype__" in x:
            dtype = getattr(torch, x["__dtype__"])
            if not isinstance(dtype, torch.dtype):
                raise ValueError(f"not a torch dtype: {x['__dtype__']!r}")
            return dtype
        if "__device__" in x:
            return torch.device(x["__device__"])
    return x


def _name(fn: Any) -> str:
    return getattr(fn, "__qualname__", None) or repr(fn)


def _proc_status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    """Reset Linux's per-process peak RSS counter (VmHWM); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return _proc_status_kib("VmHWM") is not None


def _maxrss_bytes() -> int:
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024  # macOS reports bytes, Linux KiB


def _current_rss_bytes() -> int:
    kib = _proc_status_kib("VmRSS")
    if kib is not None:
        return kib * 1024
    return _maxrss_bytes()  # best available elsewhere


def _measure_one(
    make_op: Callable, args: tuple, kwargs: dict, warmup: bool, dev: torch.device
) -> MemoryReading:
    import gc

    op = make_op(*args, **kwargs)
    if not callable(op):
        raise TypeError(
            f"{_name(make_op)} must return a zero-argument callable, got {type(op).__name__}"
        )
    result: Any = None
    if warmup:
        result = op()
        synchronize(dev)
        result = None
    gc.collect()
    if dev.type == "cuda":
        synchronize(dev)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)
        result = op()
        synchronize(dev)
        reading = MemoryReading(
            torch.cuda.max_memory_allocated(dev) - base, base, "cuda_max_allocated"
        )
    elif _reset_peak_rss():
        base = _current_rss_bytes()
        result = op()
        peak = (_proc_status_kib("VmHWM") or 0) * 1024
        reading = MemoryReading(max(0, peak - base), base, "vm_hwm")
    else:
        hwm_before = _maxrss_bytes()
        base = _current_rss_bytes()
        result = op()
        peak = max(_maxrss_bytes(), _current_rss_bytes())
        exact = peak > hwm_before or hwm_before <= base
        reading = MemoryReading(max(0, peak - base), base, "ru_maxrss", exact)
    del result, op
    gc.collect()
    return reading


def _probe_child(in_path: str, out_path: str) -> None:
    payload = json.loads(Path(in_path).read_text())
    for p in reversed(payload["sys_path"]):
        if p not in sys.path:
            sys.path.insert(0, p)
    torch.set_num_threads(payload["threads"])
    dev = torch.device(payload["device"])
    results: list[dict[str, Any]] = []
    for target, args, kwargs, warmup in payload["cases"]:
        try:
            reading = _measure_one(
                _resolve_target(target), _decode(args), _decode(kwargs), warmup, dev
            )
            results.append(dataclasses.asdict(reading))
        except Exception as e:  # reported per case; the next case still runs
            results.append({"error": f"{type(e).__name__}: {e}".splitlines()[0][:500]})
    Path(out_path).write_text(json.dumps(results))


# --------------------------------------------------------------------------------------------
# formatting and tables
# --------------------------------------------------------------------------------------------


def fmt_seconds(s: float | None) -> str:
    if s is None or not math.isfinite(s):
        return "-"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if s >= scale:
            return f"{s / scale:.3g} {unit}"
    return f"{s * 1e9:.3g} ns"


def fmt_bytes(b: float | None) -> str:
    if b is None or not math.isfinite(b):
        return "-"
    for unit, scale in (("GiB", GiB), ("MiB", MiB), ("KiB", 1024)):
        if abs(b) >= scale:
            return f"{b / scale:.3g} {unit}"
    return f"{int(b)} B"


def fmt_ratio(r: float | None) -> str:
    if r is None or not math.isfinite(r):
        return "-"
    return f"{r:.3g}x"


def fmt_value(v: Any) -> str:
    """Default cell formatting: None -> '-', floats to 4 significant digits."""
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if not math.isfinite(v):
            return "-"
        return f"{v:.4g}"
    return str(v)


class Table:
    """A fixed-width text table.

    >>> t = Table(["backend", "time"], title="demo")
    >>> t.add_row("sdpa", "1.2 ms")
    >>> print(t)  # doctest: +NORMALIZE_WHITESPACE
    demo
    backend  time
    -------  ------
    sdpa     1.2 ms

    ``align`` gives one letter per column, ``l`` or ``r``; by default text columns are
    left-aligned and numeric ones right-aligned, judged by their first value.
    """

    def __init__(
        self, columns: Sequence[str], title: str | None = None, align: str | None = None
    ) -> None:
        if not columns:
            raise ValueError("a Table needs at least one column, got none")
        if align is not None and (len(align) != len(columns) or set(align) - {"l", "r"}):
            raise ValueError(
                f"align must be one of 'l'/'r' per column ({len(columns)} letters), got {align!r}"
            )
        self.columns = [str(c) for c in columns]
        self.title = title
        self.align = align
        self.rows: list[list[Any] | None] = []  # None marks a separator line

    def add_row(self, *values: Any) -> None:
        if len(values) == 1 and isinstance(values[0], Mapping):
            mapping = values[0]
            unknown = set(mapping) - set(self.columns)
            if unknown:
                raise ValueError(
                    f"unknown column(s) {sorted(unknown)}; expected some of {self.columns}"
                )
            values = tuple(mapping.get(c) for c in self.columns)
        if len(values) != len(self.columns):
            raise ValueError(
                f"row has {len(values)} values, expected {len(self.columns)} ({self.columns})"
            )
        self.rows.append(list(values))

    def add_separator(self) -> None:
        self.rows.append(None)

    def render(self) -> str:
        cells = [[fmt_value(v) for v in row] if row is not None else None for row in self.rows]
        widths = [len(c) for c in self.columns]
        for row in cells:
            if row is not None:
                widths = [max(w, len(c)) for w, c in zip(widths, row)]
        numeric = []
        for j in range(len(self.columns)):
            if self.align is not None:
                numeric.append(self.align[j] == "r")
                continue
            first = next((r[j] for r in self.rows if r is not None and r[j] is not None), None)
            numeric.append(isinstance(first, (int, float)) and not isinstance(first, bool))

        def line(values: Sequence[str]) -> str:
            parts = [
                v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)
            ]
            return "  ".join(parts).rstrip()

        out = [self.title] if self.title else []
        out.append(line(self.columns))
        rule = line(["-" * w for w in widths])
        out.append(rule)
        for row in cells:
            out.append(rule if row is None else line(row))
        return "\n".join(out)

    def __str__(self) -> str:
        return self.render()


@dataclasses.dataclass
class Check:
    """One target of a benchmark against this run.

    key: the target's name; target: what is promised; measured: what this run saw;
    passed: met or not, None when this run did not measure it; attnkit, reference: the two
    sides compared, where there are two; note: why it was not measured.
    """

    key: str
    target: str
    measured: str
    passed: bool | None
    attnkit: str = "-"
    reference: str = "-"
    note: str = ""

    @property
    def mark(self) -> str:
        return {True: "PASS", False: "FAIL", None: "n/a"}[self.passed]


def verdict(results: Sequence[bool]) -> bool | None:
    """All met, or None when nothing was measured."""
    return None if not results else all(results)


@dataclasses.dataclass(frozen=True)
class Report:
    """What a benchmark run gives its command: the text to print, the files it wrote and
    whether a measured target was missed."""

    text: str
    paths: tuple[Path, ...] = ()
    missed: bool = False


# --------------------------------------------------------------------------------------------
# JSON and plots
# --------------------------------------------------------------------------------------------


def keep_freed_memory() -> str | None:
    """Make glibc's malloc keep freed memory for reuse in this process; returns what was set,
    or None where that is not possible (no glibc).

    By default glibc serves a block above its mmap threshold (32 MiB at most) with a fresh
    mmap, and every page of that is faulted in, zeroed, when first written; a smaller block comes
    from the heap, reused with no page faults if a free block fits. A CPU tensor of 32 MiB or
    more is therefore sometimes free to allocate and sometimes costs a page fault per 4 KiB,
    depending on what the process freed before; in one benchmark process a 128 MiB tensor paid
    the faults on every call while 32 MiB ones did not. With mmap off (M_MMAP_MAX = 0) and no
    trimming of the heap (M_TRIM_THRESHOLD = -1), every freed block stays in the heap for the
    next call, as in a caching allocator (jemalloc, tcmalloc, PyTorch's CUDA allocator), and the
    time of an operation is its compute and memory traffic. Memory is not given back to the
    system until the process ends: for timing processes only (:func:`peak_memory` measures in
    fresh processes whose glibc thresholds are fixed so that large blocks go back on free).
    """
    import ctypes

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return None
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
    if mallopt(M_MMAP_MAX, 0) != 1 or mallopt(M_TRIM_THRESHOLD, -1) != 1:
        return None
    return "glibc malloc keeps freed blocks (M_MMAP_MAX=0, M_TRIM_THRESHOLD=-1)"


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


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _jsonable(dataclasses.asdict(obj))
    if isinstance(obj, (torch.dtype, torch.device, Path)):
        return str(obj)
    if isinstance(obj, torch.Tensor) and obj.numel() == 1:
        return _jsonable(obj.item())
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalars
        return _jsonable(obj.item())
    return obj


def write_json(path: str | os.PathLike[str], data: Any) -> Path:
    """Write ``data`` as indented JSON, atomically (readers never see half a file).

    Non-finite floats become null, dtypes/devices/paths strings, dataclasses dicts; keys keep
    their order.
    """
    from attnkit._util.fs import atomic_write_text

    text = json.dumps(_jsonable(data), indent=2, allow_nan=False)
    return atomic_write_text(Path(path), text + "\n")


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


Series = Mapping[str, Iterable[tuple[float, float | None]]]


def plot_loglog(
    path: str | os.PathLike[str],
    panels: Sequence[tuple[str, str, Series]],
    *,
    xlabel: str = "sequence length N",
    title: str | None = None,
    styles: Mapping[str, Mapping[str, Any]] | None = None,
) -> Path:
    """Save side-by-side log-log line plots to a PNG.

    ``panels`` is a list of ``(panel title, y label, series)``; ``series`` maps a line's name to
    its ``(x, y)`` points. Points with a missing or non-positive y are left out (a skipped
    measurement), and a series with no points is not drawn. ``styles`` maps a series name to
    extra keyword arguments for matplotlib's ``plot`` (``linestyle``, ``color``, ...).
    """
    from attnkit._util.optional import figure

    if not panels:
        raise ValueError("plot_loglog needs at least one panel, got none")
    fig = figure(6.0 * len(panels), 4.6, layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    names = list(dict.fromkeys(name for _, _, series in panels for name in series))
    colors = {name: f"C{i % 10}" if len(names) <= 10 else _tab20(i) for i, name in enumerate(names)}
    for ax, (panel_title, ylabel, series) in zip(axes, panels):
        drawn = 0
        for name, points in series.items():
            pts = sorted((x, y) for x, y in points if y is not None and math.isfinite(y) and y > 0)
            if not pts:
                continue
            xs, ys = zip(*pts)
            style = {
                "marker": "o",
                "markersize": 3,
                "color": colors[name],
                **dict((styles or {}).get(name, {})),
            }
            ax.plot(xs, ys, label=name, **style)
            drawn += 1
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(panel_title)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        if drawn:
            ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def _tab20(i: int) -> Any:
    from attnkit._util.optional import require

    return require("matplotlib", "viz", "plots").colormaps["tab20"](i % 20)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--probe":
        _probe_child(sys.argv[2], sys.argv[3])
    else:
        sys.exit("usage: python -m attnkit.bench.harness --probe IN OUT (used by peak_memory)")
