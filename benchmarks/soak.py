"""Soak and load: long runs that must keep memory flat and outputs exact.

    python benchmarks/soak.py [--steps 10000] [--embed-lines 100000] [--classify-lines 10000]

Four checks, each through the real command line in a child process (one torch thread):

1. ``attnkit pretrain`` of a tiny character-level GPT (1 layer, width 32) for ``--steps``
   steps, evaluating and writing a checkpoint every 1,000 steps. The child's resident memory
   (``VmRSS`` in ``/proc/PID/status``) is read each time ``metrics.jsonl`` shows another
   ``--sample-every`` steps; after a warm-up (the first fifth of the steps) the least-squares
   slope is printed in MiB per 1,000 steps (target: under 1).
2. ``attnkit embed`` fed ``--embed-lines`` lines on stdin, and 3. ``attnkit classify`` fed
   ``--classify-lines``, both on a tiny BERT. A writer thread keeps at most ``--max-lag``
   lines ahead of the outputs read back, through pipes shrunk to one page, so a command that
   read all its input before answering stalls and fails the check instead of passing it. The
   child's memory is read every ``--sample-every-lines`` outputs: printed are the peak
   (``VmHWM``), the slope after the first fifth of the lines (MiB per 10,000 lines), and that
   each input got exactly one output, in order.
4. Two ``attnkit pretrain`` runs (different seeds, different directories) at the same time,
   sharing one fresh cache folder, against the same two runs done alone one after the other:
   every tensor of both final checkpoints must be equal, bit for bit.

Nothing here is timed; the figures are memory and equality. Exit status 1 when a check fails.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
import tiny_run  # noqa: E402 (benchmarks/tiny_run.py, beside this script)

MIB = 1024 * 1024
PAGE = 4096

TINY_GPT = tiny_run.TINY_GPT

WORDS = ["the", "bat", "he", "swung", "flew", "out", "of", "cave", "ball"]


# --------------------------------------------------------------------------------------------
# measuring
# --------------------------------------------------------------------------------------------
def proc_memory(pid: int) -> tuple[int, int] | None:
    """(VmRSS, VmHWM) of process ``pid`` in bytes, from ``/proc/PID/status``; None once it is
    gone (or a zombie, which has no memory fields)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) * 1024  # reported in kB
    if len(fields) < 2:
        return None
    return fields["VmRSS"], fields["VmHWM"]


def slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """The least-squares slope of ``ys`` against ``xs`` (at least two distinct xs)."""
    if len(xs) != len(ys) or len(set(xs)) < 2:
        raise ValueError(f"slope needs two or more distinct x values, got {list(xs)}")
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx


def child_env(cache: Path) -> dict[str, str]:
    env = dict(os.environ, ATTNKIT_CACHE=str(cache), OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    return env


def attnkit_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "attnkit", *args]


def corpus_file(work: Path) -> Path:
    """The first 200k characters of tinyshakespeare (a local development file)."""
    from attnkit.text.corpora import tinyshakespeare_path

    path = work / "shakespeare200k.txt"
    if not path.is_file():
        path.write_text(tinyshakespeare_path().read_text()[:200_000])
    return path


# --------------------------------------------------------------------------------------------
# 1. training
# --------------------------------------------------------------------------------------------
@dataclass
class TrainingSoak:
    steps: int
    parameters: int
    samples: list[tuple[int, int]]  # (step, VmRSS bytes)
    peak: int  # VmHWM bytes
    warmup: int
    interval: int
    slope_mib_per_1000: float
    wall_seconds: float

    def report(self) -> str:
        kept = [(s, r) for s, r in self.samples if s >= self.warmup]
        return (
            f"training soak: {self.steps} steps of a {self.parameters:,}-parameter GPT "
            f"(attnkit pretrain, evaluation and checkpoint every {self.interval:,} steps), RSS read "
            f"{len(self.samples)} times\n"
            f"  RSS at step {kept[0][0]}: {kept[0][1] / MIB:.1f} MiB; at step {kept[-1][0]}: "
            f"{kept[-1][1] / MIB:.1f} MiB; peak (VmHWM) {self.peak / MIB:.1f} MiB\n"
            f"  slope after a {self.warmup}-step warm-up: {self.slope_mib_per_1000:+.3f} MiB "
            f"per 1,000 steps (target < 1); {self.wall_seconds:.0f} s"
        )


