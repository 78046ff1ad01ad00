"""Run a sweep or an attention comparison end to end, and write what it found.

    spec = SweepSpec(base, grid_points(axes), Budget.parse("seconds=60"))
    outcome = run(spec, "runs/sweep")     # this process's share of the points, then the outputs

:func:`run` opens the study (:mod:`attnkit.experiments.study`), works on it until every point
is finished or failed, and :func:`finish` writes into ``out``: ``results.csv``,
``results.json``, the plots and ``report.html``. A sweep's plots are loss against parameters,
depth and width (when they vary), the learning curves and loss against compute with the power
law fitted to the compute frontier; a comparison's are the quality-vs-cost frontier and the
learning curves.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from attnkit.experiments import plots
from attnkit.experiments.fit import compute_frontier, fit_power_law
from attnkit.experiments.report import write_report
from attnkit.experiments.results import Results, collect, write_tables
from attnkit.experiments.spec import SweepSpec
from attnkit.experiments.study import open_storage, open_study, storage_url, work

__all__ = ["Outcome", "finish", "fit_frontier", "run"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    """What :func:`run` did: the results, the files written, the points this process ran and
    the study's storage URL.

    Examples:
        >>> outcome = run(spec, "runs/sweep")
        >>> outcome.ran, outcome.storage  # e.g. (4, 'sqlite:////abs/runs/sweep/sweep.db')
    """

    results: Results
    paths: tuple[Path, ...]
    ran: int
    storage: str


def fit_frontier(rows: list[dict[str, Any]]) -> tuple[list[tuple[float, float]], dict[str, Any]]:
    """The compute frontier of every validation point of ``rows`` (compute = FLOPs per token x
    tokens seen) and the power law fitted to it (``{"error": why}`` when it cannot be).

    Args:
        rows: result rows, each with ``"flops_per_token"`` and its validation ``"curve"`` of
            ``(step, tokens, loss)`` entries.

    Returns:
        The frontier's ``(compute, loss)`` pairs, and the fit as a dict
        (:meth:`PowerLawFit.to_dict` or ``"error"``) with ``"frontier"`` and ``"text"`` added.

    Examples:
        >>> frontier, fit = fit_frontier(results.rows)
        >>> fit["text"]
    """
    points = [(c[1] * r["flops_per_token"], c[2]) for r in rows for c in r["curve"]]
    frontier = compute_frontier(points)
    try:
        fit = fit_power_law([p[0] for p in frontier], [p[1] for p in frontier])
    except ValueError as e:
        return frontier, {"error": str(e), "frontier": frontier, "text": f"no fit: {e}"}
    return frontier, {**fit.to_dict(), "frontier": frontier, "text": str(fit)}


def finish(results: Results, out: str | Path) -> list[Path]:
    """Write the tables, plots and report of ``results`` into ``out``; the paths written.

    A sweep also gets its compute frontier fitted (stored in ``results.fit``) and the plots
    against compute, parameters, depth and width; a comparison gets the frontier plot. Plots
    that have nothing to show are not written.

    Args:
        results: the collected results of a sweep or a comparison.
        out: the output directory.

    Returns:
        The paths written: the tables, the plots, then ``report.html``.

    Examples:
        >>> finish(collect(study, spec), "runs/sweep")[-1].name
        'report.html'
    """
    out = Path(out)
    rows = results.rows
    images: list[tuple[str, Path | None]] = []
    notes: list[str] = []
    windows = {r["val_windows"] for r in rows}
    if rows:
        notes.append(
            "Every point was evaluated on the same validation windows."
            if len(windows) == 1
            else f"Validation windows differ between points ({len(windows)} sets): "
            "block or batch size vary."
        )
    if results.spec.kind == "sweep":
        frontier, fit = fit_frontier(rows) if rows else ([], None)
        results.fit = fit
        fitted = None
        if fit is not None and "error" not in fit:
            from attnkit.experiments.fit import PowerLawFit

            fitted = PowerLawFit(**{k: fit[k] for k in PowerLawFit.__dataclass_fields__})
        images += [
            (
                "loss vs compute, with the power law fitted to the compute frontier",
                plots.plot_loss_vs_compute(rows, frontier, fitted, out / "loss_vs_compute.png"),
            ),
            ("loss vs parameters", plots.plot_loss_vs_params(rows, out / "loss_vs_params.png")),
            (
                "loss vs depth at fixed width",
                plots.plot_loss_vs_shape(rows, "n_layer", "d_model", out / "loss_vs_depth.png"),
            ),
            (
                "loss vs width at fixed depth",
                plots.plot_loss_vs_shape(rows, "d_model", "n_layer", out / "loss_vs_width.png"),
            ),
        ]
        title = "attnkit sweep"
    else:
        images.append(
            ("quality vs cost: the frontier", plots.plot_frontier(rows, out / "frontier.png"))
        )
        notes.append(
            "Peak memory: what one training step adds beyond the weights and optimizer state, "
            "measured in a fresh process."
        )
        title = "attnkit compare-attention"
    images.append(("learning curves", plots.plot_curves(rows, out / "curves.png")))
    drawn = [(caption, p) for caption, p in images if p is not None]
    paths = write_tables(results, out)
    paths += [p for _, p in drawn]
    paths.append(write_report(results, out / "report.html", title, drawn, notes))
    return paths


def run(
    spec: SweepSpec,
    out: str | Path,
    storage: str | None = None,
    study_name: str = "sweep",
    heartbeat: int = 5,
    grace: int | None = None,
) -> Outcome:
    """Run this process's share of ``spec`` into ``out`` (the study in ``storage``, a SQLite
    file ``out/sweep.db`` by default), wait for the rest, and write the outputs.

    Args:
        spec: the sweep; every point is checked first.
        out: the output directory (created), holding a run directory per point.
        storage: a database URL for the study (default: ``sqlite:///out/sweep.db``).
        study_name: the study's name in the storage.
        heartbeat: seconds between a running trial's heartbeats.
        grace: seconds without a heartbeat before a trial is failed and queued again
            (default: 4 heartbeats).

    Returns:
        The :class:`Outcome`: results, paths written, points this process ran, storage URL.

    Raises:
        ValueError: an invalid point, a bad storage URL, heartbeat or grace, or a study of
            that name made for another specification.

    Examples:
        >>> outcome = run(SweepSpec(base, grid_points(axes), Budget.parse("seconds=60")), "runs/s")
    """
    spec.check()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    url = storage_url(out, storage)
    store = open_storage(url, heartbeat, grace)
    study = open_study(store, study_name, spec)
    ran = work(study, spec, out)
    results = collect(study, spec)
    paths = finish(results, out)
    return Outcome(results, tuple(paths), ran, url)
