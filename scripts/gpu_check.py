"""The GPU check: the CUDA tests and the GPU rows of the benchmarks, in one JSON (`make gpu-check`).

    python scripts/gpu_check.py --out bench_out/gpu      # writes bench_out/gpu/gpu_check.json

Steps, each in its own process with its own time limit (a crash or a hang in one leaves the
others to run), all within --budget seconds (default 450, under 8 minutes on one GPU):

1. ``pytest -m gpu`` (tests/gpu and every other test marked gpu): results per test;
2. ``attnkit bench attention --quick --device cuda``;
3. ``attnkit bench variants --quick --device cuda``;
4. ``attnkit bench train --device cuda`` in bfloat16, a few steps;
5. generate: ``attnkit bench generate --quick --device cuda`` when that command has a
   ``--device``; otherwise this script's rows: greedy decoding of a GPT-2 124M layout
   (random weights, no download) on CUDA, batch 1 and 8, float32 and bfloat16 weights;
6. embed: ``attnkit bench embed --device cuda`` likewise, else this script's rows: the local
   MiniLM encoder on CUDA, float32 and bfloat16 autocast, sentences/s and the cosine to the
   float32 CPU embeddings.

Each benchmark's own JSON is copied into the result. Without a CUDA device the script says so
on stderr and exits 3, writing nothing: no figure is made up for a GPU that is not there.
Exit status 1 when a step failed, 0 when every step passed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
NO_CUDA = 3

# (name, seconds it may take at most)
STEPS = [
    ("tests", 110),
    ("attention", 110),
    ("variants", 80),
    ("train", 60),
    ("generate", 45),
    ("embed", 45),
]


def _tail(text: str, n: int = 3000) -> str:
    return text[-n:]


def _run(cmd: list[str], limit: float, env: dict[str, str]) -> dict[str, Any]:
    t0 = time.perf_counter()
    try:
        p = subprocess.run(
            cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=max(limit, 1.0)
        )
        rc, out, err = p.returncode, p.stdout, p.stderr
    except subprocess.TimeoutExpired as e:
        rc = None
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        err = e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
    return {
        "command": " ".join(cmd),
        "returncode": rc,
        "status": "timeout" if rc is None else ("passed" if rc == 0 else "failed"),
        "seconds": round(time.perf_counter() - t0, 1),
        "stdout_tail": _tail(out),
        "stderr_tail": _tail(err),
    }


def _has_device_option(command: str) -> bool:
    """True when ``attnkit bench <command>`` takes ``--device``."""
    from attnkit.cli import bench

    parser = argparse.ArgumentParser()
    getattr(bench, f"{command}_arguments")(parser)
    return any("--device" in a.option_strings for a in parser._actions)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        return {"error": f"{path}: {e}"}


def _junit(path: Path) -> dict[str, Any]:
    """Per-test outcomes from pytest's JUnit XML (a file pytest wrote here)."""
    import xml.etree.ElementTree as ET

    if not path.is_file():
        return {"error": "pytest wrote no report"}
    cases = []
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome = "passed"
        message = ""
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[child.tag]
                message = (child.get("message") or "")[:300]
        cases.append(
            {
                "test": f"{case.get('classname')}::{case.get('name')}",
                "outcome": outcome,
                "seconds": float(case.get("time") or 0.0),
                "message": message,
            }
        )
    counts: dict[str, int] = {}
    for c in cases:
        counts[c["outcome"]] = counts.get(c["outcome"], 0) + 1
    return {"counts": counts, "cases": cases}


def step_command(name: str, out: Path) -> tuple[list[str], Path]:
    """The command of step ``name`` and the file it leaves (JSON; JUnit XML for the tests)."""
    py = sys.executable
    bench = [py, "-m", "attnkit", "bench"]
    if name == "tests":
        report = out / "pytest.xml"
        cmd = [py, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "tests"]
        return cmd + [f"--junitxml={report}"], report
    if name in ("attention", "variants"):
        return bench + [name, "--quick", "--device", "cuda", "--out", str(out / name)], (
            out / name / f"{name}.json"
        )
    if name == "train":
        cmd = bench + ["train", "--device", "cuda", "--dtype", "bfloat16", "--iters", "20"]
        return cmd + ["--warmup", "3", "--out", str(out / name)], out / name / "train.json"
    if name in ("generate", "embed"):
        if _has_device_option(name):
            extra = ["--quick"] if name == "generate" else ["--lines", "1024"]
            cmd = bench + [name, *extra, "--device", "cuda", "--out", str(out / name)]
            return cmd, out / name / f"{name}.json"
        produced = out / f"{name}.json"
        return [py, str(Path(__file__).resolve()), "--row", name, "--row-out", str(produced)], (
            produced
        )
    raise ValueError(f"unknown step {name!r}; expected one of {[s for s, _ in STEPS]}")


