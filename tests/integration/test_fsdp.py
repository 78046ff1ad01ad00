"""`attnkit pretrain` with train.parallel='fsdp': FSDP2 over 2 torchrun processes (gloo, CPU).

The reference is the single-process run with the same global batch (2 x 4 rows against 8):
losses agree step for step (measured: within 4e-7), the metadata shows every weight and
optimizer moment split in two, a sharded checkpoint consolidates in one process into the same
weights the run saved, and a run killed after a checkpoint resumes to the same losses as one
left alone.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny_dist import (
    TOLERANCE,
    assert_same_losses,
    common_args,
    isolate,
    make_env,
    rows,
    subprocess_env,
)

import attnkit
from attnkit import cli
from attnkit.training.checkpointing import latest_checkpoint
from attnkit.training.fsdp import consolidate


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict:
    return make_env(tmp_path_factory)


@pytest.fixture(autouse=True)
def _isolated(env, monkeypatch):
    yield from isolate(env, monkeypatch)


def torchrun_fsdp(env, out: Path, extra_env: dict | None = None, *args: str):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += ["-m", "attnkit", "pretrain", *common_args(env), "--train.batch_size", "4"]
    cmd += ["--train.parallel", "fsdp", "--out", str(out), *args]
    e = dict(subprocess_env(env), **(extra_env or {}))
    return subprocess.run(cmd, env=e, capture_output=True, text=True, timeout=300)


def single(env, out: Path) -> None:
    cli.main(["pretrain", *common_args(env), "--train.batch_size", "8", "--out", str(out)])


def test_fsdp_two_processes_match_one_and_consolidate(env, tmp_path):
    single(env, tmp_path / "one")
    run = torchrun_fsdp(env, tmp_path / "fsdp")
    assert run.returncode == 0, run.stderr[-3000:]
    assert [r["step"] for r in rows(tmp_path / "fsdp", "train")] == list(range(1, 7))
    assert_same_losses(tmp_path / "one", tmp_path / "fsdp", TOLERANCE)
    assert json.loads((tmp_path / "fsdp" / "summary.json").read_text())["world_size"] == 2

    step = tmp_path / "fsdp" / "checkpoints" / "step-000006"
    names = sorted(p.relative_to(step).as_posix() for p in step.rglob("*") if p.is_file())
    assert names == [
        "config.json",
        "manifest.json",
        "shards/__0_0.distcp",
        "shards/__1_0.distcp",
        "shards/metadata.json",
        "state.pt",
        "tokenizer.json",
    ]
    # sharded: every weight matrix and each of its Adam moments lies in two halves, one per rank
    md = json.loads((step / "shards" / "metadata.json").read_text())["state_dict_metadata"]
    for key in (
        "model.blocks.1.mlp.up.weight",
        "optim.state.blocks.1.mlp.up.weight.exp_avg",
        "optim.state.blocks.1.mlp.up.weight.exp_avg_sq",
        "model.embed.tok.weight",
    ):
        chunks = md[key]["chunks"]
        assert len(chunks) == 2, (key, chunks)
        assert sum(c["sizes"][0] for c in chunks) == md[key]["size"][0]
        assert chunks[1]["offsets"][0] == chunks[0]["sizes"][0]

    # one process, no process group: the last checkpoint as a normal attnkit checkpoint
    consolidate(step, tmp_path / "cons")
    got = load_file(tmp_path / "cons" / "model.safetensors")
    saved = load_file(tmp_path / "fsdp" / "model.safetensors")  # the best model, gathered
    reference = load_file(tmp_path / "one" / "model.safetensors")
    assert sorted(got) == sorted(saved) == sorted(reference)
    for k in got:
        assert torch.equal(got[k], saved[k]), k
        assert torch.allclose(got[k], reference[k], atol=1e-4, rtol=0), k
    model, ref = attnkit.load(tmp_path / "cons"), attnkit.load(tmp_path / "one")
    ids = torch.randint(
        0, model.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0)
    )
    with torch.no_grad():
        diff = (model(ids).logits - ref(ids).logits).abs().max().item()
    # the weights agree to 1e-4 (sharded and whole all-reduces add in different orders, and
    # Adam at lr 1e-2 carries it over 6 steps); through 2 layers that is up to ~2e-4 in logits
    # (1.4e-4 on an AVX-512 Xeon, under 1e-4 on AVX2), against logits of size ~1-5
    assert diff < 5e-4, diff

    # the manifest covers the shards: a damaged one sends --resume to the previous checkpoint
    shard = step / "shards" / "__1_0.distcp"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    assert latest_checkpoint(tmp_path / "fsdp") == step.with_name("step-000003")
    with pytest.raises(ValueError, match="shards/__1_0.distcp does not match its SHA-256"):
        consolidate(step, tmp_path / "cons2")


def test_fsdp_in_one_process_is_refused(env, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(
            [
                "pretrain",
                *common_args(env),
                "--train.parallel",
                "fsdp",
                "--out",
                str(tmp_path / "x"),
            ]
        )
    assert e.value.code == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "train.parallel is 'fsdp' but this is a single process" in line, line
    assert "torchrun" in line
    assert not (tmp_path / "x").exists()


def test_fsdp_for_an_encoder_decoder_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(
            ["pretrain", "--config", "t5-shakespeare-denoise", "--train.parallel", "fsdp"]
            + ["--out", str(tmp_path / "x")]
        )
    assert e.value.code == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "train.parallel='fsdp' is not supported for an encoder-decoder run" in line, line
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_fsdp_killed_after_a_checkpoint_resumes_exactly(env, tmp_path):
    """Rank 0 SIGKILLs itself right after the step-3 checkpoint is complete; torchrun ends the
    other; --resume continues from it and every loss after equals the uninterrupted run's."""
    whole = torchrun_fsdp(env, tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr[-3000:]
    killed = torchrun_fsdp(
        env, tmp_path / "cut", {"ATTNKIT_FAULT": "after-manifest", "ATTNKIT_FAULT_RANK": "0"}
    )
    assert killed.returncode != 0
    assert sorted(p.name for p in (tmp_path / "cut" / "checkpoints").glob("step-*")) == [
        "step-000003"
    ]
    resumed = torchrun_fsdp(env, tmp_path / "cut", None, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((tmp_path / "cut" / "summary.json").read_text())["resumed_from"] == 3
    assert assert_same_losses(tmp_path / "whole", tmp_path / "cut", 0.0) == 0.0
    a = load_file(tmp_path / "whole" / "model.safetensors")
    b = load_file(tmp_path / "cut" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


SHARDS_PROBE = """
import json, sys, torch
from attnkit.models import ModelConfig, build_model
from attnkit.training import fsdp, optim
from attnkit.training.distributed import init, shutdown
d = init("cpu")
torch.manual_seed(0)
cfg = ModelConfig(arch="gpt", vocab_size=65, d_model=32, n_layer=2, n_heads=2, max_seq_len=32)
model = build_model(cfg)
full = {n: list(p.shape) for n, p in model.named_parameters()}
fsdp.shard(model, d)
opt = optim.make_optimizer(model, 1e-3, 0.1, (0.9, 0.99), d.device)
ids = torch.randint(0, 65, (4, 16))
model(ids, labels=ids).loss.backward()
opt.step()
report = {}
for n, p in model.named_parameters():
    s = opt.state[p]
    report[n] = {
        "full": full[n],
        "param": list(p.to_local().shape),
        "grad": list(p.grad.to_local().shape),
        "exp_avg": list(s["exp_avg"].to_local().shape),
        "exp_avg_sq": list(s["exp_avg_sq"].to_local().shape),
    }
with open(sys.argv[1] + f"/rank{d.rank}.json", "w") as f:
    json.dump(report, f)
shutdown(d)
"""


@pytest.mark.slow
def test_fsdp_shards_parameters_gradients_and_optimizer_state(env, tmp_path):
    """After a step under train.parallel's sharding, each of 2 processes holds half (dim 0) of
    every parameter, of its gradient and of both AdamW moments."""
    probe = tmp_path / "probe.py"
    probe.write_text(SHARDS_PROBE)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    run = subprocess.run(
        [*cmd, str(probe), str(tmp_path)],
        env=subprocess_env(env),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0].keys() == ranks[1].keys() and "blocks.1.mlp.up.weight" in ranks[0]
    for name, r0 in ranks[0].items():
        r1 = ranks[1][name]
        for part in ("param", "grad", "exp_avg", "exp_avg_sq"):
            assert r0[part][0] + r1[part][0] == r0["full"][0], (name, part, r0, r1)
            assert r0[part][1:] == r0["full"][1:]
            assert r0[part][0] == (r0["full"][0] + 1) // 2, (name, part, r0)
