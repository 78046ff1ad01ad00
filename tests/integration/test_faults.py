"""Kills during training: the short version of ``benchmarks/faults.py``.

A tiny GPT run (dropout on, so the random state matters) is SIGKILLed once at each named kill
point of :mod:`attnkit._util.faults` (the phases of a checkpoint write, the pruning of an old
checkpoint, evaluation), resumed with ``--resume`` each time; every checkpoint it writes must equal, bit for bit, the one an
uninterrupted run wrote at the same step (weights, optimizer state, RNG and data position), and
no complete checkpoint may be damaged or lost. The full version (20 kills, most of them sent
from outside at seeded random moments, and 10 of a torchrun run) is the script, and
``test_full_benchmark`` (slow).
"""

from __future__ import annotations

import importlib.util
import os
import random
import signal
import sys
from pathlib import Path

import pytest
import torch

from attnkit import cli
from attnkit._util import faults
from attnkit.text.corpora import tinyshakespeare_path

ROOT = Path(__file__).resolve().parents[2]


def _bench():
    spec = importlib.util.spec_from_file_location("faults_bench", ROOT / "benchmarks" / "faults.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["faults_bench"] = module
    spec.loader.exec_module(module)
    return module


bench = _bench()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    try:
        source = tinyshakespeare_path()
    except ValueError as e:
        pytest.fail(f"tiny-shakespeare test data missing: {e}")
    path = tmp_path_factory.mktemp("faults") / "corpus.txt"
    path.write_text(source.read_text()[:200_000])
    return path


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("ATTNKIT_CACHE", str(tmp_path / "cache"))
    for name in (faults.ENV, faults.RANK_ENV):
        monkeypatch.delenv(name, raising=False)
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_a_kill_at_each_named_point_resumes_bit_identically(corpus, tmp_path):
    steps = 80
    runner = bench.Runner(corpus, tmp_path / "cache", steps)
    ref = tmp_path / "reference"
    # the uninterrupted run, in this process (every checkpoint kept)
    argv = runner.argv(ref, resume=False, keep=0)
    assert cli.main(argv[argv.index("pretrain") :]) == 0
    assert len(list((ref / "checkpoints").glob("step-*"))) == steps // bench.CKPT_EVERY
    rng = random.Random(3)
    kills = [bench.Kill(p) for p in bench.NAMED]
    lines: list[str] = []
    r = bench.faulted(runner, ref, tmp_path / "faulted", kills, rng, say=lines.append)
    assert r.problems == [], (r.problems, lines)
    assert r.kills == len(kills), lines
    assert r.resumes == len(kills) and r.matched == r.resumes, (r, lines)
    assert r.lost == [], lines
    assert r.final_equal, lines
    # the named points were really where the runs died: each kill line names its point
    for point in bench.NAMED:
        assert any(f"at {point}@" in line for line in lines), (point, lines)


def test_the_comparison_sees_a_one_bit_difference(tmp_path):
    """same_checkpoint is what the figures rest on: it must tell two checkpoints apart that
    differ in one bit of one weight, or in the data position."""
    from safetensors.torch import save_file

    for name in ("a", "b"):
        d = tmp_path / name
        d.mkdir()
        save_file(
            {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3)}, d / "model.safetensors"
        )
        torch.save(
            {"step": 10, "elapsed": float(len(name)), "data_rng": torch.arange(4)}, d / "state.pt"
        )
    assert bench.same_checkpoint(tmp_path / "a", tmp_path / "b") is None  # elapsed is ignored
    w = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    w.view(torch.int32)[1, 2] ^= 1  # the lowest mantissa bit of one element
    save_file({"w": w}, tmp_path / "b" / "model.safetensors")
    assert bench.same_checkpoint(tmp_path / "a", tmp_path / "b") == "weights.w"
    save_file(
        {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3)},
        tmp_path / "b" / "model.safetensors",
    )
    torch.save(
        {"step": 10, "elapsed": 1.0, "data_rng": torch.tensor([0, 1, 2, 4])},
        tmp_path / "b" / "state.pt",
    )
    assert bench.same_checkpoint(tmp_path / "a", tmp_path / "b") == "state.data_rng"


@pytest.mark.parametrize(
    "value,needle",
    [
        ("before-manfest", "names no kill point"),
        ("in-eval@0", "whole number >= 1"),
        ("in-eval@two", "whole number >= 1"),
    ],
)
def test_a_misspelt_fault_is_an_error_not_a_run_that_never_dies(monkeypatch, value, needle):
    monkeypatch.setenv(faults.ENV, value)
    with pytest.raises(ValueError, match=needle):
        faults.point("in-eval")


def test_the_kill_point_counts_occurrences_and_ranks(monkeypatch):
    killed: list[int] = []
    monkeypatch.setattr(faults.os, "kill", lambda pid, sig: killed.append(sig))
    monkeypatch.setattr(faults, "_passed", {})
    monkeypatch.setenv(faults.ENV, "after-weights@3")
    for _ in range(2):
        faults.point("after-weights")
        faults.point("in-eval")
    assert killed == []
    faults.point("after-weights")
    assert killed == [signal.SIGKILL]
    faults.point("after-weights")  # the 4th time: no second kill
    assert killed == [signal.SIGKILL]
    monkeypatch.setattr(faults, "_passed", {})
    monkeypatch.setenv(faults.ENV, "in-eval")
    monkeypatch.setenv(faults.RANK_ENV, "1")
    monkeypatch.setenv("RANK", "0")
    faults.point("in-eval")
    assert killed == [signal.SIGKILL]  # not this rank
    monkeypatch.setenv("RANK", "1")
    faults.point("in-eval")
    assert killed == [signal.SIGKILL, signal.SIGKILL]


@pytest.mark.slow
def test_full_benchmark(tmp_path):
    """20 kills of one process and 10 of a 2-process torchrun run (minutes)."""
    assert bench.main(["--dir", str(tmp_path)]) == 0


def test_no_fault_variable_leaks_into_the_children():
    runner = bench.Runner(Path("c.txt"), Path("cache"), 10)
    os.environ[faults.ENV] = "in-eval"
    try:
        assert faults.ENV not in runner.env()
        assert runner.env("after-weights@2")[faults.ENV] == "after-weights@2"
    finally:
        del os.environ[faults.ENV]
