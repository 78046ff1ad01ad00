"""Two nodes simulated on this machine: two `torchrun --nnodes 2 --nproc_per_node 1` launches
(node ranks 0 and 1) meeting at a c10d rendezvous on 127.0.0.1, as two machines would at the
first one's address. With DDP and with FSDP the run equals the single-process run with the same
global batch (2 x 4 rows against 8) step for step: losses within 1e-5 (measured: 4e-7).

Slow (two launches of two processes; about 40 s on 2 busy cores); the quicker one-node
two-process run (tests/integration/test_pretrain_cli.py) stays in the default run.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from tiny_dist import TOLERANCE, assert_same_losses, common_args, isolate, make_env, subprocess_env

from attnkit import cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict:
    return make_env(tmp_path_factory)


@pytest.fixture(autouse=True)
def _isolated(env, monkeypatch):
    yield from isolate(env, monkeypatch)


@pytest.fixture(scope="module")
def one(env, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("one") / "run"
    cli.main(["pretrain", *common_args(env), "--train.batch_size", "8", "--out", str(out)])
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_nodes(env, out: Path, *args: str) -> list[subprocess.CompletedProcess]:
    """Both node launches at once; each waits at the rendezvous for the other."""
    port, run_id = free_port(), uuid.uuid4().hex[:8]
    procs = []
    for node in (0, 1):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2"]
        cmd += ["--nproc_per_node", "1", "--node_rank", str(node), "--rdzv_backend", "c10d"]
        cmd += ["--rdzv_endpoint", f"127.0.0.1:{port}", "--rdzv_id", run_id]
        cmd += ["-m", "attnkit", "pretrain", *common_args(env), "--train.batch_size", "4"]
        cmd += ["--out", str(out), *args]
        procs.append(
            subprocess.Popen(
                cmd, env=subprocess_env(env), stdout=subprocess.PIPE, stderr=subprocess.PIPE
            )
        )
    done = []
    try:
        for p in procs:
            stdout, stderr = p.communicate(timeout=300)
            done.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return done


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_nodes_match_one_process(env, one, tmp_path, parallel):
    runs = two_nodes(env, tmp_path / "two", "--train.parallel", parallel)
    for node, r in enumerate(runs):
        assert r.returncode == 0, (node, r.stderr.decode()[-3000:])
    assert_same_losses(one, tmp_path / "two", TOLERANCE)
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["iters"] == 6
