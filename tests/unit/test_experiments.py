"""attnkit.experiments: budgets, axes and points, the specification, the power-law fit, the
frontier, the HTML report and the study's queue."""

from __future__ import annotations

import base64
import hashlib
import html
import math
import re

import numpy as np
import pytest

from attnkit.experiments import (
    Axis,
    Budget,
    Range,
    SweepSpec,
    compare_spec,
    compute_frontier,
    fit_power_law,
    grid_points,
    random_points,
)
from attnkit.experiments.plots import pareto
from attnkit.experiments.report import STYLE, render_report
from attnkit.experiments.results import Results

BASE = {"model": {"n_layer": 2, "n_heads": 2, "d_model": 32}, "train": {"batch_size": 4}}


# --------------------------------------------------------------------------------------------
# budgets, axes, points
# --------------------------------------------------------------------------------------------
def test_budget_parses_the_three_kinds_and_names_its_config_key():
    assert Budget.parse("seconds=60") == Budget("seconds", 60.0)
    b = Budget.parse("tokens=2e6")
    assert (b.kind, b.amount, b.key, str(b)) == (
        "tokens",
        2e6,
        "train.budget_tokens",
        "tokens=2e+06",
    )
    assert Budget.parse(" flops=1e13").key == "train.budget_flops"
    for bad, msg in [("60", "KIND=NUMBER"), ("seconds=x", "KIND=NUMBER"),
                     ("hours=1", "budget kind 'hours' unknown"), ("tokens=0", "positive"),
                     ("seconds=inf", "KIND=NUMBER")]:  # fmt: skip
        with pytest.raises(ValueError, match=msg):
            Budget.parse(bad)


def test_axis_values_are_typed_like_config_overrides():
    a = Axis.parse("train.dropout=0,0.1,true,gelu")
    assert a.key == "train.dropout" and a.values == (0, 0.1, True, "gelu")
    assert [type(v) for v in a.values] == [int, float, bool, str]
    for bad, msg in [("model.n_layer", "section.key=V1,V2"), ("model.n_layer=2,,4", "V1,V2"),
                     ("n_layer=2,4", "dotted config key"), ("model.n_layer=2,2", "repeats")]:  # fmt: skip
        with pytest.raises(ValueError, match=msg):
            Axis.parse(bad)


def test_ranges_parse_and_draw_inside_their_bounds():
    r = Range.parse("train.lr=1e-4:1e-2:log")
    assert (r.low, r.high, r.log, r.integer) == (1e-4, 1e-2, True, False)
    i = Range.parse("model.n_layer=1:6")
    assert i.integer and not i.log
    import random

    rng = random.Random(3)
    lrs = [r.draw(rng) for _ in range(2000)]
    assert all(1e-4 <= x <= 1e-2 for x in lrs)
    # log-uniform: half the draws below the geometric middle 1e-3
    assert abs(sum(x < 1e-3 for x in lrs) / len(lrs) - 0.5) < 0.05
    layers = [i.draw(rng) for _ in range(600)]
    assert set(layers) == {1, 2, 3, 4, 5, 6} and all(isinstance(n, int) for n in layers)
    for bad, msg in [("train.lr=1e-2:1e-4", "low < high"), ("train.lr=0:1:log", "low > 0"),
                     ("train.lr=1:2:lin", "LOW:HIGH:log"), ("train.lr=a:b", "LOW:HIGH")]:  # fmt: skip
        with pytest.raises(ValueError, match=msg):
            Range.parse(bad)


def test_grid_points_are_the_product_last_axis_fastest():
    pts = grid_points([Axis.parse("model.n_layer=2,4"), Axis.parse("model.d_model=64,128,256")])
    assert pts == [{"model.n_layer": n, "model.d_model": d} for n in (2, 4) for d in (64, 128, 256)]
    with pytest.raises(ValueError, match="more than one axis"):
        grid_points([Axis.parse("model.n_layer=2"), Axis.parse("model.n_layer=4")])


