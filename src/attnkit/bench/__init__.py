"""Benchmarks: attnkit against its references, written as tables, JSON and log-log plots.

Four modules hold the tools every benchmark shares: :mod:`attnkit.bench.harness` (devices,
rounds in turns, timing, the operations timed, the environment), :mod:`attnkit.bench.memory`
(peak memory, each operation in a fresh process), :mod:`attnkit.bench.report` (tables, checks,
the report, JSON) and :mod:`attnkit.bench.plots` (log-log plots). Each other module is one
benchmark: a frozen settings dataclass and ``run(settings)``, which reports progress through
:mod:`logging` and returns a :class:`~attnkit.bench.report.Report`.
The command line (``attnkit bench <name>``) builds the settings from its options and prints
the report.
"""
