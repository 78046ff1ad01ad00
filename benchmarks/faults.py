"""Faults: a tiny pre-training run killed with SIGKILL again and again, resumed each time with
``--resume``, must end on the weights of a run that was never interrupted, bit for bit.

    python benchmarks/faults.py [--kills 20] [--torchrun-kills 10] [--seed 0]

Two parts, each through the real command line in child processes (one torch thread, CPU):

1. ``attnkit pretrain`` of a tiny character-level GPT (1 layer, width 32, dropout 0.1: the
   random state matters) for ``--steps`` steps, a checkpoint every 10 steps (3 kept) and an
   evaluation every 20. It is killed ``--kills`` times. Each of the named kill points of
   :mod:`attnkit._util.faults` (inside a checkpoint write: ``after-weights``,
   ``after-optimizer``, ``before-manifest``, ``after-manifest``, ``in-prune``; and
   ``in-eval``) is used at least once, on a seeded random occurrence; the other kills are
   sent from outside at seeded random moments (a random step, then a random delay of up to
   0.1 s; some during start-up, before training begins).
2. The same with ``torchrun --nproc_per_node 2`` (gloo): each time one rank, chosen at
   random, is killed (rank 0 at a checkpoint point or a random moment, rank 1 in evaluation
   or at a random moment); torchrun then stops the other.

What is printed, and what each figure means:

* **kills**: SIGKILLs that ended a run before it finished (a planned kill the run did not live
  to see is not counted, and the script fails).
* **resumes that matched**: runs started with ``--resume`` after a kill whose checkpoints
  (weights, optimizer state, RNG and data position) are all equal, bit for bit, to those the
  uninterrupted run wrote at the same steps, and which resumed from the newest complete
  checkpoint; the last one also ends on the uninterrupted run's final weights. A resume killed
  again before writing a checkpoint counts as matched only when the next one, restarting from
  the same checkpoint, matches.
* **checkpoints lost**: after a kill, a checkpoint whose manifest was complete before the kill
  and that is not intact after it: a present ``manifest.json`` whose files do not match it, or
  one of the ``keep`` newest complete checkpoints that is gone (complete: seen complete while
  the run went, or with its manifest there after the kill, the manifest being written last;
  pruning only removes older ones). Must be 0.
* **final weights**: every tensor of the last checkpoint against the uninterrupted run's.
* **wall time** of each part, reference run included.

Exit status 1 when a figure misses its target. ``tests/integration/test_faults.py`` runs a
short version (one kill at each named point).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
import tiny_run  # noqa: E402 (benchmarks/tiny_run.py, beside this script)

sys.path.insert(0, str(ROOT / "src"))

from attnkit.training.checkpointing import STATE_NAME, verify_checkpoint  # noqa: E402

CHECKPOINT_POINTS = ("after-weights", "after-optimizer", "before-manifest", "after-manifest")
NAMED = (*CHECKPOINT_POINTS, "in-prune", "in-eval")
CKPT_EVERY, EVAL_EVERY, KEEP = 10, 20, 3
TIMEOUT = 300.0  # seconds any one child may take

TINY_GPT = [
    *tiny_run.TINY_GPT,
    "--model.dropout",
    "0.1",
    "--train.log_interval",
    "1",
    "--train.eval_interval",
    str(EVAL_EVERY),
    "--train.checkpoint_interval",
    str(CKPT_EVERY),
]


@dataclass(frozen=True)
class Kill:
    """One planned kill: at a named point (``"before-manifest@2"``) or from outside
    (``point=None``) once the run has logged ``step`` (-1: during start-up, after ``delay``)."""

    point: str | None = None
    step: int = 0
    delay: float = 0.0
    rank: int = 0

    def __str__(self) -> str:
        where = self.point or ("start-up" if self.step < 0 else f"step {self.step}")
        return f"{where} (rank {self.rank})"


@dataclass
class Report:
    kills: int = 0
    resumes: int = 0
    matched: int = 0
    lost: list[str] = field(default_factory=list)
    final_equal: bool = False
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)

    def ok(self, planned: int) -> bool:
        return (
            self.kills == planned
            and self.matched == self.resumes == planned
            and not self.lost
            and self.final_equal
            and not self.problems
        )


# --------------------------------------------------------------------------------------------
# running
# --------------------------------------------------------------------------------------------
class Runner:
    """Starts ``attnkit pretrain`` (or torchrun of it) in ``out`` with the tiny run's arguments."""

    def __init__(self, corpus: Path, cache: Path, steps: int, nproc: int = 1):
        self.corpus, self.cache, self.steps, self.nproc = corpus, cache, steps, nproc

    def argv(self, out: Path, resume: bool, keep: int = KEEP) -> list[str]:
        head = [sys.executable]
        if self.nproc > 1:
            head += ["-m", "torch.distributed.run", "--standalone"]
            head += ["--nproc_per_node", str(self.nproc), "--monitor-interval", "0.1"]
        args = ["-m", "attnkit", "pretrain", *TINY_GPT, "--data", str(self.corpus)]
        args += ["--out", str(out), "--train.max_iters", str(self.steps)]
        args += ["--train.keep_checkpoints", str(keep)]
        if self.nproc > 1:  # half the batch per process: the global batch of one process
            args += ["--train.batch_size", str(8 // self.nproc)]
        return head + args + (["--resume"] if resume else [])

    def env(self, fault: str | None = None, rank: int | None = None) -> dict[str, str]:
        e = dict(os.environ, ATTNKIT_CACHE=str(self.cache), OMP_NUM_THREADS="1")
        e["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + e.get("PYTHONPATH", "")
        for name in ("ATTNKIT_FAULT", "ATTNKIT_FAULT_RANK"):
            e.pop(name, None)
        if fault:
            e["ATTNKIT_FAULT"] = fault
            if rank is not None:
                e["ATTNKIT_FAULT_RANK"] = str(rank)
        return e

    def start(self, out: Path, resume: bool, fault: str | None = None, rank: int = 0, keep=KEEP):
        return subprocess.Popen(
            self.argv(out, resume, keep),
            env=self.env(fault, rank if self.nproc > 1 else None),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )


def wait(proc: subprocess.Popen, timeout: float = TIMEOUT) -> tuple[int, str]:
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        raise RuntimeError(f"a run took over {timeout:.0f} s; stderr: {err[-2000:]}") from None
    return proc.returncode, err


def logged_step(out: Path) -> int:
    """The last step ``metrics.jsonl`` shows (0 before any)."""
    try:
        lines = (out / "metrics.jsonl").read_text().splitlines()
    except OSError:
        return 0
    for line in reversed(lines):
        try:
            return int(json.loads(line)["step"])
        except (ValueError, KeyError, TypeError):
            continue
    return 0


def worker_pids(proc: subprocess.Popen) -> dict[int, int]:
    """{rank: pid} of torchrun's worker processes (its children that have RANK set)."""
    found: dict[int, int] = {}
    try:
        kids = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    except OSError:
        return found
    for pid in map(int, kids):
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        for item in env:
            if item.startswith(b"RANK="):
                found[int(item[5:])] = pid
    return found


def _mtime(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return 0


def kill_from_outside(
    proc: subprocess.Popen, kill: Kill, out: Path, nproc: int, before: int
) -> bool:
    """Send SIGKILL at the planned moment; False when the run ended first. ``before``: the
    modification time of metrics.jsonl before the start (the rows of the killed run are not
    this run's until it has rewritten the file)."""
    t0 = time.monotonic()
    while proc.poll() is None:
        due = (
            time.monotonic() - t0 >= kill.delay
            if kill.step < 0
            else _mtime(out / "metrics.jsonl") != before and logged_step(out) >= kill.step
        )
        if due:
            if kill.step >= 0:
                time.sleep(kill.delay)
            if nproc == 1:
                target = proc.pid
            else:
                pids = worker_pids(proc)
                if kill.rank not in pids:
                    if kill.step < 0:  # workers not started yet
                        time.sleep(0.02)
                        continue
                    return False
                target = pids[kill.rank]
            try:
                os.kill(target, signal.SIGKILL)
            except ProcessLookupError:
                return False
            return True
        time.sleep(0.005)
    return False


# --------------------------------------------------------------------------------------------
# checking
# --------------------------------------------------------------------------------------------
def complete(out: Path) -> dict[int, str | None]:
    """{step: None if intact else why} for every checkpoint in ``out`` with a manifest."""
    found: dict[int, str | None] = {}
    root = out / "checkpoints"
    if not root.is_dir():
        return found
    for d in sorted(root.glob("step-*")):
        if (d / "manifest.json").exists():
            found[int(d.name.split("-")[1])] = verify_checkpoint(d)
    return found


def _equal(a: Any, b: Any, where: str, skip: tuple[str, ...] = ()) -> str | None:
    """None when ``a`` and ``b`` are equal to the bit (tensors with torch.equal), else where not."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        same = (
            isinstance(a, torch.Tensor)
            and isinstance(b, torch.Tensor)
            and a.dtype == b.dtype
            and a.shape == b.shape
            and torch.equal(a, b)
        )
        return None if same else where
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) - set(skip) != set(b) - set(skip):
            return f"{where}: keys {sorted(set(a) ^ set(b))}"
        for k in a:
            if k not in skip:
                bad = _equal(a[k], b[k], f"{where}.{k}")
                if bad:
                    return bad
        return None
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return f"{where}: lengths {len(a)} and {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            bad = _equal(x, y, f"{where}[{i}]")
            if bad:
                return bad
        return None
    return None if a == b else f"{where}: {a!r} != {b!r}"


def same_checkpoint(a: Path, b: Path) -> str | None:
    """None when checkpoints ``a`` and ``b`` hold bit-identical weights and state (the wall
    time they record aside), else the first difference."""
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    bad = _equal(wa, wb, "weights")
    if bad:
        return bad
    sa = torch.load(a / STATE_NAME, map_location="cpu", weights_only=True)
    sb = torch.load(b / STATE_NAME, map_location="cpu", weights_only=True)
    return _equal(sa, sb, "state", skip=("elapsed",))


def _resumed_from(err: str, expected: int) -> str | None:
    """None when the run's stderr says it resumed from step ``expected`` (0: from scratch)."""
    m = re.search(r"resumed from \S+ \(step (\d+)\)", err)
    if m is None and "no complete checkpoint" not in err:
        if "attnkit: error" in err:
            return "failed: " + err.strip().splitlines()[-1]
        return None  # killed before it got that far
    got = int(m.group(1)) if m else 0
    if got == expected:
        return None
    if m is None and "attnkit: error" in err:
        return "failed: " + err.strip().splitlines()[-1]
    return f"resumed from step {got}, expected the newest complete checkpoint, step {expected}"


def step_dir(out: Path, step: int) -> Path:
    return out / "checkpoints" / f"step-{step:06d}"


# --------------------------------------------------------------------------------------------
# the experiment
# --------------------------------------------------------------------------------------------
def reference(runner: Runner, out: Path) -> float:
    """The uninterrupted run (every checkpoint kept); returns seconds to its first step."""
    proc = runner.start(out, resume=False, keep=0)
    t0 = time.monotonic()
    first = None
    while proc.poll() is None and time.monotonic() - t0 < TIMEOUT:
        if first is None and logged_step(out) > 0:
            first = time.monotonic() - t0
        time.sleep(0.01)
    rc, err = wait(proc)
    if rc != 0:
        raise RuntimeError(f"the uninterrupted run failed (status {rc}): {err[-2000:]}")
    return first if first is not None else 1.0


def plan(n: int, nproc: int, steps: int, startup: float, rng: random.Random) -> list[Kill]:
    """``n`` kills: each named point once (those a process of that rank passes), the rest at
    random moments; in a seeded random order, with ``in-prune`` after enough checkpoints."""
    kills: list[Kill] = []
    if nproc == 1:
        named = [Kill(p) for p in NAMED]
    else:
        named = [Kill(p, rank=0) for p in CHECKPOINT_POINTS[:2]] + [Kill("in-eval", rank=1)]
    named = named[:n]
    while len(kills) + len(named) < n:
        rank = rng.randrange(nproc)
        if rng.random() < 0.15:
            kills.append(Kill(step=-1, delay=rng.uniform(0.3, max(0.4, startup)), rank=rank))
        else:
            kills.append(Kill(step=0, delay=rng.uniform(0.0, 0.1), rank=rank))
    kills += named
    rng.shuffle(kills)
    prune = [k for k in kills if k.point == "in-prune"]
    if prune:  # pruning starts once more than KEEP checkpoints exist: not first
        kills.remove(prune[0])
        kills.insert(max(len(kills) // 2, min(len(kills), 4)), prune[0])
    return kills


def faulted(
    runner: Runner, ref: Path, out: Path, kills: Sequence[Kill], rng: random.Random, say=print
) -> Report:
    r = Report()
    seen: set[int] = set()  # checkpoints seen complete and intact
    compared: dict[int, bool] = {}  # step -> equal to the reference
    pending = 0  # resumes since the last one that wrote a checkpoint
    resumed = False
    for i, planned in enumerate(kills):
        base = max((s for s, why in complete(out).items() if why is None), default=0)
        left_ckpts = (runner.steps - base) // CKPT_EVERY
        kill = planned
        if planned.point is not None:  # a seeded occurrence that this run still reaches
            if planned.point == "in-eval":
                reach = (runner.steps - base) // EVAL_EVERY
            else:
                reach = left_ckpts - 1
            nth = rng.randint(1, max(1, min(2, reach)))
            kill = Kill(f"{planned.point}@{nth}", rank=planned.rank)
            proc = runner.start(out, resumed, fault=kill.point, rank=kill.rank)
            delivered = True
        else:
            if planned.step >= 0:
                target = min(base + rng.randint(1, 2 * CKPT_EVERY), runner.steps - 10)
                kill = Kill(step=target, delay=planned.delay, rank=planned.rank)
            before = _mtime(out / "metrics.jsonl")
            proc = runner.start(out, resumed)
            delivered = kill_from_outside(proc, kill, out, runner.nproc, before)
        # watch the checkpoints while it runs (those completed before the kill)
        while proc.poll() is None:
            seen |= {s for s, why in complete(out).items() if why is None}
            time.sleep(0.05)
        rc, err = wait(proc)
        killed = rc == -signal.SIGKILL if runner.nproc == 1 else rc != 0
        if not (delivered and killed):
            r.problems.append(f"kill {i + 1} at {kill} did not end the run (status {rc})")
            say(f"  kill {i + 1:2d} at {kill}: NOT DELIVERED (status {rc}) {err[-500:]}")
            break
        r.kills += 1
        if resumed:
            r.resumes += 1
            pending += 1
            problem = _resumed_from(err, base)
            if problem:
                r.problems.append(f"kill {i + 1}: {problem}")
        now = complete(out)
        # the KEEP newest complete ones: seen before the kill, or with a manifest after it
        # (written last, so complete before the kill); pruning only removes older ones
        newest = sorted(seen | {s for s, why in now.items() if why is None})[-KEEP:]
        lost = [s for s, why in now.items() if why is not None]
        lost += [s for s in newest if s not in now]
        r.lost += [f"step {s} after kill {i + 1}" for s in lost]
        wrote = False
        for s, why in now.items():
            if why is None and s not in compared:
                diff = same_checkpoint(step_dir(out, s), step_dir(ref, s))
                compared[s] = diff is None
                wrote = True
                if diff:
                    r.problems.append(f"checkpoint step {s} differs from the reference: {diff}")
        seen |= {s for s, why in now.items() if why is None}
        if wrote and resumed:
            if all(compared.values()):
                r.matched += pending
            pending = 0
        latest = max(seen, default=0)
        where = str(kill) if runner.nproc > 1 else str(kill).rsplit(" (rank", 1)[0]
        say(
            f"  kill {r.kills:2d} at {where:28s} newest complete checkpoint: step {latest:3d}"
            f"{'  LOST: ' + str(lost) if lost else ''}"
        )
        resumed = True
    # the last resume runs to the end
    base = max((s for s, why in complete(out).items() if why is None), default=0)
    proc = runner.start(out, resume=True)
    rc, err = wait(proc)
    r.resumes += 1
    pending += 1
    problem = _resumed_from(err, base)
    if problem:
        r.problems.append(f"the last resume: {problem}")
    if rc != 0:
        r.problems.append(f"the last resume failed (status {rc}): {err[-1000:]}")
        return r
    now = complete(out)
    ok = True
    for s, why in now.items():
        if why is not None:
            r.lost.append(f"step {s} at the end")
            continue
        if s not in compared:
            diff = same_checkpoint(step_dir(out, s), step_dir(ref, s))
            compared[s] = diff is None
            if diff:
                r.problems.append(f"checkpoint step {s} differs from the reference: {diff}")
        ok = ok and compared[s]
    final = step_dir(out, runner.steps)
    if final.is_dir():
        a, b = (
            load_file(final / "model.safetensors"),
            load_file(step_dir(ref, runner.steps) / "model.safetensors"),
        )
        r.final_equal = _equal(a, b, "weights") is None
        best_a, best_b = load_file(out / "model.safetensors"), load_file(ref / "model.safetensors")
        if _equal(best_a, best_b, "best") is not None:
            r.problems.append("the best model (out/model.safetensors) differs from the reference")
    else:
        r.problems.append(f"no final checkpoint {final}")
    if ok and all(compared.values()):
        r.matched += pending
    return r


def part(
    name: str,
    corpus: Path,
    cache: Path,
    root: Path,
    steps: int,
    n: int,
    nproc: int,
    seed: int,
    say=print,
) -> Report:
    """One part: the reference run, then ``n`` kills and resumes; prints its figures."""
    t0 = time.perf_counter()
    runner = Runner(corpus, cache, steps, nproc)
    ref = root / f"{name}-reference"
    startup = reference(runner, ref)
    rng = random.Random(seed)
    kills = plan(n, nproc, steps, startup, rng)
    say(f"{name}: {steps} steps, {n} kills planned (seed {seed})")
    r = faulted(runner, ref, root / f"{name}-faulted", kills, rng, say)
    r.seconds = time.perf_counter() - t0
    say(
        f"{name}: kills {r.kills}/{n}, resumes that matched {r.matched}/{r.resumes}, "
        f"checkpoints lost {len(r.lost)}, final weights "
        f"{'bit-identical' if r.final_equal else 'DIFFERENT'}, wall time {r.seconds:.1f} s"
    )
    for p in r.problems + r.lost:
        say(f"  problem: {p}")
    return r


def corpus_file(root: Path, chars: int = 200_000) -> Path:
    from attnkit.text.corpora import tinyshakespeare_path

    path = root / "corpus.txt"
    path.write_text(tinyshakespeare_path().read_text()[:chars])
    return path


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kills", type=int, default=20, help="kills of the single-process run")
    p.add_argument("--torchrun-kills", type=int, default=10, help="kills of the 2-process run")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--torchrun-steps", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dir", help="working folder (default: a temporary one, removed after)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="attnkit-faults-") as tmp:
        root = Path(args.dir or tmp)
        root.mkdir(parents=True, exist_ok=True)
        corpus, cache = corpus_file(root), root / "cache"
        t0 = time.perf_counter()
        reports = []
        if args.kills:
            one = part("single", corpus, cache, root, args.steps, args.kills, 1, args.seed)
            reports.append((one, args.kills))
        if args.torchrun_kills:
            two = part(
                "torchrun",
                corpus,
                cache,
                root,
                args.torchrun_steps,
                args.torchrun_kills,
                2,
                args.seed + 1,
            )
            reports.append((two, args.torchrun_kills))
        print(f"total wall time {time.perf_counter() - t0:.1f} s")
    return 0 if all(r.ok(n) for r, n in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
