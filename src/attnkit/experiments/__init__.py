"""Experiments that answer practitioners' questions at equal budget: a sweep over any config
keys (depth vs width, dropout, learning rate...) and a comparison of attention variants.

* :mod:`~attnkit.experiments.space`: the budget (seconds, tokens, FLOPs), grid axes, random
  ranges and the points they make;
* :mod:`~attnkit.experiments.spec`: a sweep's specification and the run config of a point;
* :mod:`~attnkit.experiments.run`: one point, a normal pre-training run directory, and its
  record;
* :mod:`~attnkit.experiments.study`: the Optuna study (RDB storage) that queues the points and
  shares them between processes and machines;
* :mod:`~attnkit.experiments.results`, :mod:`~attnkit.experiments.fit`,
  :mod:`~attnkit.experiments.plots`, :mod:`~attnkit.experiments.report`: the table (CSV,
  JSON), the power-law fit, the plots and the one-page HTML report;
* :mod:`~attnkit.experiments.compare`: compare-attention's points;
* :mod:`~attnkit.experiments.sweep`: :func:`run` end to end.

Needs the ``sweep`` extra (optuna, matplotlib).
"""

from attnkit.experiments.compare import compare_spec
from attnkit.experiments.fit import PowerLawFit, compute_frontier, fit_power_law
from attnkit.experiments.space import Axis, Budget, Range, grid_points, random_points
from attnkit.experiments.spec import SweepSpec
from attnkit.experiments.sweep import Outcome, finish, run

__all__ = [
    "Axis",
    "Budget",
    "Outcome",
    "PowerLawFit",
    "Range",
    "SweepSpec",
    "compare_spec",
    "compute_frontier",
    "finish",
    "fit_power_law",
    "grid_points",
    "random_points",
    "run",
]