def test_random_points_are_reproducible_from_the_seed():
    axes, ranges = [Axis.parse("model.n_layer=2,4")], [Range.parse("train.lr=1e-4:1e-2:log")]
    a = random_points(axes, ranges, 6, seed=5)
    assert a == random_points(axes, ranges, 6, seed=5) != random_points(axes, ranges, 6, seed=6)
    assert len(a) == 6 and all(p["model.n_layer"] in (2, 4) for p in a)
    assert len(random_points([Axis.parse("model.n_layer=2,4")], [], 20)) == 2  # repeats kept once
    with pytest.raises(ValueError, match="n must be an int >= 1"):
        random_points(axes, ranges, 0)


# --------------------------------------------------------------------------------------------
# the specification
# --------------------------------------------------------------------------------------------
def test_a_point_config_is_the_base_with_the_point_and_the_budget():
    spec = SweepSpec(
        BASE, tuple(grid_points([Axis.parse("model.n_layer=1,3")])), Budget.parse("seconds=7")
    )
    cfg = spec.config(1, [("train.lr", 0.5)])
    assert cfg.model == {"n_layer": 3, "n_heads": 2, "d_model": 32}
    assert (cfg.train.budget_seconds, cfg.train.batch_size, cfg.train.lr) == (7.0, 4, 0.5)
    assert cfg.train.progress is False
    assert spec.name(1) == "p001-n_layer=3" and spec.axes == ("model.n_layer",)
    assert spec.choices("model.n_layer") == [1, 3]
    rec = spec.record()
    assert rec["points"] == [{"model.n_layer": 1}, {"model.n_layer": 3}]
    assert rec["budget"] == "seconds=7"


def test_spec_check_names_the_bad_point():
    pts = ({"model.d_model": 32}, {"model.d_model": 33})
    with pytest.raises(
        ValueError, match=r"sweep point 1 \{'model.d_model': 33\}.*multiple of n_heads=2"
    ):
        SweepSpec(BASE, pts, Budget.parse("tokens=10")).check()
    with pytest.raises(ValueError, match="unknown config key 'train.nope'"):
        SweepSpec(BASE, ({"train.nope": 1},), Budget.parse("tokens=10")).check()
    with pytest.raises(ValueError, match="given twice"):
        SweepSpec(BASE, ({"model.n_layer": 1}, {"model.n_layer": 1}), Budget.parse("tokens=1"))


def test_compare_spec_keeps_tokens_per_step_at_every_length():
    spec = compare_spec(BASE | {"train": {"batch_size": 8, "block_size": 64}},
                        ["exact", "performer"], [128, 1024], Budget.parse("seconds=5"))  # fmt: skip
    assert spec.kind == "compare-attention" and spec.measure_memory
    assert [(p["model.attention"], p["train.block_size"], p["model.max_seq_len"],
             p["train.batch_size"]) for p in spec.points] == [
        ("exact", 128, 128, 4), ("performer", 128, 128, 4), ("exact", 1024, 1024, 1),
        ("performer", 1024, 1024, 1)]  # fmt: skip
    spec.check()
    with pytest.raises(ValueError, match="unknown attention variant 'flash'"):
        compare_spec(BASE, ["flash"], [64], Budget.parse("seconds=5"))
    with pytest.raises(ValueError, match="seq_lens must be ints >= 2"):
        compare_spec(BASE, ["exact"], [1], Budget.parse("seconds=5"))


# --------------------------------------------------------------------------------------------
# the power-law fit and the frontier
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("a, b, c", [(300.0, 0.25, 1.4), (12.0, 0.08, 0.5), (5e4, 0.6, 2.2)])
def test_the_fit_recovers_known_parameters_from_exact_points(a, b, c):
    C = np.geomspace(1e10, 1e15, 9)
    fit = fit_power_law(C, a * C**-b + c)
    assert fit.a == pytest.approx(a, rel=1e-6)
    assert fit.b == pytest.approx(b, rel=1e-7)
    assert fit.c == pytest.approx(c, rel=1e-7, abs=1e-9)
    assert fit.rmse < 1e-9 and fit.r2 == pytest.approx(1.0) and fit.n == 9 and not fit.at_edge


