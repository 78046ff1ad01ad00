"""The peak-memory probe process: ``python -m attnkit.cli.probe --probe IN OUT``.

:func:`attnkit.bench.memory.measure_peak_memories` starts this in a fresh Python process for
every batch of operations it measures. It reads the job the parent wrote to ``IN``, takes the
parent's torch thread count and import path (the process-wide settings, made here and only
here), measures each case and writes the answers to ``OUT``. Not one of the ``attnkit``
commands: only the benchmarks run it.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import torch

from attnkit.bench.memory import answer_probe_job, read_probe_job

__all__ = ["main"]

USAGE = "usage: python -m attnkit.cli.probe --probe IN OUT (used by attnkit.bench.memory)"


def main(argv: Sequence[str] | None = None) -> int:
    """Answer one probe job; returns the exit status (2 for a bad command line)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 3 or args[0] != "--probe":
        print(USAGE, file=sys.stderr)
        return 2
    _, in_path, out_path = args
    job = read_probe_job(in_path)
    for p in reversed(job.sys_path):  # the parent's modules: tests, scripts on its path
        if p not in sys.path:
            sys.path.insert(0, p)
    torch.set_num_threads(job.threads)
    answer_probe_job(job, out_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
