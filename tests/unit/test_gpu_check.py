"""scripts/gpu_check.py (`make gpu-check`) on a machine without a GPU: it refuses with a clear
message and exit status 3, writing nothing; the benchmark commands it would run parse with
the real command-line options; its report reader counts a real pytest run's outcomes; and its
own generate/embed rows run (on the CPU, tiny) with the numbers they claim."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _env() -> dict[str, str]:
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    return env


def test_without_cuda_it_says_so_and_exits_3_writing_nothing(tmp_path):
    out = tmp_path / "gpu"
    p = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(out)],
        env=_env(),  # no device visible, even on a machine that has one
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 3, (p.returncode, p.stderr)
    assert "gpu-check: no CUDA device here" in p.stderr
    assert "torch.cuda.is_available() is False" in p.stderr
    assert "Nothing was measured or written" in p.stderr
    assert p.stdout == ""
    assert not out.exists()


@pytest.mark.parametrize("name", ["attention", "variants", "train", "generate", "embed"])
def test_each_benchmark_command_parses_with_the_real_options(gpu_check, tmp_path, name):
    from attnkit.cli import bench

    cmd, produced = gpu_check.step_command(name, tmp_path)
    assert produced.parent in (tmp_path, tmp_path / name)
    if cmd[1:3] == ["-m", "attnkit"]:
        assert cmd[3:5] == ["bench", name] and "cuda" in cmd
        parser = argparse.ArgumentParser()
        getattr(bench, f"{name}_arguments")(parser)
        args = parser.parse_args(cmd[5:])
        assert args.device == "cuda" and Path(args.out) == tmp_path / name
    else:  # the script's own rows, for a benchmark with no --device
        assert cmd[1:] == [str(SCRIPT), "--row", name, "--row-out", str(produced)]


def test_pytest_outcomes_are_read_from_a_real_report(gpu_check, tmp_path):
    (tmp_path / "test_three.py").write_text(
        "import pytest\n"
        "def test_ok():\n    assert 1 + 1 == 2\n"
        "def test_bad():\n    assert 1 + 1 == 3\n"
        "def test_skip():\n    pytest.skip('no device')\n"
    )
    report = tmp_path / "r.xml"
    subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts="]
        + ["--rootdir", str(tmp_path), str(tmp_path / "test_three.py"), f"--junitxml={report}"],
        cwd=tmp_path,
        capture_output=True,
        timeout=120,
    )
    got = gpu_check._junit(report)
    assert got["counts"] == {"passed": 1, "failed": 1, "skipped": 1}
    by = {c["test"].split("::")[-1]: c for c in got["cases"]}
    assert by["test_bad"]["outcome"] == "failed" and "assert" in by["test_bad"]["message"]
    assert by["test_skip"]["message"].endswith("no device")


def test_generate_rows_on_the_cpu(gpu_check):
    got = gpu_check.generate_rows("cpu", new=4, n_layer=1, n_heads=2, d_model=32)
    rows = got["rows"]
    assert [(r["weights"], r["batch"]) for r in rows] == [
        ("float32", 1),
        ("float32", 8),
        ("bfloat16", 1),
        ("bfloat16", 8),
    ]
    for r in rows:
        assert r["device"] == "cpu" and r["new_tokens"] == 4
        assert r["tokens_per_second"] == pytest.approx(r["batch"] * 4 / r["seconds"], rel=1e-2)


@pytest.mark.slow  # MiniLM loaded three times, bf16 emulated here: about 30 s
def test_embed_rows_on_the_cpu(gpu_check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # bf16 on this CPU is emulated
        got = gpu_check.embed_rows("cpu", n=16)
    fp32, bf16 = got["rows"]
    assert fp32["precision"] == "float32" and bf16["precision"] == "bfloat16 autocast"
    assert fp32["sentences"] == 16
    # the float32 CPU rows are the reference itself; bf16 is close to it
    assert fp32["min_cosine_to_cpu_fp32"] == pytest.approx(1.0, abs=1e-5)
    assert 0.98 < bf16["min_cosine_to_cpu_fp32"] <= 1.0 + 1e-5


def test_the_steps_run_in_order_into_one_json(gpu_check, tmp_path, monkeypatch):
    """The driver itself, with stand-in commands in place of the CUDA steps (what they would
    measure needs a GPU): each step's status, time and JSON land in gpu_check.json, a failed
    step makes the exit status 1, and a spent budget skips the rest."""
    monkeypatch.setattr(gpu_check, "cuda_state", lambda: (True, {"torch": "t", "cuda_build": "c"}))
    write = "import json, sys; open(sys.argv[1], 'w').write(json.dumps({'rows': [1, 2]}))"

    def stand_in(name, out):
        produced = out / f"{name}.json"
        if name == "tests":
            return [sys.executable, "-c", "import sys; sys.exit(1)"], out / "pytest.xml"
        return [sys.executable, "-c", write, str(produced)], produced

    monkeypatch.setattr(gpu_check, "step_command", stand_in)
    out = tmp_path / "gpu"
    assert gpu_check.main(["--out", str(out), "--steps", "attention,tests,train"]) == 1
    got = json.loads((out / "gpu_check.json").read_text())
    assert list(got["steps"]) == ["attention", "tests", "train"]
    assert got["steps"]["attention"]["status"] == "passed"
    assert got["steps"]["attention"]["results"] == {"rows": [1, 2]}
    assert got["steps"]["tests"]["status"] == "failed"
    assert got["steps"]["tests"]["results"] == {"error": "pytest wrote no report"}
    assert got["cuda"] == {"torch": "t", "cuda_build": "c"} and "environment" in got

    assert gpu_check.main(["--out", str(out), "--steps", "attention", "--budget", "5"]) == 1
    got = json.loads((out / "gpu_check.json").read_text())
    assert got["steps"]["attention"] == {"status": "skipped", "reason": "the --budget was spent"}
    with pytest.raises(SystemExit):
        gpu_check.main(["--out", str(out), "--steps", "attention,bogus"])
