"""Soak and load, short versions of ``benchmarks/soak.py`` (the full run is the slow test at
the end): memory stays flat over a pre-training run and over embed/classify streams, every
input gets one output in order, the commands really stream, and two runs at once do not
interfere.

All children run with one torch thread. Memory is read from ``/proc/PID/status``."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from attnkit.text.batching import chunked

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "soak.py"

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/status").is_file(), reason="reads memory from /proc (Linux)"
)


def _load_soak():
    spec = importlib.util.spec_from_file_location("attnkit_soak", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


soak = _load_soak()
MIB = soak.MIB


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("soak")


@pytest.fixture(scope="module")
def models(work) -> tuple[Path, Path]:
    return soak.tiny_models(work)


# --------------------------------------------------------------------------------------------
# the measuring tools
# --------------------------------------------------------------------------------------------
def test_slope_is_least_squares():
    assert soak.slope([0, 1, 2, 3], [1, 3, 5, 7]) == pytest.approx(2.0)
    # y = 0, 0, 3, 3 over x = 0..3: mean x 1.5, sum (x - mx) y = 0.5 * 3 + 1.5 * 3 = 6, sxx = 5
    assert soak.slope([0, 1, 2, 3], [0, 0, 3, 3]) == pytest.approx(6 / 5)
    with pytest.raises(ValueError, match="two or more distinct x"):
        soak.slope([1, 1], [2, 3])


def test_proc_memory_reads_this_process():
    rss, hwm = soak.proc_memory(__import__("os").getpid())
    statm_rss = int(Path("/proc/self/statm").read_text().split()[1]) * 4096  # resident pages
    assert 0 < rss <= hwm
    assert abs(rss - statm_rss) < 64 * MIB  # the two views of the same process agree roughly
    assert soak.proc_memory(2**22 + 12345) is None  # above the largest pid Linux hands out


def test_chunked_reads_lazily_and_keeps_order():
    seen: list[int] = []

    def source():
        for i in range(10):
            seen.append(i)
            yield i

    it = chunked(source(), 4)
    assert next(it) == [0, 1, 2, 3] and seen == [0, 1, 2, 3]  # nothing read past the chunk
    assert next(it) == [4, 5, 6, 7] and len(seen) == 8
    assert list(it) == [[8, 9]]
    assert list(chunked([], 3)) == []
    with pytest.raises(ValueError, match="size"):
        list(chunked([1], 0))


def test_a_command_that_reads_all_its_input_first_fails_the_stream_check(work):
    lines = [f"line {i}" for i in range(3000)]
    slurp = [sys.executable, "-c", "import sys; sys.stdout.write(sys.stdin.read())"]
    with pytest.raises(RuntimeError, match="does not stream"):
        soak.soak_stream(work, slurp, lines, str, max_lag=100, sample_every=100, stall_seconds=2)
    echo = [sys.executable, "-u", "-c", "import sys\nfor line in sys.stdin: print(line, end='')"]
    result = soak.soak_stream(work, echo, lines, str, max_lag=100, sample_every=100)
    assert result.ok and result.outputs == 3000
    drop = [
        sys.executable,
        "-u",
        "-c",
        "import sys\nfor i, line in enumerate(sys.stdin):\n    print(line, end='') if i != 7 else None",
    ]
    result = soak.soak_stream(work, drop, lines, str, max_lag=100, sample_every=100)
    assert result.outputs == 2999 and not result.in_order and not result.ok


# --------------------------------------------------------------------------------------------
# short soaks
# --------------------------------------------------------------------------------------------
def test_training_memory_stays_flat(work):
    """1,000 steps, evaluation and a checkpoint every 250. A short run has room for a single
    step of the allocator (1-2 MiB) to look like a slope, so the bound here is 8 MiB per 1,000
    steps (a leak of 8 KiB a step); the full 10,000-step run holds the 1 MiB target."""
    result = soak.soak_training(work, steps=1000, sample_every=50, interval=250, warmup=300)
    assert result.steps == 1000
    assert len(result.samples) >= 15, result.samples  # one reading per 50 steps, nearly all
    assert result.slope_mib_per_1000 < 8, result.report()
    after = [r for s, r in result.samples if s >= 300]
    assert max(after) - min(after) < 16 * MIB, result.report()


@pytest.mark.parametrize("command", ["embed", "classify"])
def test_commands_stream_stdin_one_output_per_line_in_order(work, models, command):
    """5,000 lines on stdin with at most 2,000 written ahead of the outputs (pipes of one
    page), so a command that read everything first would stall and fail; memory read every
    250 outputs."""
    encoder, classifier = models
    model = encoder if command == "embed" else classifier
    text_of = soak.embed_text if command == "embed" else soak.classify_text
    lines = soak.soak_lines(5000, seed=3)
    result = soak.soak_stream(
        work,
        soak.attnkit_command(command, "--model", str(model), "--batch-size", "16"),
        lines,
        text_of,
        max_lag=2000,
        sample_every=250,
    )
    assert result.outputs == 5000 and result.in_order, result.report()
    assert len(result.samples) == 20
    assert result.slope_mib_per_10k < 10, result.report()  # a leak of 1 KiB a line
    after = [r for k, r in result.samples if k >= result.warmup]
    assert max(after) - min(after) < 16 * MIB, result.report()


@pytest.fixture
def one_thread():
    """One torch thread for an in-process run, as the child processes use (tiny batches on a
    busy machine run many times slower with more)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_streamed_windows_join_into_the_same_file_as_one_encode(work, models, tmp_path, one_thread):
    """1,100 lines from --file are three windows of 16 batches of 32 (512, 512, 76): the .npy
    and .jsonl outputs hold every vector in input order, equal to one encode of all lines."""
    import json

    import numpy as np

    from attnkit import Encoder
    from attnkit.cli import main

    encoder, _ = models
    lines = soak.soak_lines(1100, seed=5)
    src = tmp_path / "lines.txt"
    src.write_text(
        "".join(line + "\n" + ("\n" if i % 97 == 0 else "") for i, line in enumerate(lines))
    )
    expected = Encoder.load(str(encoder)).encode(lines)  # (1100, 32)
    for name in ("vecs.npy", "vecs.jsonl"):
        assert (
            main(
                [
                    "embed",
                    "--model",
                    str(encoder),
                    "--file",
                    str(src),
                    "--out",
                    str(tmp_path / name),
                ]
            )
            == 0
        )
    got = np.load(tmp_path / "vecs.npy")
    assert got.shape == (1100, 32) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-6)
    rows = [json.loads(r) for r in (tmp_path / "vecs.jsonl").read_text().splitlines()]
    assert [r["text"] for r in rows] == lines
    np.testing.assert_allclose(np.array([r["embedding"] for r in rows]), expected, atol=1e-6)


def test_two_runs_at_once_equal_the_same_runs_alone(work):
    result = soak.concurrent_runs(work, steps=100)
    assert result.equal == {"seed 1": True, "seed 2": True}, result.report()
    assert result.runs_differ, result.report()
    assert result.tensors > 0


# --------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_full_soak_script(tmp_path):
    """The whole script: 10,000 steps, 100k lines to embed, 10k to classify, two 1,000-step
    runs at once; it exits 1 when a figure misses its target."""
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--work", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "all soak checks passed" in proc.stdout
    assert "training soak: 10000 steps" in proc.stdout
    assert "embed stream: 100000 lines in on stdin, 100000 outputs, each in its input order" in (
        proc.stdout
    )
    assert "classify stream: 10000 lines in on stdin, 10000 outputs" in proc.stdout
