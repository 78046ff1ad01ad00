"""Pre-training side by side with nanoGPT on tinyshakespeare, in one run on one machine.

    flock /tmp/bench.lock python benchmarks/nanogpt_side_by_side.py --nanogpt PATH/TO/nanoGPT \\
        [--rounds 3] [--max-iters N] [--threads 2] [--out bench_out]

What runs, in ``--rounds`` rounds (nanoGPT, then attnkit, again and again; at least 3 for the
spread to mean something), every run a fresh process with ``--threads`` CPU threads:

1. nanoGPT's ``train.py``, unchanged, with its published CPU command for shakespeare_char
   (4 layers, 4 heads, 128 wide, block 64, batch 12, 2000 iterations, lr 1e-3 decaying to
   1e-4, no dropout, eval_iters 20), plus ``--log_interval=1`` (a time for every iteration)
   and ``--always_save_checkpoint=True`` (so ``ckpt.pt`` holds the model of the last
   evaluation, after 2000 steps, not the best one). It runs in a copy of the checkout under
   ``--out``, on the data of its own ``data/shakespeare_char/prepare.py`` fed the local file;
2. ``attnkit pretrain`` with ``gpt-shakespeare-char-classic`` (nanoGPT's recipe step for step),
   ``gpt-shakespeare-char`` (the same model on a shorter, hotter schedule) and
   ``gpt-shakespeare-char-best`` (our best recipe for nanoGPT's wall time).

How each figure is measured, the same way on both sides:

* step time: the wall-clock between the ends of consecutive optimizer steps. nanoGPT logs it
  (``time ...ms``, which includes its ``loss.item()`` and print of the step before); attnkit
  writes it to ``summary.json`` (``step_seconds``). The first 10 steps (warm-up, and for
  attnkit compilation) and every step whose interval holds an evaluation or a checkpoint are
  left out on both sides; tokens/s is tokens per step over the median of the rest;
* validation loss: both final models (nanoGPT's ``ckpt.pt``, read with
  ``torch.load(weights_only=True)``, and attnkit's last checkpoint) are evaluated here by one
  evaluator, on every non-overlapping 64-token window (nanoGPT's context) of the same held-out
  text: attnkit's validation split, the last tenth of the file from a line break, which lies
  inside nanoGPT's validation split too, so neither model trained on it. Each side's own
  estimate (nanoGPT: 20 random batches; attnkit: 20 fixed ones) is shown beside it;
* parameters: counted on both loaded models, tied weights once, position embeddings
  included (the count nanoGPT prints leaves them out; it is checked against the count here).
  The same-recipe pair must be equal, or the script stops;
* wall: the whole process (start-up, data, compilation and evaluations included). Each run
  gets a fresh, empty compile cache (``TORCHINDUCTOR_CACHE_DIR``), so attnkit's walls include a
  cold compile; one extra classic run with the cache of an earlier one shows a warm start.

The figures of a configuration are the median over the rounds, with the spread
(max - min) / median; the throughput ratio is the median of each round's ratio of neighbouring
runs. Everything runs in float32 on the CPU (no bfloat16 or int8 row: nanoGPT's CPU recipe
has none). Prints a table and checks, and writes ``nanogpt_side_by_side.json`` with every
step time, the machine, library versions, threads, allocator and attention settings.
nanoGPT is not part of attnkit: give the path of a checkout.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import math
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
BLOCK, BATCH = 64, 12
TOKENS_PER_STEP = BLOCK * BATCH
EVAL_INTERVAL = 250
ITERS = 2000
SKIP = 10  # the first steps of a run are not steady state (warm-up, compilation)
CLASSIC = "gpt-shakespeare-char-classic"
DEFAULT = "gpt-shakespeare-char"
BEST = "gpt-shakespeare-char-best"
CONFIGS = (CLASSIC, DEFAULT, BEST)
TARGET_RATIO = 1.25
BEST_TARGET = 1.70
ENV_KEYS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME", "MKL_NUM_THREADS")
ALLOCATOR_PREFIXES = ("MALLOC_", "GLIBC_TUNABLES", "LD_PRELOAD", "PYTORCH_", "JEMALLOC", "TCMALLOC")


def warmup_for(max_iters: int) -> int:
    """Warm-up steps of a run of ``max_iters``: the recipe's 100, fewer for a short test run
    (nanoGPT divides by ``lr_decay_iters - warmup_iters``)."""
    return min(100, max_iters // 10)


def nanogpt_args(max_iters: int, eval_interval: int) -> list[str]:
    """nanoGPT's published CPU command for shakespeare_char, with a time for every iteration
    and a checkpoint at every evaluation (``ckpt.pt`` then holds the last evaluated model)."""
    return [
        "config/train_shakespeare_char.py",
        "--device=cpu",
        "--compile=False",
        "--eval_iters=20",
        "--log_interval=1",
        f"--block_size={BLOCK}",
        f"--batch_size={BATCH}",
        "--n_layer=4",
        "--n_head=4",
        "--n_embd=128",
        f"--max_iters={max_iters}",
        f"--lr_decay_iters={max_iters}",
        "--dropout=0.0",
        f"--eval_interval={eval_interval}",
        "--always_save_checkpoint=True",
        f"--warmup_iters={warmup_for(max_iters)}",
    ]


# --------------------------------------------------------------------------------------------
# pure parts: the log parser, the estimator, the spread, the parameter check
# --------------------------------------------------------------------------------------------
@dataclass
class NanoLog:
    """What nanoGPT's ``train.py`` printed: per-iteration times, evaluations, its count."""

    iters: list[int] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    evals: list[tuple[int, float, float]] = field(default_factory=list)  # step, train, val
    params_millions: float | None = None