# ------------------------------------------------------------------------------------------
# this script's own GPU rows (for benchmarks that have no --device yet); printed as JSON
# ------------------------------------------------------------------------------------------
def generate_rows(device: str = "cuda", new: int = 128, **shape: int) -> dict[str, Any]:
    """Greedy decoding tokens/s of the GPT-2 124M layout (``shape``: preset overrides)."""
    import torch

    from attnkit.bench.harness import time_fn
    from attnkit.generation import generate
    from attnkit.models import build_model, get_preset

    torch.manual_seed(0)
    model = build_model(get_preset("gpt2", **shape)).eval().to(device)
    prompt_len = 32
    rows = []
    for dtype in ("float32", "bfloat16"):
        m = model.to(getattr(torch, dtype))
        for batch in (1, 8):
            ids = torch.randint(0, m.config.vocab_size, (batch, prompt_len), device=device)

            def run(m=m, ids=ids) -> None:
                generate(m, ids, max_new_tokens=new, temperature=0.0)

            seconds = time_fn(run, warmup=1, repeat=3, device=device, max_seconds=15)
            rows.append(
                {
                    "model": f"gpt2 layout {shape or '(124M)'}, random weights",
                    "device": device,
                    "weights": dtype,
                    "batch": batch,
                    "prompt_tokens": prompt_len,
                    "new_tokens": new,
                    "seconds": round(seconds, 6),
                    "tokens_per_second": round(batch * new / seconds, 1),
                }
            )
    return {"rows": rows, "source": "scripts/gpu_check.py (attnkit bench generate has no --device)"}


def embed_rows(device: str = "cuda", n: int = 2048) -> dict[str, Any]:
    """Sentences/s of the local MiniLM encoder on ``n`` Shakespeare lines, and the cosine of
    its embeddings to the float32 CPU ones."""
    import torch

    from attnkit.bench.harness import time_fn
    from attnkit.tasks.sentence import Encoder
    from attnkit.text.corpora import tinyshakespeare_path

    lines = [ln.strip() for ln in tinyshakespeare_path().read_text().splitlines() if ln.strip()]
    texts = lines[:n]
    ref = torch.as_tensor(Encoder.load("minilm", device="cpu").encode(texts[:256]))
    rows = []
    for autocast in (None, torch.bfloat16):
        enc = Encoder.load("minilm", device=device, autocast=autocast)
        got = torch.as_tensor(enc.encode(texts[:256]))
        cosine = torch.nn.functional.cosine_similarity(got, ref, dim=-1)

        def run(enc=enc) -> None:
            enc.encode(texts, batch_size=128)

        seconds = time_fn(run, warmup=1, repeat=3, device=device, max_seconds=15)
        rows.append(
            {
                "model": "minilm (all-MiniLM-L6-v2)",
                "device": device,
                "precision": "bfloat16 autocast" if autocast else "float32",
                "sentences": len(texts),
                "batch_size": 128,
                "seconds": round(seconds, 6),
                "sentences_per_second": round(len(texts) / seconds, 1),
                "min_cosine_to_cpu_fp32": round(float(cosine.min()), 5),
            }
        )
    return {"rows": rows, "source": "scripts/gpu_check.py (attnkit bench embed has no --device)"}


# ------------------------------------------------------------------------------------------
def cuda_state() -> tuple[bool, dict[str, Any]]:
    import torch

    info: dict[str, Any] = {"torch": torch.__version__, "cuda_build": torch.version.cuda}
    if not torch.cuda.is_available():
        return False, info
    info.update(
        device=torch.cuda.get_device_name(0),
        capability=".".join(map(str, torch.cuda.get_device_capability(0))),
        memory_gib=round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1),
        device_count=torch.cuda.device_count(),
    )
    return True, info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench_out/gpu", help="where gpu_check.json goes")
    parser.add_argument("--budget", type=float, default=450.0, help="seconds for all steps")
    parser.add_argument(
        "--steps", default=",".join(s for s, _ in STEPS), help="comma-separated steps to run"
    )
    parser.add_argument("--row", choices=("generate", "embed"), help=argparse.SUPPRESS)
    parser.add_argument("--row-out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    ok, info = cuda_state()
    if not ok:
        print(
            f"gpu-check: no CUDA device here (torch {info['torch']}, CUDA build "
            f"{info['cuda_build']}, torch.cuda.is_available() is False); run it on a machine "
            f"with an NVIDIA GPU and a CUDA build of torch. Nothing was measured or written.",
            file=sys.stderr,
        )
        return NO_CUDA
    if args.row:  # one of this script's own rows, in a child process
        rows = generate_rows() if args.row == "generate" else embed_rows()
        Path(args.row_out).write_text(json.dumps(rows, indent=2))
        return 0

    wanted = [s.strip() for s in args.steps.split(",") if s.strip()]
    limits = dict(STEPS)
    unknown = [s for s in wanted if s not in limits]
    if unknown:
        parser.error(f"--steps: unknown {unknown}; expected some of {list(limits)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(ROOT / "src"))  # a checkout without an installed attnkit
    env = dict(os.environ, OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "PASSIVE"))
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")

    from attnkit.bench.harness import environment

    result: dict[str, Any] = {"cuda": info, "environment": environment(), "steps": {}}
    start = time.perf_counter()
    for name in wanted:
        left = args.budget - (time.perf_counter() - start)
        if left < 10:
            result["steps"][name] = {"status": "skipped", "reason": "the --budget was spent"}
            continue
        cmd, produced = step_command(name, out)
        step = _run(cmd, min(limits[name], left), env)
        if name == "tests":
            step["results"] = _junit(out / "pytest.xml")
        else:
            step["results"] = _read_json(produced) if produced.is_file() else None
        result["steps"][name] = step
        print(f"gpu-check: {name:<10} {step['status']:<8} {step['seconds']:7.1f} s", flush=True)
    result["seconds"] = round(time.perf_counter() - start, 1)
    path = out / "gpu_check.json"
    with tempfile.NamedTemporaryFile("w", dir=out, delete=False, suffix=".tmp") as f:
        json.dump(result, f, indent=2, default=str)
    os.replace(f.name, path)
    print(f"gpu-check: {path} ({result['seconds']} s)")
    failed = [n for n, s in result["steps"].items() if s["status"] != "passed"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
