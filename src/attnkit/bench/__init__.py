"""Benchmarks: attnkit against its references, written as tables, JSON and log-log plots.

``attnkit.bench.common`` holds the measurement tools (timing, peak memory in a fresh process,
tables, JSON, plots); each other module is one benchmark with ``add_arguments(parser)`` and
``run(args)``, reached from the command line as ``attnkit bench <name>``.
"""
