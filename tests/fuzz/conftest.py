"""The fuzz tests' summary: how many cases each surface tried, and how they ended."""

from __future__ import annotations

import json
import os

from _fuzz import SLOW, TALLY


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not TALLY:
        return
    write = terminalreporter.write_line
    profile = "slow" if SLOW else "default"
    write(
        f"fuzz cases per surface ({profile} profile; each refused with a clear error or checked):"
    )
    write(f"  {'surface':<28} {'tried':>7} {'refused':>8} {'accepted':>9}")
    total = 0
    for surface in sorted(TALLY):
        row = TALLY[surface]
        tried = row["refused"] + row["accepted"]
        total += tried
        write(f"  {surface:<28} {tried:>7} {row['refused']:>8} {row['accepted']:>9}")
    write(f"  {'total':<28} {total:>7}")
    path = os.environ.get("ATTNKIT_FUZZ_REPORT")
    if path:
        report = {
            "profile": profile,
            "exitstatus": int(exitstatus),
            "surfaces": {s: dict(r) for s, r in sorted(TALLY.items())},
        }
        with open(path, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=1)
            f.write("\n")
