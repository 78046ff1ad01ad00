"""`attnkit finetune` under torchrun: two processes (gloo, CPU) give the weights of one.

Each process runs its share of every global batch of ``--batch-size`` texts, and the loss is
normalised by the whole batch, so the steps are those of a single process with the same batch.
"""

from __future__ import annotations

import csv
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import attnkit
from attnkit.models import build_model, get_preset

ROOT = Path(__file__).resolve().parents[2]
WORDS = ["the", "bat", "he", "swung", "flew", "out", "of", "cave", "ball"]


def tokenizer():
    from tokenizers.implementations import BertWordPieceTokenizer

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"abcdefghijklmnopqrstuvwxyz", *WORDS]
    return BertWordPieceTokenizer({w: i for i, w in enumerate(vocab)}, lowercase=True)._tokenizer


def write_data(path: Path, n: int, seed: int) -> Path:
    """Texts of 2-8 words whose label is the word they repeat (lengths differ, so batches pad)."""
    rng = random.Random(seed)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for i in range(n):
            label = ("cave", "ball", "bat")[i % 3]
            words = [rng.choice(WORDS[:6]) for _ in range(rng.randint(0, 4))]
            for _ in range(rng.randint(2, 4)):
                words.insert(rng.randint(0, len(words)), label)
            w.writerow([" ".join(words), label])
    return path


def test_torchrun_two_processes_match_one(tmp_path):
    cfg = get_preset("tiny-bert", vocab_size=60, d_model=32, n_layer=2, pooling="mean")
    cfg = cfg.replace(dropout=0.0, attn_dropout=0.0)
    base = tmp_path / "base"
    torch.manual_seed(0)
    attnkit.save(build_model(cfg).eval(), base, tokenizer=tokenizer())
    train = write_data(tmp_path / "train.csv", 25, seed=1)  # batches of 4 and one of 1
    eval_ = write_data(tmp_path / "eval.csv", 11, seed=2)
    common = [
        "finetune",
        "--model",
        str(base),
        "--train",
        str(train),
        "--eval",
        str(eval_),
        "--epochs",
        "2",
        "--batch-size",
        "4",
        "--lr",
        "5e-3",
        "--patience",
        "9",
        "--eval-every",
        "3",
        "--device",
        "cpu",
        "--no-progress",
    ]
    e = dict(os.environ, OMP_NUM_THREADS="1")
    e["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + e.get("PYTHONPATH", "")
    single = subprocess.run(
        [sys.executable, "-m", "attnkit", *common, "--out", str(tmp_path / "one")],
        env=e,
        capture_output=True,
        text=True,
        timeout=300,  # a hung rank fails the test, not the CI job
    )
    assert single.returncode == 0, single.stderr[-3000:]
    double = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "attnkit",
            *common,
            "--out",
            str(tmp_path / "two"),
        ],
        env=e,
        capture_output=True,
        text=True,
        timeout=300,  # a hung rank fails the test, not the CI job
    )
    assert double.returncode == 0, double.stderr[-3000:]
    assert double.stdout.count("macro-F1") == 1  # rank 0 reports, once
    m1 = json.loads((tmp_path / "one" / "metrics.json").read_text())
    m2 = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert m1["world_size"] == 1 and m2["world_size"] == 2
    assert [h["step"] for h in m1["history"]] == [h["step"] for h in m2["history"]]
    assert m1["steps"] == m2["steps"] == 14
    for h1, h2 in zip(m1["history"], m2["history"]):
        assert abs(h1["train_loss"] - h2["train_loss"]) < 1e-5, (h1, h2)
        assert abs(h1["eval_loss"] - h2["eval_loss"]) < 1e-5, (h1, h2)
    w1 = load_file(tmp_path / "one" / "model.safetensors")
    w2 = load_file(tmp_path / "two" / "model.safetensors")
    assert w1.keys() == w2.keys()
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], atol=1e-5, rtol=1e-4, msg=k)
    saved = json.loads((tmp_path / "two" / "config.json").read_text())
    assert saved["model"]["id2label"] == ["ball", "bat", "cave"]
    assert saved["meta"]["finetune"]["label_column"] == "label"


def test_finetune_into_an_earlier_model_is_refused_unless_overwrite(tmp_path, capsys):
    import hashlib

    from attnkit import cli

    cfg = get_preset("tiny-bert", vocab_size=60, d_model=32, n_layer=1, pooling="mean")
    base = tmp_path / "base"
    torch.manual_seed(0)
    attnkit.save(build_model(cfg).eval(), base, tokenizer=tokenizer())
    train = write_data(tmp_path / "train.csv", 12, seed=1)
    eval_ = write_data(tmp_path / "eval.csv", 6, seed=2)
    out = tmp_path / "clf"
    argv = ["finetune", "--model", str(base), "--train", str(train), "--eval", str(eval_)]
    argv += ["--epochs", "1", "--batch-size", "4", "--device", "cpu", "--no-progress"]
    argv += ["--out", str(out)]
    assert cli.main(argv) == 0

    def digests() -> dict[str, str]:
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in out.iterdir()}

    before = digests()
    assert {"config.json", "model.safetensors", "metrics.json"} <= before.keys()
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        cli.main([*argv, "--lr", "1e-2"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{out} already holds a fine-tuned model" in err, err
    assert "--overwrite" in err and "--resume" not in err
    assert digests() == before
    assert cli.main([*argv, "--lr", "1e-2", "--overwrite"]) == 0
    after = digests()
    assert after["model.safetensors"] != before["model.safetensors"]
    assert json.loads((out / "metrics.json").read_text())["config"]["lr"] == 1e-2
    assert not (out / ".replaced-run").exists()
