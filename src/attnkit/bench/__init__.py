"""Benchmarks: attnkit against its references, written as tables, JSON and log-log plots.

:mod:`attnkit.bench.harness` holds the measurement tools every benchmark shares (rounds in
turns, timing, peak memory in a fresh process, checks, tables, JSON, plots, the environment);
each other module is one benchmark: a frozen settings dataclass and ``run(settings)``, which
reports progress through :mod:`logging` and returns a :class:`~attnkit.bench.harness.Report`.
The command line (``attnkit bench <name>``) builds the settings from its options and prints
the report.
"""