def test_the_fit_and_its_errors_equal_scipys_curve_fit_on_noisy_points():
    from scipy.optimize import curve_fit

    rng = np.random.default_rng(0)
    C = np.geomspace(1e11, 1e14, 14)
    y = 80.0 * C**-0.2 + 1.1 + rng.normal(0, 0.005, C.shape)
    fit = fit_power_law(C, y)
    s = 1e12  # scipy fits a * (C / s)^-b + c; its a is ours times s^-b

    def model(x, a_, b_, c_):
        return a_ * (x / s) ** -b_ + c_

    p, cov = curve_fit(model, C, y, p0=[1.0, 0.3, 1.0], maxfev=50000)
    err = np.sqrt(np.diag(cov))
    assert fit.b == pytest.approx(p[1], rel=1e-5) and fit.c == pytest.approx(p[2], rel=1e-5)
    assert fit.a == pytest.approx(p[0] * s ** p[1], rel=1e-4)
    assert fit.b_err == pytest.approx(err[1], rel=1e-3)
    assert fit.c_err == pytest.approx(err[2], rel=1e-3)
    rss = float(((y - model(C, *p)) ** 2).sum())
    assert fit.rmse == pytest.approx(math.sqrt(rss / C.size), rel=1e-6)
    assert abs(fit.b - 0.2) < 3 * fit.b_err  # and the truth lies within its error


def test_the_fit_refuses_too_few_points_and_flags_an_undetermined_exponent():
    with pytest.raises(ValueError, match="at least 3 points"):
        fit_power_law([1e10, 1e11], [2.0, 1.9])
    with pytest.raises(ValueError, match="3 distinct compute values"):
        fit_power_law([1e10, 1e10, 1e11], [2.0, 1.9, 1.8])
    with pytest.raises(ValueError, match="finite and > 0"):
        fit_power_law([0.0, 1e10, 1e11], [2.0, 1.9, 1.8])
    line = [2.0, 1.9, 1.8, 1.7]  # a straight line in log C: b -> 0 with a -> inf, c -> -inf
    fit = fit_power_law([1e10, 1e11, 1e12, 1e13], line, c_min=None)
    assert fit.at_edge and fit.c < 0 and "do not determine it" in str(fit)


def test_the_floor_is_held_at_zero_when_the_free_fit_puts_it_below():
    from scipy.optimize import curve_fit

    rng = np.random.default_rng(1)
    C = np.geomspace(1e10, 1e13, 12)
    y = 3.0 * C**-0.05 - 0.4 + rng.normal(0, 0.002, C.shape)  # a floor below 0
    free = fit_power_law(C, y, c_min=None)
    assert free.c < 0
    fit = fit_power_law(C, y)
    assert fit.c == 0.0 and fit.c_err is None
    s = 1e11
    p, cov = curve_fit(lambda x, a_, b_: a_ * (x / s) ** -b_, C, y, p0=[1.0, 0.05], maxfev=50000)
    assert fit.b == pytest.approx(p[1], rel=1e-5)
    assert fit.a == pytest.approx(p[0] * s ** p[1], rel=1e-4)
    assert fit.b_err == pytest.approx(math.sqrt(cov[1, 1]), rel=1e-3)  # 2 free parameters


def test_frontier_is_the_lower_envelope_and_pareto_the_non_dominated_points():
    pts = [(1.0, 5.0), (2.0, 4.0), (2.0, 3.5), (3.0, 4.5), (4.0, 3.0), (5.0, 3.0), (6.0, 2.0)]
    brute = [p for p in sorted(pts) if all(q[1] > p[1] for q in pts if q[0] < p[0])]
    brute = [p for i, p in enumerate(brute) if i == 0 or brute[i - 1][0] != p[0]]
    assert compute_frontier(pts) == brute == [(1.0, 5.0), (2.0, 3.5), (4.0, 3.0), (6.0, 2.0)]
    assert pareto(pts) == brute