ITER_LINE = re.compile(r"^iter (\d+): loss (\S+), time ([\d.]+)ms", re.MULTILINE)
EVAL_LINE = re.compile(r"^step (\d+): train loss ([\d.]+), val loss ([\d.]+)", re.MULTILINE)
PARAMS_LINE = re.compile(r"^number of parameters: ([\d.]+)M", re.MULTILINE)


def parse_nanogpt_log(text: str) -> NanoLog:
    """Parse nanoGPT's standard output (``--log_interval=1``): every ``iter N: ..., time T ms``
    line, every ``step N: train loss A, val loss B`` line and the parameter count it prints."""
    log = NanoLog()
    for m in ITER_LINE.finditer(text):
        log.iters.append(int(m.group(1)))
        log.seconds.append(float(m.group(3)) / 1e3)
    for m in EVAL_LINE.finditer(text):
        log.evals.append((int(m.group(1)), float(m.group(2)), float(m.group(3))))
    found = PARAMS_LINE.search(text)
    if found:
        log.params_millions = float(found.group(1))
    if not log.iters:
        raise ValueError("no 'iter N: loss L, time T ms' line in nanoGPT's output")
    if log.iters != list(range(log.iters[0], log.iters[0] + len(log.iters))):
        raise ValueError(
            "nanoGPT's iteration lines are not consecutive: run it with --log_interval=1"
        )
    return log


def nanogpt_busy(iters: Sequence[int], eval_interval: int) -> list[int]:
    """Indices of nanoGPT's iterations whose logged time holds an evaluation: it evaluates
    (and saves ``ckpt.pt``) at the start of every iteration divisible by ``eval_interval``."""
    return [i for i, it in enumerate(iters) if it % eval_interval == 0]


def steady_state(
    seconds: Sequence[float], skip: int = SKIP, exclude: Iterable[int] = ()
) -> dict[str, float]:
    """Median and count of the step times after the first ``skip``, less those at ``exclude``.

    >>> steady_state([5.0, 0.2, 0.4, 9.0, 0.3], skip=1, exclude=[3])
    {'median_s': 0.3, 'steps': 3}
    """
    from attnkit.training.speed import steady_steps

    exclude = list(exclude)
    kept = steady_steps(seconds, skip, exclude)
    if not kept:
        raise ValueError(
            f"no steady-state step: {len(seconds)} steps, the first {skip} and "
            f"{len(set(exclude))} more left out"
        )
    return {"median_s": statistics.median(kept), "steps": len(kept)}


