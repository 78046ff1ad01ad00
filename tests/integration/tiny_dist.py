"""Helpers shared by the torchrun tests of pre-training (test_fsdp.py, test_multinode.py): a
tiny GPT config, the corpus and cache fixtures, the environment of a launched process, and the
comparison of two runs' losses."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from attnkit.text.corpora import tinyshakespeare_path

ROOT = Path(__file__).resolve().parents[2]
TOLERANCE = 1e-5
TINY = [
    *("--model.n_layer", "2", "--model.n_heads", "2", "--model.d_model", "32"),
    *("--train.block_size", "32", "--model.max_seq_len", "32", "--train.threads", "1"),
    *("--train.progress", "false", "--train.eval_iters", "4", "--train.warmup_iters", "0"),
]


def make_env(tmp_path_factory) -> dict:
    """A cache directory and a 200k-character corpus shared by a module's runs (the body of
    its ``env`` fixture)."""
    try:
        source = tinyshakespeare_path()
    except ValueError as e:
        pytest.fail(f"tiny-shakespeare test data missing: {e}")
    root = tmp_path_factory.mktemp("fsdp")
    corpus = root / "shakespeare200k.txt"
    corpus.write_text(source.read_text()[:200_000])
    return {"cache": root / "cache", "corpus": corpus}


def isolate(env, monkeypatch):
    """The body of a module's autouse fixture: its cache, and torch's threads restored."""
    monkeypatch.setenv("ATTNKIT_CACHE", str(env["cache"]))
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def subprocess_env(env) -> dict:
    e = dict(os.environ, ATTNKIT_CACHE=str(env["cache"]), OMP_NUM_THREADS="1")
    e["OMP_WAIT_POLICY"] = "PASSIVE"
    e["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + e.get("PYTHONPATH", "")
    return e


def rows(out: Path, split: str) -> list[dict]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["split"] == split]


def common_args(env) -> list[str]:
    return [
        "--config",
        "gpt-shakespeare-char",
        "--data",
        str(env["corpus"]),
        *TINY,
        "--train.max_iters",
        "6",
        "--train.log_interval",
        "1",
        "--train.eval_interval",
        "3",
        "--train.lr",
        "1e-2",
        "--train.grad_accum",
        "2",
    ]


def assert_same_losses(a: Path, b: Path, tol: float) -> float:
    ra, rb = rows(a, "train") + rows(a, "val"), rows(b, "train") + rows(b, "val")
    assert [(r["split"], r["step"]) for r in ra] == [(r["split"], r["step"]) for r in rb]
    worst = max(abs(x["loss"] - y["loss"]) for x, y in zip(ra, rb))
    assert worst <= tol, (worst, ra, rb)
    return worst
