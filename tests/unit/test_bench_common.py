"""Measurement tools: peak memory in a fresh process, timing, tables, JSON and plots."""

import json
import math
import platform
import time

import pytest
import torch

from attnkit.bench import report
from attnkit.bench.harness import MiB, interleaved_samples, spread, time_fn, time_interleaved
from attnkit.bench.memory import ProbeCase, measure_peak_memories, peak_memory
from attnkit.bench.plots import plot_loglog
from attnkit.bench.report import Table, write_json

# -------------------------------------------------------------------- operations for the probes
# Module level, so the probe process can import them by name.


def make_alloc(mib: int, input_mib: int = 0, freed_before_mib: int = 0):
    """Inputs of ``input_mib`` stay alive; ``freed_before_mib`` is touched and freed during set-up
    (raising the process's high-water mark above the baseline); the op allocates ``mib``."""
    inputs = torch.ones(input_mib * MiB // 4) if input_mib else None
    if freed_before_mib:
        tmp = torch.ones(freed_before_mib * MiB // 4)
        del tmp

    def op():
        y = torch.ones(mib * MiB // 4)  # torch.ones writes every page, so they are resident
        return float(y[-1]) + (0.0 if inputs is None else float(inputs[0]))

    return op


def make_nothing():
    x = torch.ones(1024)
    return lambda: float(x.sum())


def make_failing():
    def op():
        raise ValueError("deliberate failure in op")

    return op


def make_temporary(mib: int):
    """The op allocates ``mib`` and frees it before returning: a peak that leaves no trace."""

    def op():
        y = torch.ones(mib * MiB // 4)
        s = float(y[0])
        del y
        return s

    return op


# -------------------------------------------------------------------------------- peak memory


def test_peak_memory_of_a_200_mib_tensor_in_a_fresh_process():
    got = peak_memory(make_alloc, (200,))
    assert abs(got / MiB - 200) <= 0.15 * 200, f"read {got / MiB:.1f} MiB for a 200 MiB tensor"


def test_peak_memory_counts_the_op_only():
    cases = [
        ProbeCase(make_alloc, (100,), {"input_mib": 300}, warmup=False),  # inputs are baseline
        ProbeCase(
            make_alloc, (100,), {"freed_before_mib": 400}, warmup=False
        ),  # earlier peak hidden?
        ProbeCase(make_temporary, (150,), warmup=False),  # freed inside the op: still its peak
        ProbeCase(make_nothing, warmup=True),
        ProbeCase(make_failing, warmup=False),
        ProbeCase(make_alloc, (50,)),  # a failed case does not stop the next one
    ]
    with_inputs, after_freed, temporary, nothing, failed, after_failure = measure_peak_memories(
        cases
    )
    assert abs(with_inputs.peak_bytes / MiB - 100) <= 15, with_inputs
    assert with_inputs.baseline_bytes >= 300 * MiB, with_inputs
    if with_inputs.method != "ru_maxrss":  # the peak counter can be reset (Linux)
        assert abs(after_freed.peak_bytes / MiB - 100) <= 15, after_freed
        assert abs(temporary.peak_bytes / MiB - 150) <= 0.15 * 150, temporary
    assert nothing.peak_bytes < 8 * MiB, nothing
    assert isinstance(failed, RuntimeError) and "deliberate failure in op" in str(failed)
    assert abs(after_failure.peak_bytes / MiB - 50) <= 10, after_failure


def test_peak_memory_raises_for_a_failing_op():
    with pytest.raises(RuntimeError, match="make_failing.*deliberate failure"):
        peak_memory(make_failing, warmup=False)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_peak_memory_on_cuda():
    got = peak_memory(make_cuda_alloc, (200,), device="cuda")
    assert abs(got / MiB - 200) <= 0.15 * 200


def make_cuda_alloc(mib: int):
    return lambda: torch.ones(mib * MiB // 4, device="cuda")


# ------------------------------------------------------------------------------------- timing


def test_time_fn_median_and_call_counts():
    calls = []

    def sleepy():
        calls.append(1)
        time.sleep(0.02)

    t = time_fn(sleepy, warmup=2, repeat=3)
    assert len(calls) == 5
    assert 0.019 <= t < 0.06, t


def test_time_fn_stops_at_max_seconds_and_continues_to_min_seconds():
    calls = []

    def slow():
        calls.append(1)
        time.sleep(0.05)

    time_fn(slow, warmup=0, repeat=1000, max_seconds=0.2)
    assert 1 <= len(calls) <= 8, len(calls)
    calls.clear()
    time_fn(lambda: calls.append(1), warmup=0, repeat=1, min_seconds=0.05)
    assert len(calls) > 10


def test_time_interleaved_ratio():
    times = time_interleaved({"a": lambda: time.sleep(0.01), "b": lambda: time.sleep(0.03)}, 0, 5)
    assert 2.0 < times["b"] / times["a"] < 4.0, times


def test_time_interleaved_counts_samples_taken_before():
    times = time_interleaved({"a": lambda: None}, 0, 1, samples={"a": [1.0, 1.0]})
    assert times["a"] == 1.0  # median of [1.0, 1.0, ~0]
    with pytest.raises(ValueError, match=r"samples given for \['b'\]"):
        time_interleaved({"a": lambda: None}, 0, 1, samples={"b": [1.0]})


def test_interleaved_rounds_flip_their_order_every_other_round():
    order: list[str] = []
    taken = interleaved_samples(
        {"a": lambda: order.append("a"), "b": lambda: order.append("b")}, 0, 4
    )
    assert order == ["a", "b", "b", "a", "a", "b", "b", "a"]
    assert [len(v) for v in taken.values()] == [4, 4]


def test_spread_is_the_range_over_the_median():
    assert spread([1.0, 1.1, 0.9]) == pytest.approx(0.2)
    assert spread([2.0]) == 0.0
    with pytest.raises(ValueError, match="no samples"):
        spread([])


@pytest.mark.parametrize("warmup, repeat", [(-1, 3), (0, 0), (1.5, 3)])
def test_time_fn_rejects_bad_counts(warmup, repeat):
    with pytest.raises(ValueError, match=r"(warmup|repeat) must be an int"):
        time_fn(lambda: None, warmup, repeat)


# ----------------------------------------------------------------------------- table, json, png


def test_table_alignment_and_errors():
    t = Table(["name", "value"], title="T")
    t.add_row("sdpa", 1.5)
    t.add_row({"name": "math", "value": None})
    t.add_separator()
    t.add_row("naive", 12.25)
    lines = t.render().splitlines()
    assert lines[0] == "T"
    assert lines[1].split() == ["name", "value"]
    assert lines[3] == "sdpa     1.5"
    assert lines[4] == "math       -"
    assert set(lines[5].replace(" ", "")) == {"-"}
    assert lines[6] == "naive  12.25"
    assert len({len(line) for line in lines[1:]}) == 1  # columns line up
    with pytest.raises(ValueError, match="row has 3 values, expected 2"):
        t.add_row(1, 2, 3)
    with pytest.raises(ValueError, match="unknown column"):
        t.add_row({"nme": 1})
    with pytest.raises(ValueError, match="align"):
        Table(["a", "b"], align="lx")


def test_formatters():
    assert report.fmt_bytes(200 * MiB) == "200 MiB"
    assert report.fmt_bytes(3 * 1024**3) == "3 GiB"
    assert report.fmt_seconds(0.0123) == "12.3 ms"
    assert report.fmt_seconds(None) == "-"
    assert report.fmt_ratio(0.951) == "0.951x"


def test_write_json(tmp_path):
    path = write_json(
        tmp_path / "sub" / "r.json",
        {"nan": math.nan, "dtype": torch.float32, "t": torch.tensor(2.5), "xs": (1, 2)},
    )
    data = json.loads(path.read_text())
    assert data == {"nan": None, "dtype": "torch.float32", "t": 2.5, "xs": [1, 2]}
    assert not list(tmp_path.glob("sub/*.tmp"))


def test_plot_loglog_writes_png(tmp_path):
    panels = [
        ("time", "s", {"a": [(256, 0.1), (512, 0.4)], "skipped": [(256, None)]}),
        ("memory", "MiB", {"a": [(256, 1.0), (512, 0.0)]}),
    ]
    path = plot_loglog(tmp_path / "p.png", panels, styles={"a": {"linestyle": "--"}})
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="at least one panel"):
        plot_loglog(tmp_path / "q.png", [])


_REFAULT = r"""
import resource, sys, torch
from attnkit.cli.bench import keep_freed_memory
what = keep_freed_memory() if sys.argv[1] == "keep" else "default"
x = torch.randn(16 * 2**20)  # 64 MiB: above glibc's largest mmap threshold (32 MiB)
for _ in range(40):  # until the heap has settled (small allocations split freed blocks at first;
    # with the command modules imported, 12 rounds were not always enough on a loaded machine)
    (x * 2).exp_().sum()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):  # the same operation again and again, as a benchmark times it
    (x * 2).exp_().sum()  # a 64 MiB temporary, every page written, then freed
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before, what)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_keep_freed_memory_reuses_large_blocks_without_page_faults():
    import os
    import subprocess
    import sys

    # 4 KiB pages and glibc's defaults, whatever this process was started with (the attnkit
    # command turns on PyTorch's huge-page allocations)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_TUNABLES"))}
    env["THP_MEM_ALLOC_ENABLE"] = "0"

    def faults(mode):
        out = subprocess.run(
            [sys.executable, "-c", _REFAULT, mode],
            capture_output=True,
            text=True,
            check=True,
            env=env,
        )
        n, what = out.stdout.strip().split(" ", 1)
        return int(n), what

    pages = 10 * 64 * 2**20 // 4096  # of 10 calls
    default, _ = faults("default")
    kept, what = faults("keep")
    assert default > pages // 2  # a fresh mmap each call: a fault per 4 KiB page
    # at most a call or two's worth (the heap may still move a block once, as seen in CI on a
    # loaded machine: exactly one call's worth), against one call's worth on every call by default
    assert kept <= 2 * pages // 10 < default // 3, (what, kept, default)
    assert "M_MMAP_MAX=0" in what


def test_the_probe_process_refuses_a_bad_command_line():
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "attnkit.cli.probe", "--probe", "only-one-path"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2
    assert "usage: python -m attnkit.cli.probe --probe IN OUT" in out.stderr