def tokens_per_second(
    seconds: Sequence[float], tokens_per_step: int = TOKENS_PER_STEP, exclude: Iterable[int] = ()
) -> float:
    """Tokens per step over the median steady-state step time (the one estimator of both).

    >>> tokens_per_second([9.0] * 10 + [0.5, 0.25, 0.5], 100)
    200.0
    """
    return tokens_per_step / steady_state(seconds, exclude=exclude)["median_s"]


def spread(values: Sequence[float]) -> dict[str, float]:
    """Median, min, max and spread = (max - min) / median of one figure over the rounds.

    >>> spread([10.0, 12.0, 11.0])["spread"]
    0.18181818181818182
    """
    if not values:
        raise ValueError("spread of no values")
    med = statistics.median(values)
    lo, hi = min(values), max(values)
    return {"median": med, "min": lo, "max": hi, "spread": (hi - lo) / med if med else math.nan}


def check_same_parameters(nanogpt: int, attnkit: int) -> None:
    """ValueError unless the same-recipe models have the same number of parameters."""
    if nanogpt != attnkit:
        raise ValueError(
            f"parameter counts differ: nanoGPT {nanogpt:,}, attnkit {attnkit:,} "
            f"(expected equal for the same recipe; both count tied weights once and include "
            f"position embeddings)"
        )


def check_printed_count(printed_millions: float | None, total: int, position: int) -> None:
    """ValueError unless nanoGPT's printed count (millions, without position embeddings) is
    ``total - position`` rounded as it prints it."""
    if printed_millions is None:
        raise ValueError("nanoGPT printed no 'number of parameters: ...M' line")
    if abs((total - position) / 1e6 - printed_millions) > 0.005 + 1e-9:
        raise ValueError(
            f"nanoGPT printed {printed_millions:.2f}M parameters without position embeddings; "
            f"counted {total:,} - {position:,} = {total - position:,}"
        )


def val_windows(ids: Sequence[int], block: int = BLOCK) -> tuple[torch.Tensor, torch.Tensor]:
    """Every non-overlapping window of ``block`` inputs and their next tokens: (N, block) each.

    >>> [t.tolist() for t in val_windows([0, 1, 2, 3, 4, 5], block=2)]
    [[[0, 1], [2, 3]], [[1, 2], [3, 4]]]
    """
    n = (len(ids) - 1) // block
    if n < 1:
        raise ValueError(f"{len(ids)} tokens hold no window of {block} and its next token")
    t = torch.tensor(ids[: n * block + 1], dtype=torch.long)
    return t[:-1].view(n, block), t[1:].view(n, block)


@torch.no_grad()
def window_loss(logits_of, x: torch.Tensor, y: torch.Tensor, batch: int = 64) -> float:
    """Mean cross entropy (nats per token) of ``logits_of(x) -> (B, T, V)`` over all targets."""
    total, count = 0.0, 0
    for i in range(0, x.shape[0], batch):
        xb, yb = x[i : i + batch], y[i : i + batch]
        logits = logits_of(xb).float()
        total += F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), yb.reshape(-1), reduction="sum"
        ).item()
        count += yb.numel()
    return total / count


# --------------------------------------------------------------------------------------------
# the runs
# --------------------------------------------------------------------------------------------
class Failed(Exception):
    """A run or a check that stops the script (one line on stderr, exit 2)."""


