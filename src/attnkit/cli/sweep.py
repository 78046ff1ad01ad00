"""``attnkit sweep`` and ``attnkit compare-attention``: experiments at equal budget.

    attnkit sweep --budget seconds=90                       # the default depth x width grid
    attnkit sweep --config gpt-shakespeare-char --grid model.n_layer=2,4,8 \\
        --grid model.d_model=64,128,256 --grid train.dropout=0,0.1 --budget tokens=2e6 \\
        --data shakespeare --out runs/sweep
    attnkit sweep --random 8 --range train.lr=1e-4:1e-2:log --grid model.n_layer=2,4 ...
    attnkit compare-attention --variants exact,local,performer --seq-len 256,1024 \\
        --budget seconds=60

The points live in an Optuna study (a SQLite file ``sweep.db`` in ``--out``, or ``--storage
URL``): run the same command again after a kill and finished points are kept; run it in more
processes, or on more machines against one database URL, and they share the points. What
each command writes is said in :mod:`attnkit.experiments.sweep`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from attnkit.cli.types import UsageError, positive_int, set_threads, size_list, threads_argument
from attnkit.training import config as run_config

__all__ = [
    "compare_attention_arguments",
    "compare_attention_command",
    "sweep_arguments",
    "sweep_command",
]

DEFAULT_CONFIG = "sweep-char"
DEFAULT_GRID = ("model.n_layer=1,2,4", "model.d_model=64,128")


def _common(parser: argparse.ArgumentParser, out: str) -> None:
    parser.add_argument(
        "--config",
        default=DEFAULT_CONFIG,
        help=f"base run config: a TOML path or a name shipped in attnkit/configs "
        f"(default {DEFAULT_CONFIG})",
    )
    parser.add_argument(
        "--budget",
        required=True,
        metavar="KIND=AMOUNT",
        help="what every point may spend: seconds=60, tokens=2e6 or flops=1e13",
    )
    parser.add_argument("--data", help="corpus name or .txt/.jsonl path; sets data.corpus")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="fix a config key for every point (repeatable), e.g. --set train.batch_size=16",
    )
    parser.add_argument(
        "--out", default=out, help=f"directory of the study, the runs and the report ({out})"
    )
    parser.add_argument(
        "--storage",
        metavar="URL",
        help="the study's database URL (default sqlite:///OUT/sweep.db); one URL shared by "
        "processes on several machines splits the points between them",
    )
    parser.add_argument("--study", default="sweep", help="study name in the storage (sweep)")
    parser.add_argument(
        "--heartbeat",
        type=positive_int,
        default=5,
        metavar="S",
        help="seconds between a running point's heartbeats; a point silent for 4 of them (a "
        "killed process) is run again, resumed from its checkpoint (default 5)",
    )
    threads_argument(parser)


def sweep_arguments(parser: argparse.ArgumentParser) -> None:
    _common(parser, "runs/sweep")
    parser.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="KEY=V1,V2,...",
        help="an axis (repeatable): any config key and its values; without --grid and "
        f"--range: {' '.join(DEFAULT_GRID)}",
    )
    parser.add_argument(
        "--random",
        type=positive_int,
        metavar="N",
        help="N random draws instead of the grid: each --grid axis picks one of its values, "
        "each --range a number",
    )
    parser.add_argument(
        "--range",
        action="append",
        default=[],
        metavar="KEY=LOW:HIGH[:log]",
        help="a range for --random (repeatable); integers when both ends are",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random draws (0)")


def compare_attention_arguments(parser: argparse.ArgumentParser) -> None:
    from attnkit.experiments.compare import DEFAULT_SEQ_LENS, DEFAULT_VARIANTS

    _common(parser, "runs/compare-attention")
    parser.add_argument(
        "--variants",
        default=",".join(DEFAULT_VARIANTS),
        help=f"comma-separated: exact and variant names ({','.join(DEFAULT_VARIANTS)})",
    )
    parser.add_argument(
        "--seq-len",
        default=",".join(map(str, DEFAULT_SEQ_LENS)),
        help=f"comma-separated sequence lengths ({','.join(map(str, DEFAULT_SEQ_LENS))})",
    )
    parser.add_argument(
        "--tokens-per-step",
        type=positive_int,
        metavar="N",
        help="tokens in each optimizer step at every length (default: the config's "
        "batch_size x block_size); batch_size = N / seq_len",
    )
    parser.add_argument(
        "--no-memory",
        action="store_true",
        help="skip the peak-memory probe of each point (a fresh process each)",
    )


def _base(args: argparse.Namespace) -> dict[str, Any]:
    base = run_config.read_file(run_config.find_config(args.config))
    overrides = [run_config.parse_override(item) for item in args.set]
    if args.data:
        overrides.append(("data.corpus", args.data))
    for key, value in overrides:
        section, _, name = key.partition(".")
        if not isinstance(base.get(section, {}), dict):
            raise UsageError(f"config section {section!r} is not a table in {args.config!r}")
        base.setdefault(section, {})[name] = value
    run_config.build(base, [])  # an unknown key or a bad value: named here
    return base


def _setup(args: argparse.Namespace) -> None:
    """Process state for a sweep: threads, and Optuna's own log lines kept to errors."""
    set_threads(args.threads)
    from attnkit._util.optional import require

    optuna = require("optuna", "sweep", "sweeps")
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # failures: one line of ours


def _report(outcome: Any, out: Path) -> int:
    results = outcome.results
    print(results.text())
    if results.fit is not None:
        print(results.fit["text"])
    best = results.best
    if best is not None:
        params = ", ".join(f"{k}={v}" for k, v in best["params"].items())
        print(f"best point: {params} (best val loss {best['best_val_loss']:.4f})")
    for f in results.failed:
        print(f"failed point {f['point']} {f['params']}: {f['error']}")
    print(f"this process ran {outcome.ran} point(s); study: {outcome.storage}")
    print(f"report: {out / 'report.html'}  table: {out / 'results.csv'}")
    return 1 if results.failed else 0


def sweep_command(args: argparse.Namespace) -> int:
    from attnkit.experiments import Axis, Budget, Range, SweepSpec, grid_points, random_points
    from attnkit.experiments.sweep import run

    budget = Budget.parse(args.budget)
    grid = args.grid or ([] if args.range else list(DEFAULT_GRID))
    axes = [Axis.parse(g) for g in grid]
    if args.range and args.random is None:
        raise UsageError("--range is for --random N draws; add --random N, or use --grid")
    ranges: list[Range] = []
    if args.random is not None:
        ranges = [Range.parse(r) for r in args.range]
        points = random_points(axes, ranges, args.random, args.seed)
        keys = tuple(a.key for a in axes) + tuple(r.key for r in ranges)
    else:
        points = grid_points(axes)
        keys = tuple(a.key for a in axes)
    spec = SweepSpec(_base(args), tuple(points), budget, axes=keys, ranges=tuple(ranges))
    _setup(args)
    out = Path(args.out)
    outcome = run(spec, out, args.storage, args.study, args.heartbeat)
    return _report(outcome, out)


def compare_attention_command(args: argparse.Namespace) -> int:
    from attnkit.experiments import Budget, compare_spec
    from attnkit.experiments.sweep import run

    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    spec = compare_spec(
        _base(args),
        variants,
        size_list(args.seq_len),
        Budget.parse(args.budget),
        args.tokens_per_step,
        measure_memory=not args.no_memory,
    )
    _setup(args)
    out = Path(args.out)
    outcome = run(spec, out, args.storage, args.study, args.heartbeat)
    return _report(outcome, out)
