"""The package works installed: a wheel built from this tree, installed into a fresh venv, runs
``attnkit pretrain --config gpt-shakespeare-char`` (a config shipped as package data) and
``attnkit inspect`` from a directory outside the checkout.

To stay fast the fresh venv reaches the dependencies already installed (torch, numpy, ...)
through a ``.pth`` file naming this environment's site-packages; attnkit itself comes only from
the wheel (a directory named by a ``.pth`` line has its own ``.pth`` files ignored, so this
checkout's editable install is not seen). About 20 s on 2 CPU cores, so not marked slow.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from attnkit.text.corpora import tinyshakespeare_path

ROOT = Path(__file__).resolve().parents[2]

TINY = [
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
    "--train.eval_iters",
    "1",
    "--train.warmup_iters",
    "0",
    "--train.threads",
    "1",
    "--train.progress",
    "false",
]


def run(argv: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{argv[:3]} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("wheel")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "ATTNKIT_DEBUG")}
    # build from a copy of the tree (tracked and unignored files): a build/ folder left in the
    # checkout by an earlier build could put modules that no longer exist into the wheel
    tree = root / "tree"
    try:
        listed = subprocess.check_output(
            ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, text=True
        ).split("\0")
    except (OSError, subprocess.CalledProcessError):  # not a git checkout
        listed = ["pyproject.toml", "README.md", "LICENSE"] + [
            p.relative_to(ROOT).as_posix()
            for p in (ROOT / "src" / "attnkit").rglob("*")
            if "__pycache__" not in p.parts
        ]
    for name in filter(None, listed):
        if (ROOT / name).is_file():
            (tree / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, tree / name)
    wheels = root / "dist"
    # with setuptools here already, no index is needed to build
    isolation = [] if importlib.util.find_spec("setuptools") is None else ["--no-build-isolation"]
    run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(tree),
            "--no-deps",
            *isolation,
            "-q",
            "-w",
            str(wheels),
        ],
        root,
        env,
    )
    (wheel,) = wheels.glob("attnkit-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    sources = {p.relative_to(tree / "src").as_posix() for p in (tree / "src").rglob("*.py")}
    assert {n for n in names if n.endswith(".py")} == sources
    for data in (
        "attnkit/py.typed",
        "attnkit/configs/gpt-shakespeare-char.toml",
        "attnkit/inspect/viewer_template.html",
        "attnkit/native/skinny.c",
    ):
        assert data in names, f"{data} is not in {wheel.name}"
    venv = root / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)], root, env)
    python = venv / "bin" / "python"
    site = Path(
        subprocess.check_output(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            text=True,
        ).strip()
    )
    (site / "deps_of_the_test_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "-q",
            "--no-deps",
            "--no-index",
            str(wheel),
        ],
        root,
        env,
    )
    return venv


def test_the_installed_wheel_pretrains_and_inspects(venv, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "ATTNKIT_DEBUG")}
    env.update(ATTNKIT_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    where = run(
        [str(venv / "bin" / "python"), "-c", "import attnkit; print(attnkit.__file__)"],
        tmp_path,
        env,
    ).stdout.strip()
    assert Path(where).resolve().is_relative_to(venv.resolve()), where
    corpus = tmp_path / "tiny.txt"
    corpus.write_text(tinyshakespeare_path().read_text()[:20_000])
    attnkit = str(venv / "bin" / "attnkit")
    out = tmp_path / "run"
    run(
        [
            attnkit,
            "pretrain",
            "--config",
            "gpt-shakespeare-char",
            "--data",
            str(corpus),
            "--out",
            str(out),
            *TINY,
            "--train.max_iters",
            "2",
        ],
        tmp_path,
        env,
    )
    summary = json.loads((out / "summary.json").read_text())
    assert summary["iters"] == 2
    assert (out / "loss.png").is_file()
    maps = tmp_path / "maps"
    run(
        [attnkit, "inspect", "--model", str(out), "--text", "ROMEO: hi", "--out", str(maps)],
        tmp_path,
        env,
    )
    for name in ("maps.npz", "stats.json", "viewer.html", "layer_0.png", "rollout.png"):
        assert (maps / name).is_file(), name