def distinct_parameters(tensors: Iterable[torch.Tensor]) -> int:
    """Elements of the distinct tensors (tied ones, sharing storage, counted once)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for t in tensors:
        key = (t.untyped_storage().data_ptr(), t.storage_offset())
        if key not in seen:
            seen.add(key)
            total += t.numel()
    return total


@dataclass
class ValText:
    """The held-out text both models are evaluated on."""

    text: str

    def windows(self, encode) -> tuple[torch.Tensor, torch.Tensor]:
        return val_windows(encode(self.text))


NANOGPT_FILES = ("train.py", "model.py", "configurator.py", "config/train_shakespeare_char.py")


def check_checkout(repo: Path) -> None:
    """Failed unless ``repo`` holds the nanoGPT files this script runs."""
    needed = (*NANOGPT_FILES, "data/shakespeare_char/prepare.py")
    missing = [n for n in needed if not (repo / n).is_file()]
    if missing:
        raise Failed(
            f"--nanogpt {repo}: not a nanoGPT checkout (no {', '.join(missing)}); expected "
            f"a clone of https://github.com/karpathy/nanoGPT"
        )


def prepare_nanogpt(repo: Path, corpus: Path, work: Path, env: dict[str, str]) -> Path:
    """A copy of the checkout's code in ``work`` with its shakespeare_char data prepared from
    the local corpus (its ``prepare.py``, with a stand-in for ``requests``: no download)."""
    check_checkout(repo)
    needed = NANOGPT_FILES
    shutil.rmtree(work, ignore_errors=True)
    (work / "config").mkdir(parents=True)
    (work / "data/shakespeare_char").mkdir(parents=True)
    for n in needed:
        shutil.copyfile(repo / n, work / n)
    data = work / "data/shakespeare_char"
    shutil.copyfile(repo / "data/shakespeare_char/prepare.py", data / "prepare.py")
    shutil.copyfile(corpus, data / "input.txt")
    shim = work / "shim"
    shim.mkdir()
    (shim / "requests.py").write_text("")  # prepare.py imports it; the file is already here
    penv = dict(env, PYTHONPATH=str(shim))
    proc = subprocess.run(
        [sys.executable, "prepare.py"], cwd=data, env=penv, capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise Failed(f"nanoGPT's prepare.py failed: {last_line(proc.stderr)}")
    return work


def last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "(no output)"


def load_nanogpt(work: Path, ckpt: Path):
    """nanoGPT's model class from the copy, and its model loaded from ``ckpt``."""
    spec = importlib.util.spec_from_file_location("nanogpt_model", work / "model.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    state = torch.load(ckpt, map_location="cpu", weights_only=True)  # tensors and plain values
    with contextlib.redirect_stdout(io.StringIO()):  # it prints its parameter count
        model = module.GPT(module.GPTConfig(**state["model_args"]))
    weights = {k.removeprefix("_orig_mod."): v for k, v in state["model"].items()}
    model.load_state_dict(weights)
    return model.eval(), state


def run_nanogpt(work: Path, env: dict[str, str], max_iters: int, val: ValText) -> dict[str, Any]:
    eval_interval = min(EVAL_INTERVAL, max_iters)
    out_dir = work / "out-shakespeare-char"
    shutil.rmtree(out_dir, ignore_errors=True)
    cmd = [sys.executable, "train.py", *nanogpt_args(max_iters, eval_interval)]
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise Failed(f"nanoGPT's train.py failed: {last_line(proc.stderr)}")
    (work / "last_stdout.txt").write_text(proc.stdout)
    log = parse_nanogpt_log(proc.stdout)
    busy = nanogpt_busy(log.iters, eval_interval)
    model, state = load_nanogpt(work, out_dir / "ckpt.pt")
    total = distinct_parameters(model.parameters())
    position = model.transformer.wpe.weight.numel()
    check_printed_count(log.params_millions, total, position)
    chars = sorted(set((work / "data/shakespeare_char/input.txt").read_text()))  # as prepare.py
    stoi = {c: i for i, c in enumerate(chars)}
    x, y = val.windows(lambda s: [stoi[c] for c in s])
    # nanoGPT returns the logits of every position only when given targets (else the last)
    val_loss = window_loss(lambda xb: model(xb, xb)[0], x, y)
    own = log.evals[-1]
    return {
        "name": "nanoGPT",
        "steps": int(state["iter_num"]),
        "wall_s": wall,
        "tokens_per_s": tokens_per_second(log.seconds, TOKENS_PER_STEP, busy),
        "steady": steady_state(log.seconds, exclude=busy),
        "first_step_s": log.seconds[0],
        "parameters": total,
        "position_parameters": position,
        "printed_parameters_millions": log.params_millions,
        "val_loss_64": val_loss,
        "val_windows": int(x.shape[0]),
        "own_val_loss": own[2],
        "own_val_note": f"its estimate_loss at step {own[0]}: 20 random batches of 12 x 64",
        "attention": "torch scaled_dot_product_attention (is_causal)"
        if getattr(model.transformer.h[0].attn, "flash", False)
        else "nanoGPT's masked softmax",
        "step_seconds": log.seconds,
        "busy_steps": busy,
        "load_before": load_before,
        "load_after": os.getloadavg(),
        "command": cmd,
    }


def run_attnkit(
    config: str,
    corpus: Path,
    env: dict[str, str],
    run_dir: Path,
    max_iters: int | None,
    val: ValText,
) -> dict[str, Any]:
    import attnkit
    from attnkit.training import config as run_config

    shutil.rmtree(run_dir, ignore_errors=True)
    cmd = [
        sys.executable,
        "-m",
        "attnkit",
        "pretrain",
        "--config",
        config,
        "--data",
        str(corpus),
        "--out",
        str(run_dir),
        "--train.progress",
        "false",
    ]
    if max_iters is not None:  # a short run: every config stops there and evaluates there
        own = run_config.build(run_config.read_file(run_config.find_config(config)), []).train
        cmd += ["--train.max_iters", str(min(max_iters, own.max_iters))]
        cmd += ["--train.eval_interval", str(min(own.eval_interval, max_iters))]
        cmd += ["--train.warmup_iters", str(min(own.warmup_iters, warmup_for(max_iters)))]
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise Failed(f"attnkit pretrain --config {config} failed: {last_line(proc.stderr)}")
    summary = json.loads((run_dir / "summary.json").read_text())
    seconds, busy = summary["step_seconds"], summary["busy_steps"]
    tc = json.loads((run_dir / "run_config.json").read_text())["train"]
    tps = tokens_per_second(seconds, tc["batch_size"] * tc["block_size"] * tc["grad_accum"], busy)
    steps = sorted((run_dir / "checkpoints").glob("step-*"))
    model = attnkit.load(steps[-1])  # the last step's model, as nanoGPT's ckpt.pt
    tok = model.meta.tokenizer
    x, y = val.windows(lambda s: tok.encode(s).ids)
    val_loss = window_loss(lambda xb: model(xb).logits, x, y)
    position = sum(p.numel() for n, p in model.named_parameters() if n.startswith("embed.pos"))
    cfg = json.loads((run_dir / "run_config.json").read_text())
    return {
        "name": f"attnkit {config}",
        "steps": summary["iters"],
        "wall_s": wall,
        "tokens_per_s": tps,
        "steady": steady_state(seconds, exclude=busy),
        "first_step_s": summary["first_step_seconds"],
        "loop_tokens_per_s": summary["steady_tokens_per_second"],
        "parameters": distinct_parameters(model.parameters()),
        "summary_parameters": summary["parameters"],
        "position_parameters": position,
        "val_loss_64": val_loss,
        "val_windows": int(x.shape[0]),
        "own_val_loss": summary["val_loss"],
        "own_val_note": f"its evaluate at step {summary['iters']}: "
        f"{cfg['train']['eval_iters']} fixed batches of "
        f"{cfg['train']['batch_size']} x {cfg['train']['block_size']}",
        "attention": f"backend {cfg['model'].get('backend', 'auto')}",
        "config": cfg,
        "step_seconds": seconds,
        "busy_steps": busy,
        "load_before": load_before,
        "load_after": os.getloadavg(),
        "command": cmd,
    }


# --------------------------------------------------------------------------------------------
# the report
# --------------------------------------------------------------------------------------------
def environment(args: argparse.Namespace, repo: Path) -> dict[str, Any]:
    import numpy

    import attnkit

    def git(cwd: Path, *a: str) -> str | None:
        try:
            return subprocess.run(
                ["git", *a], cwd=cwd, capture_output=True, text=True, check=True
            ).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return None

    try:
        import tokenizers

        tokenizers_version = tokenizers.__version__
    except ImportError:
        tokenizers_version = None
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "tokenizers": tokenizers_version,
        "attnkit": getattr(attnkit, "__version__", None),
        "attnkit_commit": git(ROOT, "rev-parse", "HEAD"),
        "attnkit_dirty": bool(git(ROOT, "status", "--porcelain", "--untracked-files=no")),
        "nanogpt_commit": git(repo, "rev-parse", "HEAD"),
        "platform": platform.platform(),
        "libc": " ".join(platform.libc_ver()),
        "processor": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "affinity": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "threads": {
            "OMP_NUM_THREADS (both sides)": str(args.threads),
            "torch.get_num_threads (evaluator)": torch.get_num_threads(),
            "attnkit train.elementwise_threads": "per config (see each run's config)",
        },
        "openmp": {k: os.environ.get(k) for k in ENV_KEYS},
        "allocator": {
            "malloc": "the system's (glibc) malloc, its default settings, on both sides"
            if not any(k.startswith(ALLOCATOR_PREFIXES) for k in os.environ)
            else "as the environment below sets it, on both sides",
            "environment": {
                k: v for k, v in os.environ.items() if k.startswith(ALLOCATOR_PREFIXES)
            },
        },
        "compile_cache": "TORCHINDUCTOR_CACHE_DIR: a fresh empty directory per run "
        "(one warm classic run reuses an earlier run's)",
        "precision": "float32 on both sides (no autocast, no TF32 on a CPU)",
        "hf_attention_implementation": "none: no Hugging Face model in this comparison "
        "(each run's attention is in its row)",
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    keys = ("wall_s", "tokens_per_s", "val_loss_64", "own_val_loss", "first_step_s")
    return {k: spread([r[k] for r in rows]) for k in keys}


def print_table(groups: dict[str, list[dict[str, Any]]], stats: dict[str, dict], ref: str) -> None:
    head = (
        f"{'run':38s} {'params':>8s} {'steps':>5s} {'wall s':>7s} {'±':>5s} "
        f"{'tokens/s':>8s} {'±':>5s} {'x nGPT':>6s} {'1st step':>8s} "
        f"{'val@64':>7s} {'±':>5s} {'own val':>7s}"
    )
    print(head)
    ref_tps = stats[ref]["tokens_per_s"]["median"]
    for name, rows in groups.items():
        s = stats[name]
        print(
            f"{name:38s} {rows[0]['parameters']:8,d} {rows[0]['steps']:5d} "
            f"{s['wall_s']['median']:7.1f} {s['wall_s']['spread']:5.1%} "
            f"{s['tokens_per_s']['median']:8,.0f} {s['tokens_per_s']['spread']:5.1%} "
            f"{s['tokens_per_s']['median'] / ref_tps:6.2f} {s['first_step_s']['median']:7.2f}s "
            f"{s['val_loss_64']['median']:7.4f} {s['val_loss_64']['spread']:5.1%} "
            f"{s['own_val_loss']['median']:7.4f}"
        )
    print("(median over the rounds; ± is the spread (max - min) / median)")


class OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = OneLineParser(prog="nanogpt_side_by_side.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--nanogpt", required=True, type=Path, help="a nanoGPT checkout")
    ap.add_argument("--out", type=Path, default=Path("bench_out"), help="runs and the JSON")
    ap.add_argument("--threads", type=positive_int, default=2, help="CPU threads of every run")
    ap.add_argument("--rounds", type=positive_int, default=3, help="alternating rounds (3)")
    ap.add_argument(
        "--max-iters",
        type=positive_int,
        help=f"stop every run there (a short test; default: each recipe's own, {ITERS} for "
        f"nanoGPT and the classic recipe)",
    )
    ap.add_argument(
        "--configs",
        default=",".join(CONFIGS),
        help=f"comma-separated attnkit configs (default {','.join(CONFIGS)}; {CLASSIC} "
        f"is always run)",
    )
    ap.add_argument("--no-warm", action="store_true", help="skip the warm-cache classic run")
    args = ap.parse_args(argv)
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    bad = [c for c in configs if c not in CONFIGS]
    if bad:
        ap.error(f"--configs: unknown {bad}; expected a subset of {','.join(CONFIGS)}")
    args.configs = [CLASSIC] + [c for c in configs if c != CLASSIC]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return _main(args)
    except (Failed, ValueError) as e:
        print(f"nanogpt_side_by_side.py: {e}", file=sys.stderr)
        return 2


def _main(args: argparse.Namespace) -> int:
    sys.path.insert(0, str(ROOT / "src"))
    from attnkit.bench.report import write_json
    from attnkit.text.corpora import load_corpus, split_text, tinyshakespeare_path

    repo = args.nanogpt.resolve()
    check_checkout(repo)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    corpus = tinyshakespeare_path()
    _, held_out = split_text(load_corpus(str(corpus)).text, 0.1)  # attnkit's val split
    val = ValText(held_out)
    base = {k: v for k, v in os.environ.items() if k != "TORCHINDUCTOR_CACHE_DIR"}
    base.update(OMP_NUM_THREADS=str(args.threads), PYTHONUNBUFFERED="1")
    caches = out / "compile-caches"
    shutil.rmtree(caches, ignore_errors=True)

    def env_for(run: str) -> dict[str, str]:
        d = caches / run
        d.mkdir(parents=True)
        return dict(base, TORCHINDUCTOR_CACHE_DIR=str(d))

    work = prepare_nanogpt(repo, corpus, out / "nanogpt-work", base)
    max_iters = args.max_iters or ITERS
    policy = os.environ.get("OMP_WAIT_POLICY", "unset")
    print(
        f"corpus {corpus}; {args.threads} threads, OMP_WAIT_POLICY {policy}; {args.rounds} "
        f"rounds of nanoGPT then {', '.join(args.configs)}; {max_iters} nanoGPT steps; "
        f"load average {tuple(round(x, 2) for x in os.getloadavg())}"
    )
    groups: dict[str, list[dict[str, Any]]] = {"nanoGPT": []}
    groups.update({f"attnkit {c}": [] for c in args.configs})
    ratios: list[float] = []
    for r in range(args.rounds):
        row = run_nanogpt(work, env_for(f"r{r}-nanogpt"), max_iters, val)
        groups["nanoGPT"].append(row)
        _say(r, row)
        for config in args.configs:
            row = run_attnkit(
                config,
                corpus,
                env_for(f"r{r}-{config}"),
                out / f"r{r}-{config}",
                args.max_iters,
                val,
            )
            groups[f"attnkit {config}"].append(row)
            _say(r, row)
        ratios.append(
            groups[f"attnkit {CLASSIC}"][-1]["tokens_per_s"] / groups["nanoGPT"][-1]["tokens_per_s"]
        )
    warm = None
    if not args.no_warm:  # the classic recipe again, with the last cold run's compile cache
        env = dict(base, TORCHINDUCTOR_CACHE_DIR=str(caches / f"r{args.rounds - 1}-{CLASSIC}"))
        warm = run_attnkit(CLASSIC, corpus, env, out / f"warm-{CLASSIC}", args.max_iters, val)
        warm["name"] += " (warm cache)"
        _say(args.rounds, warm)

    ng, classic = groups["nanoGPT"], groups[f"attnkit {CLASSIC}"]
    for a, b in zip(ng, classic):
        check_same_parameters(a["parameters"], b["parameters"])
    stats = {name: summarize(rows) for name, rows in groups.items()}
    print()
    print_table(groups, stats, "nanoGPT")
    ratio = spread(ratios)
    ref_wall = [row["wall_s"] for row in ng]
    print(
        f"\nparameters: nanoGPT {ng[0]['parameters']:,} (it prints "
        f"{ng[0]['printed_parameters_millions']:.2f}M, without its {ng[0]['position_parameters']:,} "
        f"position weights), attnkit classic {classic[0]['parameters']:,}: equal"
    )
    print(
        f"val@64: both final models, one evaluator, {ng[0]['val_windows']:,} windows of "
        f"{BLOCK} tokens of the same held-out text; own val: each side's own estimate"
    )
    print(
        f"tokens/s: {TOKENS_PER_STEP} tokens per step over the median step, after {SKIP} "
        f"warm-up steps, evaluation steps left out on both sides "
        f"({ng[0]['steady']['steps']} and {classic[0]['steady']['steps']} steps counted)"
    )
    cold = stats[f"attnkit {CLASSIC}"]["first_step_s"]["median"]
    steady_step = classic[0]["steady"]["median_s"]
    compile_line = f"classic: first step (cold compile) {cold:.1f} s"
    if warm is not None:
        compile_line += (
            f"; with a warm cache {warm['first_step_s']:.1f} s, wall {warm['wall_s']:.1f} s, "
            f"{warm['tokens_per_s']:,.0f} tokens/s"
        )
    print(compile_line + f" (a steady step is {steady_step * 1e3:.1f} ms)")

    per_round = ", ".join(f"{x:.3f}" for x in ratios)
    ours = stats[f"attnkit {CLASSIC}"]["val_loss_64"]["median"]
    theirs = stats["nanoGPT"]["val_loss_64"]["median"]
    checks = [
        (
            f"classic vs nanoGPT steady tokens/s, median of the per-round ratios >= {TARGET_RATIO}",
            f"{ratio['median']:.3f}x (rounds {per_round}; spread {ratio['spread']:.1%})",
            ratio["median"] >= TARGET_RATIO,
        ),
        (
            "classic: the same val@64 as nanoGPT's (within 0.03)",
            f"{ours:.4f} vs {theirs:.4f}",
            abs(ours - theirs) <= 0.03,
        ),
    ]
    if f"attnkit {DEFAULT}" in groups:
        d = groups[f"attnkit {DEFAULT}"]
        worst = max(row["wall_s"] / w for row, w in zip(d, ref_wall))
        v = stats[f"attnkit {DEFAULT}"]["val_loss_64"]["median"]
        checks.append(
            (
                "gpt-shakespeare-char: val@64 <= 1.89 in <= 0.7x nanoGPT's wall (every round)",
                f"val {v:.4f}, at most {worst:.2f}x",
                v <= 1.89 and worst <= 0.7,
            )
        )
    if f"attnkit {BEST}" in groups:
        b = groups[f"attnkit {BEST}"]
        worst = max(row["wall_s"] / w for row, w in zip(b, ref_wall))
        v = stats[f"attnkit {BEST}"]["val_loss_64"]["median"]
        vals = ", ".join(f"{row['val_loss_64']:.4f}" for row in b)
        checks.append(
            (
                f"best recipe: val@64 <= {BEST_TARGET} within nanoGPT's wall of the same round "
                f"(cold compile included)",
                f"val {v:.4f} (rounds {vals}), wall at most {worst:.2f}x nanoGPT's",
                v <= BEST_TARGET and worst <= 1.0,
            )
        )
    print()
    for what, measured, ok in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {what}: {measured}")
    print(f"load average after {tuple(round(x, 2) for x in os.getloadavg())}")
    path = write_json(
        out / "nanogpt_side_by_side.json",
        {
            "environment": environment(args, repo),
            "method": {
                "step_time": "wall-clock between the ends of consecutive optimizer steps",
                "tokens_per_s": f"{TOKENS_PER_STEP} / median step seconds, the first {SKIP} "
                "steps and those holding an evaluation or checkpoint left out, both sides",
                "val_loss_64": f"mean cross entropy over every non-overlapping {BLOCK}-token "
                "window of attnkit's validation text (inside nanoGPT's), final models",
                "rounds": args.rounds,
                "max_iters": max_iters,
                "nanogpt_args": nanogpt_args(max_iters, min(EVAL_INTERVAL, max_iters)),
            },
            "summary": stats,
            "tokens_per_s_ratio": {"rounds": ratios, **ratio},
            "checks": [{"target": w, "measured": m, "ok": o} for w, m, o in checks],
            "runs": groups,
            "warm": warm,
        },
    )
    print(f"wrote {path}")
    return 0


def _say(r: int, row: dict[str, Any]) -> None:
    print(
        f"  round {r + 1}: {row['name']}: wall {row['wall_s']:.1f} s, "
        f"{row['tokens_per_s']:,.0f} tokens/s (median step {row['steady']['median_s'] * 1e3:.2f} ms), "
        f"first step {row['first_step_s']:.2f} s, val@64 {row['val_loss_64']:.4f} "
        f"(own {row['own_val_loss']:.4f}), load {tuple(round(x, 2) for x in row['load_after'])}",
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(main())
