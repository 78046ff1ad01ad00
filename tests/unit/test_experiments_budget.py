"""train.budget_seconds / budget_tokens / budget_flops stop a pre-training run at the first step
that spends the budget, evaluated and checkpointed there."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from attnkit.models import ModelConfig, build_model
from attnkit.training import config as run_config
from attnkit.training.loop import pretrain
from attnkit.training.speed import budget_spent

TINY = {
    "model": {"arch": "gpt", "n_layer": 1, "n_heads": 2, "d_model": 16, "max_seq_len": 16},
    "train": {
        "batch_size": 4,
        "block_size": 16,
        "max_iters": 500,
        "eval_interval": 1000,
        "eval_iters": 2,
        "warmup_iters": 0,
        "progress": False,
    },
}


@pytest.fixture()
def corpus(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("ATTNKIT_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "corpus.txt"
    path.write_text("".join(f"line {i}: the quick brown fox jumps over it.\n" for i in range(400)))
    return path


def _run(corpus: Path, out: Path, **budget: float) -> dict:
    overrides = [("data.corpus", str(corpus))] + [(f"train.{k}", v) for k, v in budget.items()]
    return pretrain(run_config.build(TINY, overrides), out)


def test_token_budget_stops_at_the_first_step_past_it(corpus, tmp_path):
    per_step = 4 * 16
    s = _run(corpus, tmp_path / "run", budget_tokens=10 * per_step + 1)  # 11 steps needed
    assert s["iters"] == 11 and s["tokens"] == 11 * per_step
    assert s["stopped_by"] == "budget_tokens"
    val = [
        json.loads(line)
        for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
        if json.loads(line)["split"] == "val"
    ]
    assert [r["step"] for r in val] == [11]  # evaluated where it stopped
    assert s["val_loss"] == pytest.approx(val[0]["loss"])
    assert (tmp_path / "run" / "checkpoints" / "step-000011").is_dir()


def test_flop_budget_uses_the_models_training_estimate(corpus, tmp_path):
    s = _run(corpus, tmp_path / "run", budget_flops=1.0)
    assert s["iters"] == 1  # any step spends one FLOP
    model = build_model(
        ModelConfig(
            arch="gpt", vocab_size=s["vocab_size"], n_layer=1, n_heads=2, d_model=16, max_seq_len=16
        )
    )
    fpt = model.flops_per_token(seq_len=16, training=True)
    assert s["flops_per_token"] == pytest.approx(fpt)
    steps = 7
    s = _run(corpus, tmp_path / "run2", budget_flops=fpt * 64 * (steps - 0.5))
    assert s["iters"] == steps and s["stopped_by"] == "budget_flops"


def test_seconds_budget_and_no_budget(corpus, tmp_path):
    s = _run(corpus, tmp_path / "run", budget_seconds=1e-9)
    assert s["iters"] == 1 and s["stopped_by"] == "budget_seconds"
    cfg = run_config.build(TINY, [("train.max_iters", 3), ("data.corpus", str(corpus))])
    s = pretrain(cfg, tmp_path / "run2")
    assert s["iters"] == 3 and s["stopped_by"] == "max_iters"


def test_budget_spent_names_the_first_budget_and_bad_budgets_are_refused():
    tc = run_config.TrainConfig(budget_seconds=10.0, budget_tokens=100.0, budget_flops=1e6)
    assert budget_spent(tc, 99, 9.9, 1e4 - 1) is None
    assert budget_spent(tc, 100, 0.0, 0.0) == "budget_tokens"
    assert budget_spent(tc, 0, 10.0, 0.0) == "budget_seconds"
    assert budget_spent(tc, 50, 0.0, 2e4) == "budget_flops"
    assert budget_spent(run_config.TrainConfig(), 10**12, math.inf, 1e9) is None
    with pytest.raises(ValueError, match="train.budget_tokens"):
        run_config.check_train(run_config.build({}, [("train.budget_tokens", -1)]))


def test_a_finished_point_is_reused_and_an_unfinished_one_resumed(corpus, tmp_path):
    from attnkit.experiments import Budget, SweepSpec
    from attnkit.experiments.run import run_point

    base = {**TINY, "data": {"corpus": str(corpus)}}
    spec = SweepSpec(base, ({"model.n_layer": 1},), Budget("tokens", 6 * 64))
    out = tmp_path / "sweep"
    first = run_point(spec, 0, out)
    run = out / first["run_dir"]
    assert (
        first["iters"] == 6 and first["stopped_by"] == "budget_tokens"
    )  # 6 steps, the schedule too
    assert first["tokens"] == 6 * 64 and first["curve"] == [[6, 6 * 64, first["final_val_loss"]]]
    stamps = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}
    assert run_point(spec, 0, out) == first  # finished: reused, nothing written
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()} == stamps
    (run / "summary.json").unlink()  # as if killed after the last checkpoint
    again = run_point(spec, 0, out)
    assert json.loads((run / "summary.json").read_text())["resumed_from"] == 6
    assert again["best_val_loss"] == first["best_val_loss"] and again["iters"] == 6