def soak_training(
    work: Path,
    steps: int = 10_000,
    sample_every: int = 250,
    interval: int = 1000,
    warmup: int | None = None,
) -> TrainingSoak:
    """``steps`` steps of the tiny GPT in a child process, its RSS read every
    ``sample_every`` steps (as ``metrics.jsonl`` shows them); evaluation and a checkpoint
    every ``interval`` steps."""
    if steps % sample_every:
        raise ValueError(f"steps={steps} must be a multiple of sample_every={sample_every}")
    warmup = steps // 5 if warmup is None else warmup
    out = work / "soak-train"
    cmd = attnkit_command(
        "pretrain",
        "--data",
        str(corpus_file(work)),
        "--out",
        str(out),
        *TINY_GPT,
        "--train.max_iters",
        str(steps),
        "--train.log_interval",
        str(sample_every),
        "--train.eval_interval",
        str(interval),
        "--train.checkpoint_interval",
        str(interval),
        "--train.keep_checkpoints",
        "2",
    )
    t0 = time.perf_counter()
    samples: list[tuple[int, int]] = []
    peak = 0
    with open(work / "soak-train.log", "w") as log:
        proc = subprocess.Popen(cmd, env=child_env(work / "cache"), stdout=log, stderr=log)
        metrics, seen = out / "metrics.jsonl", 0
        while True:
            done = proc.poll() is not None
            step = _last_train_step(metrics)
            if step is not None and step > seen and not done:
                mem = proc_memory(proc.pid)
                if mem is not None:
                    samples.append((step, mem[0]))
                    peak = max(peak, mem[1])
                    seen = step
            if done:
                break
            time.sleep(0.01)
    if proc.returncode != 0:
        raise RuntimeError(
            f"pretrain exited with {proc.returncode}: {(work / 'soak-train.log').read_text()[-2000:]}"
        )
    summary = json.loads((out / "summary.json").read_text())
    kept = [(s, r) for s, r in samples if s >= warmup]
    if len(kept) < 2:
        raise RuntimeError(f"only {len(kept)} RSS samples after the warm-up: {samples}")
    per_step = slope([s for s, _ in kept], [r for _, r in kept])
    return TrainingSoak(
        steps=int(summary["iters"]),
        parameters=int(summary["parameters"]),
        samples=samples,
        peak=peak,
        warmup=warmup,
        interval=interval,
        slope_mib_per_1000=per_step * 1000 / MIB,
        wall_seconds=time.perf_counter() - t0,
    )


def _last_train_step(metrics: Path) -> int | None:
    try:
        lines = metrics.read_text().splitlines()
    except FileNotFoundError:
        return None
    for line in reversed(lines):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a line being written
            continue
        if row.get("split") == "train":
            return int(row["step"])
    return None


# --------------------------------------------------------------------------------------------
# 2, 3. streaming commands
# --------------------------------------------------------------------------------------------
def word_tokenizer():  # type: ignore[no-untyped-def]
    """A WordPiece tokenizer of letters and the words of ``WORDS``."""
    from tokenizers.implementations import BertWordPieceTokenizer

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"abcdefghijklmnopqrstuvwxyz"]
    vocab += ["##" + c for c in "abcdefghijklmnopqrstuvwxyz"] + WORDS
    return BertWordPieceTokenizer({w: i for i, w in enumerate(vocab)}, lowercase=True)._tokenizer


def tiny_models(work: Path) -> tuple[Path, Path]:
    """A tiny BERT encoder (mean pooling) and a two-class classifier made from it, saved as
    attnkit checkpoints: (encoder directory, classifier directory)."""
    import torch

    import attnkit
    from attnkit.models import build_model, get_preset
    from attnkit.tasks.classification.model import classifier_from

    torch.manual_seed(0)
    cfg = get_preset("tiny-bert", vocab_size=80, d_model=32, n_heads=4, pooling="mean")
    encoder = work / "tiny-bert"
    attnkit.save(build_model(cfg).eval(), encoder, tokenizer=word_tokenizer())
    classifier = work / "tiny-classifier"
    attnkit.save(classifier_from(encoder, ["bat", "ball"]).eval(), classifier)
    return encoder, classifier


def soak_lines(n: int, seed: int = 0) -> list[str]:
    """``n`` distinct lines of 3 to 20 words (the line number spelled in letters keeps each
    one unique)."""
    rng = random.Random(seed)
    lines = []
    for i in range(n):
        tag = "".join(chr(ord("a") + int(d)) for d in str(i))
        lines.append(" ".join([tag, *rng.choices(WORDS, k=rng.randint(2, 19))]))
    return lines


