"""``attnkit translate`` through the real command line on a tiny trained encoder-decoder, and a
seq2seq run under torchrun taking the steps of one process."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import attnkit
from attnkit import cli
from attnkit.generation.translate import translate

pytest.importorskip("sacrebleu")

ROOT = Path(__file__).resolve().parents[2]
WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa".split()
TINY = [
    *("--model.arch", "encdec", "--model.n_encoder_layers", "1", "--model.n_decoder_layers", "1"),
    *("--model.d_model", "32", "--model.n_heads", "2", "--model.d_ff", "64"),
    *("--model.max_seq_len", "40", "--model.norm_placement", "pre", "--model.final_norm", "true"),
    *("--data.tokenizer", "bpe", "--data.vocab_size", "300", "--train.batch_tokens", "256"),
    *("--train.lr", "3e-3", "--train.warmup_iters", "2", "--train.progress", "false"),
    *("--train.threads", "1", "--train.eval_sentences", "2", "--train.log_interval", "1"),
]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("translate")
    r = random.Random(0)
    with open(root / "pairs.tsv", "w") as f:
        for _ in range(300):
            words = [r.choice(WORDS) for _ in range(r.randint(2, 7))]
            f.write(" ".join(words) + "\t" + " ".join(reversed(words)).upper() + "\n")
    (root / "base.toml").write_text('[model]\narch = "encdec"\n')
    return {"root": root, "cache": root / "cache", "pairs": root / "pairs.tsv"}


@pytest.fixture(scope="module")
def model_dir(env):
    old = os.environ.get("ATTNKIT_CACHE")
    os.environ["ATTNKIT_CACHE"] = str(env["cache"])
    threads = torch.get_num_threads()
    try:
        out = env["root"] / "model"
        args = ["pretrain", "--config", str(env["root"] / "base.toml")]
        args += ["--data", str(env["pairs"]), "--out", str(out), *TINY]
        assert cli.main(args + ["--train.max_iters", "4", "--train.eval_interval", "4"]) == 0
    finally:
        torch.set_num_threads(threads)
        if old is None:
            os.environ.pop("ATTNKIT_CACHE")
        else:
            os.environ["ATTNKIT_CACHE"] = old
    return out


def run_cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    e = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
    e["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + e.get("PYTHONPATH", "")
    return subprocess.run(
        [sys.executable, "-m", "attnkit", "translate", *args],
        input=stdin,
        env=e,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_file_and_stdin_stream_one_line_per_input_in_order(model_dir, tmp_path):
    model = attnkit.load(model_dir)
    tok = model.meta.tokenizer
    inputs = ["alpha beta gamma", "kappa", "", "delta epsilon zeta eta theta", "iota iota beta"]
    # each text decoded on its own: batching by length must not change any output
    alone = [translate(model, tok, [t], max_new_tokens=6)[0] if t else "" for t in inputs]
    assert sum(bool(a) for a in alone) >= 2  # a model 4 steps in: words, not yet one answer
    path = tmp_path / "in.txt"
    path.write_text("\n".join(inputs) + "\n")
    by_file = run_cli(
        "--model", str(model_dir), "--file", str(path), "--batch-size", "2", "--max-new-tokens", "6"
    )  # fmt: skip
    assert by_file.returncode == 0, by_file.stderr
    assert by_file.stdout.split("\n")[:-1] == alone
    beams = [
        translate(model, tok, [t], num_beams=3, max_new_tokens=6)[0] if t else "" for t in inputs
    ]
    by_stdin = run_cli(
        "--model", str(model_dir), "--beams", "3", "--max-new-tokens", "6",
        stdin="\n".join(inputs) + "\n",
    )  # fmt: skip
    assert by_stdin.returncode == 0, by_stdin.stderr
    assert by_stdin.stdout.split("\n")[:-1] == beams


def test_texts_as_arguments(model_dir, capsys):
    model = attnkit.load(model_dir)
    want = translate(model, model.meta.tokenizer, ["alpha beta", "gamma"], max_new_tokens=5)
    assert cli.main(["translate", "--model", str(model_dir), "alpha beta", "gamma",
                     "--max-new-tokens", "5"]) == 0  # fmt: skip
    assert capsys.readouterr().out == want[0] + "\n" + want[1] + "\n"


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--file", "/no/such/file.txt"], "--file '/no/such/file.txt': No such file"),
        (["x", "--max-new-tokens", "500"], "--max-new-tokens 500 exceeds"),
        (["x", "--file", "f.txt"], "not both"),
        (["x", "--beams", "0"], "argument --beams: expected a positive integer"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(model_dir, capsys, args, needle):
    with pytest.raises(SystemExit) as e:
        cli.main(["translate", "--model", str(model_dir), *args])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1


def test_a_gpt_checkpoint_is_refused(tmp_path, capsys):
    from attnkit.models import ModelConfig, build_model

    model = build_model(ModelConfig(vocab_size=16, n_layer=1, n_heads=1, d_model=8, max_seq_len=8))
    attnkit.save(model, tmp_path / "gpt")
    with pytest.raises(SystemExit) as e:
        cli.main(["translate", "--model", str(tmp_path / "gpt"), "x"])
    assert e.value.code == 2
    assert "needs an encoder-decoder checkpoint" in capsys.readouterr().err


@pytest.mark.slow
def test_torchrun_two_processes_match_one(env, tmp_path):
    """Two processes of one batch each take the steps of one process of two micro-batches."""
    common = ["pretrain", "--config", str(env["root"] / "base.toml"), "--data", str(env["pairs"])]
    common += [*TINY, "--train.max_iters", "4", "--train.eval_interval", "4"]
    e = dict(os.environ, ATTNKIT_CACHE=str(env["cache"]), OMP_NUM_THREADS="1")
    e["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + e.get("PYTHONPATH", "")
    one = subprocess.run(
        [sys.executable, "-m", "attnkit", *common, "--out", str(tmp_path / "one"),
         "--train.grad_accum", "2"],
        env=e, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert one.returncode == 0, one.stderr
    two = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "attnkit", *common, "--out", str(tmp_path / "two")],
        env=e, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert two.returncode == 0, two.stderr

    def losses(out):
        lines = (out / "metrics.jsonl").read_text().splitlines()
        return [r["loss"] for r in map(json.loads, lines) if r["split"] == "train"]

    a, b = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert len(a) == len(b) == 4
    assert a == pytest.approx(b, abs=1e-5)
