"""Peak memory of an operation, each measured in a fresh child process.

A fresh process means earlier work in this one (allocator caches, freed-but-kept heap pages,
compiled kernels) can neither hide nor inflate a reading. The parent side is
:func:`measure_peak_memories` (and :func:`measure_peak_memory`, :func:`peak_memory` for one
operation): it writes the job (:class:`ProbeCase` rows sent by name, arguments as JSON) to a
file, runs ``python -m attnkit.cli.probe --probe IN OUT`` and reads the answers back as
:class:`MemoryReading` rows. The child side is :func:`read_probe_job` and
:func:`answer_probe_job`; the command in ``cli/`` that runs them is the one place that sets the
child's thread count and import path, as the job asks.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from attnkit._util.fs import atomic_write_text
from attnkit.bench.harness import resolve_device, synchronize

PROBE_MODULE = "attnkit.cli.probe"  # run as ``python -m`` in the child


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


@dataclasses.dataclass(frozen=True)
class ProbeJob:
    """What the parent asks of the probe process, as the JSON file it writes.

    cases: one ``[target, args, kwargs, warmup]`` row per :class:`ProbeCase`, the target as
    ``[module, qualname]`` (or ``["__main__", script, qualname]``) and the arguments in their
    JSON form; device: where to measure; threads: torch's intra-op thread count in the parent,
    for the child to use too; sys_path: the parent's import path, for the child to find the same
    modules.
    """

    cases: list[list[Any]]
    device: str
    threads: int
    sys_path: list[str]


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
    job = ProbeJob(wire, str(dev), torch.get_num_threads(), list(sys.path))
    env = dict(os.environ)
    # The child must find the same modules as this process (tests, scripts on sys.path).
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    # Fixed glibc thresholds: blocks over 128 KiB are mmap'ed and unmapped on free.
    env.setdefault("MALLOC_MMAP_THRESHOLD_", str(128 * 1024))
    env.setdefault("MALLOC_TRIM_THRESHOLD_", str(128 * 1024))
    names = ", ".join(_name(c.make_op) for c in cases)
    with tempfile.TemporaryDirectory(prefix="attnkit-probe-") as tmp:
        inp, out = Path(tmp, "in.json"), Path(tmp, "out.json")
        atomic_write_text(inp, json.dumps(dataclasses.asdict(job)))
        cmd = [sys.executable, "-m", PROBE_MODULE, "--probe", str(inp), str(out)]
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
    # The child's __main__ is the probe command, so a function from the caller's script is found
    # by file and name and loaded there, much as multiprocessing's spawn does.
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


def read_probe_job(path: str | os.PathLike[str]) -> ProbeJob:
    """The job :func:`measure_peak_memories` wrote for the child process to ``path``."""
    data = json.loads(Path(path).read_text())
    return ProbeJob(data["cases"], data["device"], int(data["threads"]), list(data["sys_path"]))


def answer_probe_job(job: ProbeJob, out_path: str | os.PathLike[str]) -> None:
    """Measure every case of ``job`` in this process, one after another, and write the answers
    to ``out_path`` for the parent: a reading per case, or the first line of its error (the
    next case still runs). The caller has set the thread count and import path the job asks."""
    dev = torch.device(job.device)
    results: list[dict[str, Any]] = []
    for target, args, kwargs, warmup in job.cases:
        try:
            reading = _measure_one(
                _resolve_target(target), _decode(args), _decode(kwargs), warmup, dev
            )
            results.append(dataclasses.asdict(reading))
        except Exception as e:  # reported per case; the next case still runs
            results.append({"error": f"{type(e).__name__}: {e}".splitlines()[0][:500]})
    atomic_write_text(Path(out_path), json.dumps(results))