@dataclass
class StreamSoak:
    command: str
    lines: int
    outputs: int
    in_order: bool
    max_lag: int
    samples: list[tuple[int, int]] = field(default_factory=list)  # (outputs read, VmRSS)
    peak: int = 0
    slope_mib_per_10k: float = 0.0
    warmup: int = 0
    wall_seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.outputs == self.lines and self.in_order

    def report(self) -> str:
        kept = [(k, r) for k, r in self.samples if k >= self.warmup]
        return (
            f"{self.command} stream: {self.lines} lines in on stdin, {self.outputs} outputs, "
            f"{'each in its input order' if self.in_order else 'OUT OF ORDER'}; input kept at "
            f"most {self.max_lag} lines ahead of the output\n"
            f"  RSS after {kept[0][0]} outputs: {kept[0][1] / MIB:.1f} MiB; after "
            f"{kept[-1][0]}: {kept[-1][1] / MIB:.1f} MiB; peak (VmHWM) {self.peak / MIB:.1f} MiB\n"
            f"  slope after the first {self.warmup} lines: {self.slope_mib_per_10k:+.3f} MiB per "
            f"10,000 lines; {self.wall_seconds:.0f} s"
        )


def soak_stream(
    work: Path,
    cmd: Sequence[str],
    lines: Sequence[str],
    text_of: Callable[[str], str],
    max_lag: int = 2000,
    sample_every: int = 1000,
    warmup: float = 0.2,
    stall_seconds: float = 120.0,
) -> StreamSoak:
    """Feed ``lines`` to the command ``cmd`` on stdin, never more than ``max_lag`` lines ahead
    of the outputs read back; ``text_of(output line)`` is the input text it answers. The
    slope is fitted to the samples after the first ``warmup`` share of the lines."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        list(cmd),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=child_env(work / "cache"),
    )
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    for pipe in (proc.stdin, proc.stdout):
        fcntl.fcntl(pipe.fileno(), fcntl.F_SETPIPE_SZ, PAGE)  # little room to hide input in
    name = cmd[3] if cmd[1:3] == ["-m", "attnkit"] else Path(cmd[0]).name
    result = StreamSoak(name, len(lines), 0, True, max_lag)
    read = threading.Condition()
    stalled: list[str] = []

    def write() -> None:
        stdin = proc.stdin
        assert stdin is not None
        try:
            for i, line in enumerate(lines):
                ready = lambda i=i: result.outputs >= i - max_lag or proc.poll() is not None  # noqa: E731
                if not ready():
                    stdin.flush()  # every written line reaches the child before we wait
                    with read:
                        if not read.wait_for(ready, timeout=stall_seconds):
                            stalled.append(
                                f"{i} lines written but only {result.outputs} outputs came "
                                f"back within {stall_seconds:.0f} s: the command does not "
                                "stream"
                            )
                            proc.kill()
                            return
                stdin.write(line.encode() + b"\n")
            stdin.close()
        except BrokenPipeError:  # the child died; its status and stderr say why
            pass

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    errors = bytearray()
    drain = threading.Thread(target=lambda: errors.extend(proc.stderr.read()), daemon=True)
    drain.start()
    for raw in proc.stdout:
        k = result.outputs
        if k >= len(lines) or text_of(raw.decode().rstrip("\n")) != lines[k]:
            result.in_order = False
        with read:
            result.outputs = k + 1
            read.notify_all()
        if result.outputs % sample_every == 0:
            mem = proc_memory(proc.pid)
            if mem is not None:
                result.samples.append((result.outputs, mem[0]))
                result.peak = max(result.peak, mem[1])
    status = proc.wait()
    with read:
        read.notify_all()  # a writer waiting for outputs sees that the child has gone
    writer.join()
    drain.join()
    if stalled:
        raise RuntimeError(stalled[0])
    if status != 0:
        raise RuntimeError(f"{name} exited with {status}: {errors.decode()[-2000:]}")
    result.warmup = int(len(lines) * warmup)
    kept = [(k, r) for k, r in result.samples if k >= result.warmup]
    if len(kept) < 2:
        raise RuntimeError(f"only {len(kept)} RSS samples after the warm-up: {result.samples}")
    result.slope_mib_per_10k = slope([k for k, _ in kept], [r for _, r in kept]) * 10_000 / MIB
    result.wall_seconds = time.perf_counter() - t0
    return result


def embed_text(line: str) -> str:
    return json.loads(line)["text"]


def classify_text(line: str) -> str:
    return line.split("\t", 2)[2]


# --------------------------------------------------------------------------------------------
# 4. two runs at once
# --------------------------------------------------------------------------------------------
@dataclass
class ConcurrentRuns:
    steps: int
    tensors: int
    equal: dict[str, bool]  # run name -> its concurrent result equals its lone result
    runs_differ: bool  # the two seeds' results differ (a swap would be seen)

    @property
    def ok(self) -> bool:
        return all(self.equal.values()) and self.runs_differ

    def report(self) -> str:
        same = ", ".join(f"{k}: {'equal' if v else 'DIFFERENT'}" for k, v in self.equal.items())
        return (
            f"two pretrain runs at once ({self.steps} steps each, seeds 1 and 2, one shared "
            f"fresh cache) against each run alone: {same} ({self.tensors} tensors each, bit "
            f"for bit; the two runs differ from each other: {self.runs_differ})"
        )


def concurrent_runs(work: Path, steps: int = 400) -> ConcurrentRuns:
    """Two seeded runs alone, one after the other, then both at once into new directories."""
    from safetensors.torch import load_file

    corpus = corpus_file(work)

    def start(name: str, seed: int, cache: Path) -> subprocess.Popen[bytes]:
        cmd = attnkit_command(
            "pretrain",
            "--data",
            str(corpus),
            "--out",
            str(work / name),
            *TINY_GPT,
            "--model.dropout",
            "0.1",
            "--train.seed",
            str(seed),
            "--train.max_iters",
            str(steps),
            "--train.eval_interval",
            str(steps // 2),
            "--train.checkpoint_interval",
            str(steps // 2),
        )
        return subprocess.Popen(
            cmd, env=child_env(cache), stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )

    def finish(proc: subprocess.Popen[bytes]) -> None:
        output, _ = proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"pretrain exited with {proc.returncode}: {output[-2000:]!r}")

    for name, seed in (("alone-1", 1), ("alone-2", 2)):
        finish(start(name, seed, work / "cache-alone"))
    both = [
        start(name, seed, work / "cache-shared")
        for name, seed in (("at-once-1", 1), ("at-once-2", 2))
    ]
    for proc in both:
        finish(proc)

    def weights(name: str) -> dict:
        final = work / name / "checkpoints" / f"step-{steps:06d}" / "model.safetensors"
        return {"final": load_file(final), "best": load_file(work / name / "model.safetensors")}

    def same(a: dict, b: dict) -> bool:
        return all(
            a[k].keys() == b[k].keys() and all(a[k][t].equal(b[k][t]) for t in a[k]) for k in a
        )

    lone = {seed: weights(f"alone-{seed}") for seed in (1, 2)}
    both_w = {seed: weights(f"at-once-{seed}") for seed in (1, 2)}
    return ConcurrentRuns(
        steps=steps,
        tensors=len(lone[1]["final"]),
        equal={f"seed {s}": same(lone[s], both_w[s]) for s in (1, 2)},
        runs_differ=not same(lone[1], lone[2]),
    )


# --------------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=10_000)
    p.add_argument("--sample-every", type=int, default=250, help="steps between RSS readings")
    p.add_argument("--embed-lines", type=int, default=100_000)
    p.add_argument("--classify-lines", type=int, default=10_000)
    p.add_argument("--sample-every-lines", type=int, default=1000)
    p.add_argument("--max-lag", type=int, default=2000, help="lines written ahead of outputs")
    p.add_argument("--concurrent-steps", type=int, default=1000)
    p.add_argument("--work", help="folder for the runs (default: a temporary one, removed)")
    p.add_argument("--json", help="also write the figures to this JSON file")
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="attnkit-soak-") as tmp:
        work = Path(a.work) if a.work else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        failures = []
        train = soak_training(work, a.steps, a.sample_every)
        print(train.report(), flush=True)
        if train.slope_mib_per_1000 >= 1.0:
            failures.append("training RSS slope")
        encoder, classifier = tiny_models(work)
        streams = []
        for args, n, text_of in (
            (["embed", "--model", str(encoder)], a.embed_lines, embed_text),
            (["classify", "--model", str(classifier)], a.classify_lines, classify_text),
        ):
            cmd = attnkit_command(*args)
            s = soak_stream(work, cmd, soak_lines(n), text_of, a.max_lag, a.sample_every_lines)
            print(s.report(), flush=True)
            streams.append(s)
            if not s.ok:
                failures.append(f"{s.command}: one output per input, in order")
        runs = concurrent_runs(work, a.concurrent_steps)
        print(runs.report(), flush=True)
        if not runs.ok:
            failures.append("two runs at once")
        if a.json:
            figures = {
                "training": {
                    "steps": train.steps,
                    "slope_mib_per_1000_steps": train.slope_mib_per_1000,
                    "peak_mib": train.peak / MIB,
                    "samples": train.samples,
                },
                "streams": [
                    {
                        "command": s.command,
                        "lines": s.lines,
                        "outputs": s.outputs,
                        "in_order": s.in_order,
                        "peak_mib": s.peak / MIB,
                        "slope_mib_per_10k_lines": s.slope_mib_per_10k,
                        "samples": s.samples,
                    }
                    for s in streams
                ],
                "concurrent": {"steps": runs.steps, "equal": runs.equal},
            }
            Path(a.json).write_text(json.dumps(figures, indent=2) + "\n")
    if failures:
        print("FAILED: " + "; ".join(failures), flush=True)
        return 1
    print("all soak checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
