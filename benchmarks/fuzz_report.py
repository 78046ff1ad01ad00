"""Fuzz report: how many bad-input cases each surface was tried with, and how each ended.

    python benchmarks/fuzz_report.py [--profile default|slow]

Runs the hypothesis fuzz tests of ``tests/fuzz`` (the Python API: ``attention()`` with every
argument, each attention variant, ``MultiHeadAttention``, ``generate()``, ``Encoder.encode()``;
the command line: every command of the table, in-process, and a sample in real processes) in
a child pytest with ``ATTNKIT_FUZZ_PROFILE`` set (``slow``: 20 times the examples of the
default run, plus the slow-marked cases) and prints, per surface:

* **tried**: cases run (hypothesis examples and fixed cases);
* **refused**: ended in ``ValueError``/``TypeError`` with a one-line message (API), or exit
  status 2 with exactly one stderr line ``attnkit: error: ...`` (CLI);
* **accepted**: valid calls whose result was checked (shape, a float64 reference where there is
  one, finite values; for the CLI exit 0 and no NaN printed);
* **outside a clear error**: anything else (a traceback, another exception or status, a NaN
  result, a bad input accepted). Any such case fails its test, so this is 0 exactly when the
  child pytest passed; the script exits with the child's status.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=("default", "slow"), default="default")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        report_path = Path(tmp) / "fuzz.json"
        env = dict(
            os.environ, ATTNKIT_FUZZ_PROFILE=args.profile, ATTNKIT_FUZZ_REPORT=str(report_path)
        )
        env.pop("ATTNKIT_DEBUG", None)
        marks = "not gpu" if args.profile == "slow" else "not slow and not gpu"
        cmd = [
            sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/fuzz",
            "-m", marks, "-k", "not test_the_slow_profile",
        ]  # fmt: skip
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if not report_path.exists():
            sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
            print("fuzz_report: the fuzz tests wrote no report", file=sys.stderr)
            return proc.returncode or 1
        report = json.loads(report_path.read_text())
    print(f"fuzz report ({args.profile} profile), {wall:.0f} s wall")
    print(f"  {'surface':<28} {'tried':>7} {'refused':>8} {'accepted':>9}")
    total = 0
    for surface, row in report["surfaces"].items():
        tried = row.get("refused", 0) + row.get("accepted", 0)
        total += tried
        print(f"  {surface:<28} {tried:>7} {row.get('refused', 0):>8} {row.get('accepted', 0):>9}")
    outside = "0" if proc.returncode == 0 else "at least 1 (see the failing tests below)"
    print(f"  {'total':<28} {total:>7}")
    print(f"cases outside a clear error: {outside}")
    if proc.returncode:
        print(proc.stdout[-6000:])
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
