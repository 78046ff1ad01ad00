"""A sweep's results: one row per finished point, read from its study, as CSV, JSON and text.

Each finished trial carries its point's record (:func:`attnkit.experiments.run.run_point`),
so the table can be made from the database alone, on any machine that reaches it.
``results.csv`` has one row per point; ``results.json`` has the rows with their validation
curves, the failed points with their errors, the best point, the power-law fit and the
specification.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from attnkit._util.fs import atomic_write_text
from attnkit.bench.report import Table, fmt_bytes, write_json
from attnkit.experiments.spec import SweepSpec

__all__ = ["COLUMNS", "Results", "collect", "write_tables"]

COLUMNS = (
    "parameters",
    "non_embedding_parameters",
    "flops_per_token",
    "tokens",
    "compute_flops",
    "wall_seconds",
    "tokens_per_second",
    "best_val_loss",
    "final_val_loss",
    "iters",
    "stopped_by",
    "val_windows",
)


@dataclass
class Results:
    """Finished points (``rows``: their records, in point order), failed points (``failed``:
    point, params, error) and the specification; ``fit`` the power-law fit of a sweep's
    compute frontier, once :func:`attnkit.experiments.sweep.finish` has made it.

    Examples:
        >>> results = Results(spec, rows=[])
        >>> results.best is None
        True
    """

    spec: SweepSpec
    rows: list[dict[str, Any]]
    failed: list[dict[str, Any]] = field(default_factory=list)
    fit: dict[str, Any] | None = None

    @property
    def columns(self) -> list[str]:
        """The CSV's columns: ``point``, the axes, the measured columns (and
        ``peak_memory_bytes`` when memory is measured), ``run_dir`` and ``trial``.

        Examples:
            >>> results.columns[:2]  # for a sweep over model.n_layer
            ['point', 'model.n_layer']
        """
        extra = ["peak_memory_bytes"] if self.spec.measure_memory else []
        return ["point", *self.spec.axes, *COLUMNS, *extra, "run_dir", "trial"]

    @property
    def best(self) -> dict[str, Any] | None:
        """The row with the lowest best validation loss (None without rows).

        Examples:
            >>> results.best["params"]
            {'model.n_layer': 4}
        """
        return min(self.rows, key=lambda r: r["best_val_loss"]) if self.rows else None

    def flat_rows(self) -> list[dict[str, Any]]:
        """Rows as the CSV has them: the axes' values beside the measured columns.

        Examples:
            >>> results.flat_rows()[0]["model.n_layer"]
            2
        """
        out = []
        for r in self.rows:
            row = {c: r.get(c) for c in self.columns}
            row.update(r["params"])
            out.append(row)
        return out

    def text(self, columns: Sequence[str] | None = None) -> str:
        """A fixed-width table of the rows (``columns``: a shorter choice).

        Args:
            columns: the columns to show (default: the axes, parameters, tokens, tokens/s and
                the best and final validation loss); ``peak_memory_bytes`` is added when
                memory is measured.

        Examples:
            >>> print(results.text(["model.n_layer", "best_val_loss"]))
        """
        cols = list(
            columns
            or [
                *self.spec.axes,
                "parameters",
                "tokens",
                "tokens_per_second",
                "best_val_loss",
                "final_val_loss",
            ]
        )
        if self.spec.measure_memory and "peak_memory_bytes" not in cols:
            cols.append("peak_memory_bytes")
        table = Table(cols)
        for r in self.flat_rows():
            table.add_row(
                *(
                    fmt_bytes(r.get(c)) if c == "peak_memory_bytes" else _cell(r.get(c))
                    for c in cols
                )
            )
        return table.render()


def _cell(v: Any) -> Any:
    if isinstance(v, float) and v.is_integer() and abs(v) >= 1e6:
        return f"{v:.3g}"
    return v


def collect(study: Any, spec: SweepSpec) -> Results:
    """The finished and failed points of ``study``.

    A point finished by several trials is shown once (its first); a failed point counts as
    failed only when no trial finished it.

    Args:
        study: the Optuna study of the sweep.
        spec: the sweep's specification.

    Examples:
        >>> len(collect(study, spec).rows)
    """
    optuna = __import__("optuna")
    states = optuna.trial.TrialState
    done: dict[int, dict[str, Any]] = {}
    errors: dict[int, dict[str, Any]] = {}
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        index = t.user_attrs.get("point")
        if not isinstance(index, int):
            continue
        if t.state == states.COMPLETE and index not in done:
            done[index] = {**t.user_attrs["record"], "trial": t.number}
        elif t.state == states.FAIL and "error" in t.user_attrs:
            errors[index] = {
                "point": index,
                "params": dict(spec.points[index]),
                "error": t.user_attrs["error"],
                "trial": t.number,
            }
    rows = [done[i] for i in sorted(done)]
    failed = [errors[i] for i in sorted(errors) if i not in done]
    return Results(spec, rows, failed)


def write_tables(results: Results, out: str | Path) -> list[Path]:
    """Write ``results.csv`` and ``results.json`` into ``out``; the two paths.

    Args:
        results: the results to write.
        out: an existing directory.

    Examples:
        >>> [p.name for p in write_tables(results, "runs/sweep")]
        ['results.csv', 'results.json']
    """
    out = Path(out)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, results.columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in results.flat_rows():
        writer.writerow({k: "" if v is None else v for k, v in row.items()})
    paths = [atomic_write_text(out / "results.csv", buf.getvalue())]
    best = results.best
    record: Mapping[str, Any] = {
        "kind": results.spec.kind,
        "budget": str(results.spec.budget),
        "columns": results.columns,
        "rows": results.rows,
        "failed": results.failed,
        "best": None
        if best is None
        else {
            "point": best["point"],
            "params": best["params"],
            "best_val_loss": best["best_val_loss"],
        },
        "fit": results.fit,
        "spec": results.spec.record(),
    }
    paths.append(write_json(out / "results.json", record))
    return paths
