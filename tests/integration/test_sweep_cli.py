"""`attnkit sweep` and `attnkit compare-attention` through the real command line, on tiny GPTs
and a 200k-character corpus: the outputs, the table against the runs' own files, a kill and a
resume, two processes on one study.
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")

from attnkit import cli  # noqa: E402
from attnkit.text.corpora import tinyshakespeare_path  # noqa: E402
from attnkit.training.metrics import read_rows  # noqa: E402

TINY = [
    "--set", "model.n_heads=2",
    "--set", "train.batch_size=4",
    "--set", "train.block_size=32",
    "--set", "train.eval_interval=8",
    "--set", "train.eval_iters=2",
    "--set", "train.warmup_iters=0",
    "--threads", "1",
]  # fmt: skip
GRID = ["--grid", "model.n_layer=1,2", "--grid", "model.d_model=16,32"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    try:
        source = tinyshakespeare_path()
    except ValueError as e:
        pytest.fail(f"tiny-shakespeare test data missing: {e}")
    path = tmp_path_factory.mktemp("sweep") / "shakespeare200k.txt"
    path.write_text(source.read_text()[:200_000])
    return path


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("ATTNKIT_CACHE", str(tmp_path_factory.getbasetemp() / "sweep-cache"))
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _trials(out: Path, name: str = "sweep") -> list:
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{out / 'sweep.db'}")
    return sorted(study.get_trials(), key=lambda t: t.number)


def _complete(out: Path) -> list:
    return [t for t in _trials(out) if t.state == optuna.trial.TrialState.COMPLETE]


def _argv(corpus: Path, out: Path, *extra: str) -> list[str]:
    return ["sweep", *GRID, *TINY, "--data", str(corpus), "--out", str(out), *extra]


def test_a_2x2_grid_writes_the_table_plots_and_report_equal_to_the_runs(corpus, tmp_path, capsys):
    out = tmp_path / "sweep"
    assert cli.main(_argv(corpus, out, "--budget", "tokens=2000")) == 0
    printed = capsys.readouterr().out
    assert "best point: model.n_layer=" in printed and "this process ran 4 point(s)" in printed

    for name in ("results.csv", "results.json", "report.html", "curves.png", "loss_vs_compute.png",
                 "loss_vs_params.png", "loss_vs_depth.png", "loss_vs_width.png"):  # fmt: skip
        assert (out / name).is_file(), name
    with open(out / "results.csv", newline="") as f:
        table = list(csv.DictReader(f))
    record = json.loads((out / "results.json").read_text())
    assert [(int(r["model.n_layer"]), int(r["model.d_model"])) for r in table] == [
        (1, 16), (1, 32), (2, 16), (2, 32)
    ]  # fmt: skip
    for row, full in zip(table, record["rows"]):
        run = out / row["run_dir"]
        summary = json.loads((run / "summary.json").read_text())
        val = [r["loss"] for r in read_rows(run / "metrics.jsonl") if r["split"] == "val"]
        run_cfg = json.loads((run / "run_config.json").read_text())
        assert run_cfg["model"]["n_layer"] == int(row["model.n_layer"])
        assert run_cfg["model"]["d_model"] == int(row["model.d_model"])
        assert float(row["best_val_loss"]) == pytest.approx(min(val), rel=1e-12)
        assert float(row["best_val_loss"]) == pytest.approx(summary["best_val_loss"], rel=1e-12)
        assert float(row["final_val_loss"]) == pytest.approx(val[-1], rel=1e-12)
        assert float(row["final_val_loss"]) == pytest.approx(summary["val_loss"], rel=1e-12)
        assert int(row["tokens"]) == summary["tokens"] == 32 * 4 * int(row["iters"])
        assert int(row["iters"]) == summary["iters"] == 16  # ceil(2000 / 128) steps
        assert int(row["parameters"]) == summary["parameters"]
        assert float(row["flops_per_token"]) == pytest.approx(summary["flops_per_token"])
        assert float(row["compute_flops"]) == pytest.approx(
            summary["flops_per_token"] * summary["tokens"]
        )
        assert float(row["tokens_per_second"]) == summary["tokens_per_second"]
        # non-embedding parameters, counted by hand: per block 4 d^2 (attention, no bias) +
        # 8 d^2 (MLP) + 2 d (two LayerNorm weights), and the final norm's d
        d, L = int(row["model.d_model"]), int(row["model.n_layer"])
        assert int(row["non_embedding_parameters"]) == L * (12 * d * d + 2 * d) + d
        assert [c[2] for c in full["curve"]] == val
    assert len({r["val_windows"] for r in table}) == 1  # the same validation windows everywhere
    best = min(table, key=lambda r: float(r["best_val_loss"]))
    assert record["best"]["point"] == int(best["point"])

    html = (out / "report.html").read_text()
    assert "http://" not in html and "https://" not in html and "<script src" not in html
    assert html.count("data:image/png;base64,") == 5
    assert "Content-Security-Policy" in html and "Best point:" in html
    data = re.search(r'<script type="application/json" id="results">(.*?)</script>', html, re.S)
    assert data is not None
    assert [r["best_val_loss"] for r in json.loads(data.group(1))["rows"]] == [
        float(r["best_val_loss"]) for r in table
    ]
    assert len(_complete(out)) == 4

    # the same command again runs nothing: every point is finished
    assert cli.main(_argv(corpus, out, "--budget", "tokens=2000")) == 0
    assert "this process ran 0 point(s)" in capsys.readouterr().out
    assert len(_trials(out)) == 4
    # another grid on the same study is refused, naming it
    with pytest.raises(SystemExit) as e:
        cli.main(_argv(corpus, out, "--budget", "tokens=8000"))
    assert e.value.code == 2
    assert "study 'sweep'" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--grid", "model.n_layers=1,2"], "unknown config key 'model.n_layers'"),
        (["--grid", "model.n_layer"], "must look like section.key=V1,V2"),
        (["--budget", "minutes=3"], "budget kind 'minutes' unknown"),
        (["--budget", "seconds=-1"], "expected a positive number"),
        (["--range", "train.lr=1e-4:1e-2:log"], "--range is for --random N"),
        (["--grid", "model.d_model=30"], "a multiple of n_heads=4"),
    ],
)
def test_bad_arguments_are_one_line_and_exit_2(corpus, tmp_path, capsys, args, message):
    argv = ["sweep", "--data", str(corpus), "--out", str(tmp_path / "s"), "--budget", "tokens=10"]
    with pytest.raises(SystemExit) as e:
        cli.main(argv + args)
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "s" / "sweep.db").exists()


def test_random_draws_are_points_of_the_study(corpus, tmp_path, capsys):
    out = tmp_path / "rand"
    argv = ["sweep", "--random", "3", "--range", "train.lr=1e-4:1e-2:log", "--grid",
            "model.d_model=16,32", *TINY, "--data", str(corpus), "--out", str(out),
            "--budget", "tokens=640", "--seed", "7"]  # fmt: skip
    assert cli.main(argv) == 0
    trials = _complete(out)
    assert len(trials) == 3
    for t in trials:
        lr = t.params["train.lr"]
        assert 1e-4 <= lr <= 1e-2 and t.params["model.d_model"] in (16, 32)
        run_cfg = json.loads(
            (out / t.user_attrs["record"]["run_dir"] / "run_config.json").read_text()
        )
        assert (
            run_cfg["train"]["lr"] == lr
            and run_cfg["model"]["d_model"] == t.params["model.d_model"]
        )
    assert isinstance(
        optuna.load_study(study_name="sweep", storage=f"sqlite:///{out / 'sweep.db'}")
        .trials[0]
        .distributions["train.lr"],
        optuna.distributions.FloatDistribution,
    )


def _compare(corpus: Path, out: Path, *extra: str) -> list[dict]:
    argv = ["compare-attention", "--variants", "exact,local,performer", "--seq-len", "32,64",
            "--set", "model.n_layer=1", "--set", "model.d_model=16", *TINY, "--data",
            str(corpus), "--out", str(out), "--budget", "tokens=1024", *extra]  # fmt: skip
    assert cli.main(argv) == 0
    with open(out / "results.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [(r["model.attention"], int(r["train.block_size"])) for r in table] == [
        (v, T) for T in (32, 64) for v in ("exact", "local", "performer")
    ]
    for r in table:
        run_cfg = json.loads((out / r["run_dir"] / "run_config.json").read_text())
        assert run_cfg["model"]["attention"] == r["model.attention"]
        assert run_cfg["model"]["max_seq_len"] == int(r["train.block_size"])
        assert int(r["train.batch_size"]) == round(128 / int(r["train.block_size"]))  # 4 x 32
        assert float(r["tokens_per_second"]) > 0
    for name in ("frontier.png", "curves.png", "report.html"):
        assert (out / name).is_file()
    assert "compare-attention" in (out / "report.html").read_text()
    return table


def test_compare_attention_reports_loss_speed_and_the_frontier(corpus, tmp_path):
    table = _compare(corpus, tmp_path / "cmp", "--no-memory")
    assert "peak_memory_bytes" not in table[0]


@pytest.mark.slow
def test_compare_attention_measures_the_peak_memory_of_a_step(corpus, tmp_path):
    table = _compare(corpus, tmp_path / "cmp")
    assert all(int(r["peak_memory_bytes"]) >= 0 for r in table)


def _run_cli(args: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "attnkit", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _env(**extra: str) -> dict:
    env = dict(os.environ)
    env.update(OMP_WAIT_POLICY="PASSIVE", OMP_NUM_THREADS="1", **extra)
    return env


@pytest.mark.slow
def test_a_sweep_killed_mid_point_resumes_without_redoing_finished_points(corpus, tmp_path):
    out = tmp_path / "killed"
    args = _argv(corpus, out, "--budget", "tokens=2560", "--heartbeat", "1")  # 20 steps a point
    # evaluations at steps 8, 16 and 20 of each point: the 5th is point 1's second; killed
    # there, point 1 keeps its checkpoint of step 8
    first = _run_cli(args, _env(ATTNKIT_FAULT="in-eval@5"))
    _, err = first.communicate(timeout=300)
    assert first.returncode == -9, err
    done = _complete(out)
    assert [t.user_attrs["point"] for t in done] == [0]
    p0 = out / done[0].user_attrs["record"]["run_dir"]
    stamps = {p: p.stat().st_mtime_ns for p in p0.rglob("*") if p.is_file()}
    running = [t for t in _trials(out) if t.state == optuna.trial.TrialState.RUNNING]
    assert [t.user_attrs["point"] for t in running] == [1]

    second = _run_cli(args, _env())
    stdout, err = second.communicate(timeout=300)
    assert second.returncode == 0, err
    assert "this process ran 3 point(s)" in stdout
    assert {p: p.stat().st_mtime_ns for p in p0.rglob("*") if p.is_file()} == stamps
    trials = _trials(out)
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert sorted(t.user_attrs["point"] for t in complete) == [0, 1, 2, 3]
    failed = [t for t in trials if t.state == optuna.trial.TrialState.FAIL]
    assert [t.user_attrs["point"] for t in failed] == [1]  # the killed trial, failed as stale
    retry = next(t for t in complete if t.user_attrs["point"] == 1)
    assert retry.system_attrs["failed_trial"] == failed[0].number
    p1 = out / retry.user_attrs["record"]["run_dir"]
    assert json.loads((p1 / "summary.json").read_text())["resumed_from"] == 8
    steps = [r["step"] for r in read_rows(p1 / "metrics.jsonl") if r["split"] == "val"]
    assert steps == [8, 16, 20]


@pytest.mark.slow
def test_two_processes_on_one_study_split_the_points(corpus, tmp_path):
    out = tmp_path / "shared"
    out.mkdir()
    args = [
        "sweep", "--grid", "model.n_layer=1,2,3", "--grid", "model.d_model=16,32", *TINY,
        "--data", str(corpus), "--out", str(out), "--budget", "seconds=2",
        "--storage", f"sqlite:///{out / 'sweep.db'}",
    ]  # fmt: skip
    procs = [_run_cli(args, _env())]
    time.sleep(0.5)
    procs.append(_run_cli(args, _env()))
    outputs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outputs):
        assert p.returncode == 0, err
    ran = [int(re.search(r"this process ran (\d+) point", o).group(1)) for o, _ in outputs]
    assert sum(ran) == 6 and min(ran) >= 1, ran
    trials = _trials(out)
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert sorted(t.user_attrs["point"] for t in complete) == list(range(6))
    workers = {t.user_attrs["worker"] for t in complete}
    assert len(workers) == 2
    others = [t for t in trials if t.state != optuna.trial.TrialState.COMPLETE]
    assert all(t.state == optuna.trial.TrialState.PRUNED for t in others)  # spares, no runs
    assert len(list((out / "points").iterdir())) == 6
    tables = [(out / "results.csv").read_text()]
    assert tables[0].count("\n") == 7
