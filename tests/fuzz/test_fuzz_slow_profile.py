"""The fuzz tests under the slow profile (20 times the examples, the slow cases too), through
``benchmarks/fuzz_report.py``, which prints the cases tried per surface."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_the_slow_profile():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "fuzz_report.py"), "--profile", "slow"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    print(proc.stdout)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert "cases outside a clear error: 0" in proc.stdout
    rows = [line.split() for line in proc.stdout.splitlines() if line.startswith("  ")]
    tried = {" ".join(r[:-3]): int(r[-3]) for r in rows if len(r) >= 4 and r[0] != "surface"}
    assert tried and all(n > 0 for n in tried.values()), tried
