"""examples/from_scratch.py runs end to end on the real MiniLM weights: every claim of
docs/learn/from-scratch.md is an assertion in it, and the page's PNGs are written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "from_scratch.py"
PNGS = ("embeddings", "scores", "weights", "heads", "mask", "positions", "sense_by_layer")


def test_from_scratch_runs_and_asserts_its_claims(tmp_path):
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    found = re.search(r"^(\d+) assertions passed$", run.stdout, re.M)
    assert found is not None, run.stdout[-1000:]
    assert int(found.group(1)) >= 20
    for name in PNGS:
        png = tmp_path / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    # the fast path and the hand computation agree, as printed
    diffs = re.search(r"max \|sdpa - by hand\| ([0-9.e+-]+)", run.stdout)
    assert diffs is not None and float(diffs.group(1)) <= 1e-5