# --------------------------------------------------------------------------------------------
# the report
# --------------------------------------------------------------------------------------------
def _row(i: int, loss: float, params: dict) -> dict:
    return {
        "point": i, "params": params, "run_dir": f"points/p{i:03d}", "parameters": 1000 + i,
        "tokens": 640, "best_val_loss": loss, "final_val_loss": loss, "curve": [[5, 640, loss]],
        "val_windows": "abc",
    }  # fmt: skip


def test_the_report_is_self_contained_escaped_and_names_the_best_point(tmp_path):
    spec = SweepSpec(
        BASE, ({"data.corpus": "<b>x</b>"}, {"data.corpus": "y"}), Budget("tokens", 640)
    )
    rows = [_row(0, 2.5, {"data.corpus": "<b>x</b>"}), _row(1, 2.25, {"data.corpus": "y"})]
    png = tmp_path / "p.png"
    png.write_bytes(b"\x89PNG fake")
    page = render_report(Results(spec, rows), "t", [("a plot", png)])
    assert "<b>x</b>" not in page and "&lt;b&gt;x&lt;/b&gt;" in page
    assert "Best point:</b> data.corpus = y: best validation loss 2.2500" in page
    assert f"data:image/png;base64,{base64.b64encode(png.read_bytes()).decode()}" in page
    assert not re.search(r"(src|href)=\"(https?:)?//", page)
    digest = base64.b64encode(hashlib.sha256(STYLE.encode()).digest()).decode()
    csp = html.unescape(re.search(r'Content-Security-Policy" content="([^"]*)"', page).group(1))
    assert f"style-src 'sha256-{digest}'" in csp and f"<style>{STYLE}</style>" in page
    assert "default-src 'none'" in csp and "img-src data:" in csp and "<script>" not in page
    data = re.search(r'id="results">(.*?)</script>', page, re.S).group(1)
    assert "<" not in data  # JSON with < escaped cannot end the block early


# --------------------------------------------------------------------------------------------
# the queue
# --------------------------------------------------------------------------------------------
def test_an_interrupted_point_is_queued_again_and_finished_points_are_not_rerun(
    tmp_path, monkeypatch
):
    optuna = pytest.importorskip("optuna")
    from attnkit.experiments import study as study_mod

    spec = SweepSpec(
        BASE, tuple(grid_points([Axis.parse("model.n_layer=1,2,3")])), Budget("tokens", 1)
    )
    calls: list[int] = []

    def fake_run(spec, index, out):  # the queue is under test here, not the training
        calls.append(index)
        if index == 1 and calls.count(1) == 1:
            raise KeyboardInterrupt
        return {"best_val_loss": float(index)}

    monkeypatch.setattr(study_mod, "run_point", fake_run)
    storage = study_mod.open_storage(study_mod.storage_url(tmp_path, None), heartbeat=1)
    study = study_mod.open_study(storage, "s", spec)
    with pytest.raises(KeyboardInterrupt):
        study_mod.work(study, spec, tmp_path)
    assert calls == [0, 1]
    study = study_mod.open_study(
        study_mod.open_storage(study_mod.storage_url(tmp_path, None)), "s", spec
    )
    assert study_mod.work(study, spec, tmp_path) == 2
    assert calls == [0, 1, 2, 1]  # point 0 was not run again
    states = optuna.trial.TrialState
    by_state = {s: sorted(t.user_attrs["point"] for t in study.trials if t.state == s)
                for s in (states.COMPLETE, states.FAIL)}  # fmt: skip
    assert by_state == {states.COMPLETE: [0, 1, 2], states.FAIL: [1]}
    retry = next(
        t for t in study.trials if t.state == states.COMPLETE and t.user_attrs["point"] == 1
    )
    assert retry.user_attrs["retry_of"] == 1 and retry.params == {"model.n_layer": 2}
    other = SweepSpec(BASE, ({"model.n_layer": 5},), Budget("tokens", 1))
    with pytest.raises(ValueError, match="study 's' .* was made for another sweep"):
        study_mod.open_study(storage, "s", other)
