"""A power law L(C) = a * C^-b + c fitted to (compute, loss) points, with its fit error.

    fit = fit_power_law(compute, loss)        # PowerLawFit(a, b, c, their standard errors, ...)
    frontier = compute_frontier(points)       # the lowest loss reached by each compute

Least squares in float64 numpy. For a fixed exponent ``b`` the model is linear in ``a`` and
``c``, so ``b`` is searched on a grid (each ``b`` solved for ``a, c`` exactly) and the best
refined by Gauss-Newton (Levenberg-damped) on all three. The floor ``c`` is kept >= 0 by
default (a loss is never negative): when the free optimum has c < 0, c is held at 0 and a, b
refitted. Compute is scaled by its geometric
mean inside the fit, which keeps the problem well conditioned at FLOP counts of 1e15.
Standard errors come from the Jacobian at the optimum, ``s^2 (J^T J)^-1`` with
``s^2 = RSS / (n - p)`` for p free parameters; the fit error is the residuals' RMS and R^2.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

__all__ = ["PowerLawFit", "compute_frontier", "fit_power_law"]


@dataclass(frozen=True)
class PowerLawFit:
    """``loss = a * compute**-b + c``; ``*_err`` standard errors (None with as many points as
    free parameters; ``c_err`` None when c was held at its bound), ``rmse``
    the residuals' RMS, ``r2`` the share of the loss variance explained, ``n`` the points,
    ``at_edge`` whether b stopped at a bound of its search range.

    Examples:
        >>> fit = PowerLawFit(a=2.0, b=0.5, c=1.0, a_err=None, b_err=None, c_err=None,
        ...                   rmse=0.0, r2=1.0, n=3)
        >>> fit.predict([4.0])
        array([2.])
    """

    a: float
    b: float
    c: float
    a_err: float | None
    b_err: float | None
    c_err: float | None
    rmse: float
    r2: float
    n: int
    at_edge: bool = False  # b ended at a bound of its search range: the points do not fix it

    def predict(self, compute: Any) -> np.ndarray:
        """The fitted loss ``a * compute**-b + c`` at each compute value.

        Args:
            compute: a number or an array of compute values, any shape.

        Returns:
            A float64 array of the shape of ``compute``.

        Examples:
            >>> fit.predict([4.0, 100.0])
            array([2. , 1.2])
        """
        return self.a * np.asarray(compute, dtype=np.float64) ** -self.b + self.c

    def to_dict(self) -> dict[str, Any]:
        """The fields as a dict (``a``, ``b``, ``c``, their errors, ``rmse``, ``r2``, ``n``,
        ``at_edge``).

        Examples:
            >>> fit.to_dict()["b"]
            0.5
        """
        return asdict(self)

    def __str__(self) -> str:
        def pm(v: float, e: float | None) -> str:
            return f"{v:.4g}" + (f" +/- {e:.2g}" if e is not None else "")

        return (
            f"L(C) = a*C^-b + c: a = {pm(self.a, self.a_err)}, b = {pm(self.b, self.b_err)}, "
            f"c = {pm(self.c, self.c_err)}"
            + (" (held at its bound)" if self.c_err is None and self.b_err is not None else "")
            + f"; RMSE {self.rmse:.3g}, R^2 {self.r2:.4f}, {self.n} points"
            + (
                "; b is at the edge of its search range: these points do not determine it"
                if self.at_edge
                else ""
            )
        )


def _solve_ac(x_b: np.ndarray, y: np.ndarray, c: float | None) -> tuple[float, float, float]:
    """Least-squares (a, c) of y = a * x_b + c (``c`` given: a alone); and the residual sum
    of squares."""
    if c is not None:
        a = float(x_b @ (y - c) / (x_b @ x_b))
        r = y - (a * x_b + c)
        return a, c, float(r @ r)
    A = np.stack([x_b, np.ones_like(x_b)], axis=1)
    coef, *_ = np.linalg.lstsq(A, y, rcond=None)
    r = y - A @ coef
    return float(coef[0]), float(coef[1]), float(r @ r)


def _fit(
    u: np.ndarray, y: np.ndarray, lo: float, hi: float, c_fixed: float | None
) -> tuple[np.ndarray, float, np.ndarray]:
    """(a_s, b, c), the residual sum of squares and the Jacobian of the free parameters, for
    y = a_s * exp(-b u) + c with c free or fixed at ``c_fixed``."""
    grid = np.geomspace(lo, hi, 400)
    rss = [_solve_ac(np.exp(-b * u), y, c_fixed)[2] for b in grid]
    b = float(grid[int(np.argmin(rss))])
    a_s, c, best = _solve_ac(np.exp(-b * u), y, c_fixed)
    theta = np.array([a_s, b, c])
    free = 3 if c_fixed is None else 2

    def jac(t: np.ndarray) -> np.ndarray:
        e = np.exp(-t[1] * u)
        return np.stack([e, -t[0] * u * e, np.ones_like(u)], axis=1)[:, :free]

    damping = 1e-3
    for _ in range(200):  # Levenberg-damped Gauss-Newton on the free parameters
        r = y - (theta[0] * np.exp(-theta[1] * u) + theta[2])
        J = jac(theta)
        JtJ = J.T @ J
        step = np.linalg.solve(JtJ + damping * np.diag(np.diag(JtJ) + 1e-300), J.T @ r)
        cand = theta.copy()
        cand[:free] += step
        cand[1] = min(max(cand[1], lo), hi)
        rc = y - (cand[0] * np.exp(-cand[1] * u) + cand[2])
        rss_c = float(rc @ rc)
        if rss_c <= best:
            small = best - rss_c <= 1e-15 * max(best, 1e-300) + 1e-30
            theta, best, damping = cand, rss_c, damping / 10
            if small and np.max(np.abs(step)) < 1e-12 * (1 + np.max(np.abs(theta))):
                break
        else:
            damping *= 10
            if damping > 1e12:
                break
    return theta, best, jac(theta)


def fit_power_law(
    compute: Sequence[float] | np.ndarray,
    loss: Sequence[float] | np.ndarray,
    b_range: tuple[float, float] = (1e-3, 4.0),
    c_min: float | None = 0.0,
) -> PowerLawFit:
    """Fit ``loss = a * compute**-b + c`` (b in ``b_range``, c >= ``c_min``: a loss cannot
    fall below 0, so by default neither can its floor; None: c free); needs 3 or more points
    at 3 or more distinct compute values. When the best c is below ``c_min``, c is held at
    ``c_min`` (``c_err`` None).

    Args:
        compute: compute of each point, shape (n,), finite and > 0.
        loss: loss of each point, shape (n,), finite.
        b_range: ``(low, high)`` bounds of the exponent b, ``0 < low < high``.
        c_min: lower bound of the floor c (None: c free).

    Returns:
        The fit, with standard errors, RMSE and R^2.

    Raises:
        ValueError: lengths differ, fewer than 3 points or distinct compute values, a value
            not finite or a compute <= 0, or a bad ``b_range``.

    Examples:
        >>> fit_power_law([1e12, 1e13, 1e14, 1e15], [4.0, 3.2, 2.8, 2.6]).n
        4
    """
    x = np.asarray(compute, dtype=np.float64).ravel()
    y = np.asarray(loss, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"compute and loss must have the same length, got {x.size} and {y.size}")
    if x.size < 3:
        raise ValueError(f"a power-law fit needs at least 3 points, got {x.size}")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))) or np.any(x <= 0):
        raise ValueError("compute must be finite and > 0 and loss finite at every point")
    if np.unique(x).size < 3:
        raise ValueError(
            f"a power-law fit needs at least 3 distinct compute values, got {np.unique(x).size}"
        )
    lo, hi = b_range
    if not 0 < lo < hi:
        raise ValueError(f"b_range must be 0 < low < high, got {b_range!r}")
    scale = float(np.exp(np.mean(np.log(x))))
    u = np.log(x / scale)  # the fit uses (C / scale)^-b = exp(-b u)

    theta, best, J = _fit(u, y, lo, hi, None)
    if c_min is not None and theta[2] < c_min:
        theta, best, J = _fit(u, y, lo, hi, float(c_min))
    a_s, b, c = (float(v) for v in theta)
    n, free = int(x.size), J.shape[1]
    errs: list[float | None] = [None, None, None]
    if n > free:
        s2 = best / (n - free)
        cov = np.zeros((3, 3))
        cov[:free, :free] = s2 * np.linalg.pinv(J.T @ J)
        # a = a_s * scale^b: its variance by the delta method
        g = np.array([scale**b, a_s * scale**b * math.log(scale), 0.0])
        errs = [
            float(math.sqrt(max(g @ cov @ g, 0.0))),
            float(math.sqrt(max(cov[1, 1], 0.0))),
            float(math.sqrt(max(cov[2, 2], 0.0))) if free == 3 else None,
        ]
    total = float(((y - y.mean()) ** 2).sum())
    at_edge = bool(np.isclose(b, lo, rtol=1e-6) or np.isclose(b, hi, rtol=1e-6))
    return PowerLawFit(
        a=a_s * scale**b,
        b=b,
        c=c,
        a_err=errs[0],
        b_err=errs[1],
        c_err=errs[2],
        rmse=math.sqrt(best / n),
        r2=1.0 - best / total if total > 0 else 1.0,
        n=n,
        at_edge=at_edge,
    )


def compute_frontier(points: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points that reach a lower loss than any point of less or equal compute: the
    compute-optimal envelope, in increasing compute. Points with compute <= 0 or a loss that
    is not finite are left out.

    Args:
        points: ``(compute, loss)`` pairs, in any order.

    Returns:
        ``(compute, loss)`` pairs as floats, compute increasing and loss decreasing.

    Examples:
        >>> compute_frontier([(1.0, 3.0), (2.0, 3.5), (3.0, 2.5)])
        [(1.0, 3.0), (3.0, 2.5)]
    """
    out: list[tuple[float, float]] = []
    best = math.inf
    for c, loss in sorted(points, key=lambda p: (p[0], p[1])):
        if loss < best and c > 0 and math.isfinite(loss):
            if out and out[-1][0] == c:
                continue
            out.append((float(c), float(loss)))
            best = loss
    return out
