"""matplotlib is optional for real: without it (a fake import hook) the commands print one line
naming ``attnkit[viz]`` and write every output that is not a plot."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import attnkit
from attnkit._util.optional import MissingDependency, figure, require
from attnkit.models import build_model, get_preset
from attnkit.text.corpora import tinyshakespeare_path

# Runs the command line in a process where importing matplotlib fails, as if not installed.
NO_MATPLOTLIB = """
import sys


class NoMatplotlib:
    def find_spec(self, name, path=None, target=None):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, NoMatplotlib())
from attnkit.cli import main

sys.exit(main(sys.argv[1:]))
"""

TINY_GPT = [
    "--model.n_layer",
    "1",
    "--model.n_heads",
    "2",
    "--model.d_model",
    "32",
    "--model.max_seq_len",
    "32",
    "--train.block_size",
    "32",
    "--train.batch_size",
    "4",
    "--train.max_iters",
    "2",
    "--train.eval_iters",
    "1",
    "--train.warmup_iters",
    "0",
    "--train.threads",
    "1",
    "--train.progress",
    "false",
]

VIZ_HINT = "pip install 'attnkit[viz]'"


def word_tokenizer():  # a WordPiece tokenizer over a handful of words
    from tokenizers.implementations import BertWordPieceTokenizer

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cave", "ball", "bat"]
    return BertWordPieceTokenizer({w: i for i, w in enumerate(words)}, lowercase=True)._tokenizer


def run_without_matplotlib(tmp_path: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "ATTNKIT_DEBUG"}
    env.update(ATTNKIT_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, "-c", NO_MATPLOTLIB, *argv],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def hint_lines(err: str) -> list[str]:
    assert "Traceback" not in err, err[-3000:]
    return [line for line in err.splitlines() if VIZ_HINT in line]


def test_require_names_the_extra():
    assert require("json", "viz") is json
    with pytest.raises(MissingDependency, match=r"pip install 'attnkit\[sweep\]'") as exc:
        require("attnkit_no_such_package.sub", "sweep", "sweeps")
    assert isinstance(exc.value, ImportError) and exc.value.extra == "sweep"
    with pytest.raises(ValueError, match="module name and an extra"):
        require("json", "")


def test_figure_touches_no_global_state(tmp_path):
    import matplotlib

    backend = matplotlib.get_backend()
    fig = figure(2, 2)
    fig.add_subplot().plot([0, 1], [1, 0])
    fig.savefig(tmp_path / "x.png", format="png")
    assert (tmp_path / "x.png").read_bytes()[:4] == b"\x89PNG"
    assert matplotlib.get_backend() == backend
    assert "matplotlib.pyplot" not in sys.modules or matplotlib.get_backend() == backend


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "tiny.txt"
    path.write_text(tinyshakespeare_path().read_text()[:20_000])
    return path


def test_pretrain_and_inspect_without_matplotlib(tmp_path, corpus):
    out = tmp_path / "run"
    proc = run_without_matplotlib(
        tmp_path,
        "pretrain",
        "--config",
        "gpt-shakespeare-char",
        "--data",
        str(corpus),
        "--out",
        str(out),
        *TINY_GPT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(hint_lines(proc.stderr)) == 1, proc.stderr[-3000:]
    for name in ("summary.json", "metrics.jsonl", "metrics.csv", "run_config.json"):
        assert (out / name).is_file(), name
    assert not (out / "loss.png").exists()

    maps = tmp_path / "maps"
    proc = run_without_matplotlib(
        tmp_path, "inspect", "--model", str(out), "--text", "ROMEO: hi", "--out", str(maps)
    )
    assert proc.returncode == 1, proc.stderr[-3000:]
    err = proc.stderr.strip().splitlines()
    assert err == hint_lines(proc.stderr) and len(err) == 1, err
    assert err[0].startswith("attnkit: error: matplotlib is not installed")
    for name in ("maps.npz", "stats.json", "viewer.html"):
        assert (maps / name).is_file(), name
    assert not list(maps.glob("*.png"))
    assert "ROMEO" in json.loads((maps / "stats.json").read_text())["text"]


def test_finetune_without_matplotlib(tmp_path):
    cfg = get_preset("tiny-bert", vocab_size=80, d_model=32, n_layer=1)
    model_dir = tmp_path / "tiny-bert"
    attnkit.save(build_model(cfg).eval(), model_dir, tokenizer=word_tokenizer())
    rows = "".join(
        f"{word} the {word},{word}\n" for word in ("cave", "ball", "bat", "cave", "ball", "bat")
    )
    for split in ("train", "eval"):
        (tmp_path / f"{split}.csv").write_text("text,label\n" + rows)
    out = tmp_path / "run"
    proc = run_without_matplotlib(
        tmp_path,
        "finetune",
        "--model",
        str(model_dir),
        "--train",
        str(tmp_path / "train.csv"),
        "--eval",
        str(tmp_path / "eval.csv"),
        "--out",
        str(out),
        "--epochs",
        "1",
        "--no-progress",
    )
    # the model and its scores are the result: a warning line, exit 0
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(hint_lines(proc.stderr)) == 1, proc.stderr[-3000:]
    assert "macro-F1" in proc.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["labels"] == ["ball", "bat", "cave"]
    assert (out / "model.safetensors").is_file()
    assert not (out / "confusion.png").exists()
