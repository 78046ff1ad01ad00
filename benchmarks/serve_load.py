"""Load on ``attnkit serve``: throughput and latency of /v1/embeddings next to a plain FastAPI
endpoint that calls sentence-transformers once per request, then an overload phase.

    python benchmarks/serve_load.py                 # the figures (about 3 minutes on 2 cores)
    python benchmarks/serve_load.py --quick         # a few seconds of each phase (a smoke run)

Both servers run as child processes on a free loopback port, one at a time, serving MiniLM
(all-MiniLM-L6-v2, from its package) with the same torch threads:

1. Throughput: ``--lines`` real lines (non-empty lines of the complete works of Shakespeare,
   the corpus ``attnkit pretrain`` uses) cut into requests of 1-16 lines (seeded), sent by
   ``--clients`` concurrent threads, each with its own ``openai`` client (vectors asked for
   as base64 float32, which the peer answers too). Printed per server:
   lines/s and requests/s over the whole run, and the p50/p99 latency of a request; then the
   ratio of the two throughputs. The embeddings attnkit served are compared with
   ``attnkit embed --file`` of the same lines (largest absolute difference printed).
2. Overload (attnkit only): requests arrive at ``--overload`` times the request rate phase 1
   sustained, open-loop (they keep coming whether answered or not), for
   ``--overload-seconds``. Every answer must be 200, 429 or 503 (a connection error or any
   other status fails the check); the server's resident memory (``VmRSS``) is sampled each
   second, and its slope over the last ``--overload-seconds`` is printed in MiB per minute:
   the first ``--overload-warmup`` seconds (default 20) at the same rate come before them, while
   the clients open their connections (each held open by keep-alive, a few MiB in all) and the
   allocator settles; their answers are checked too. Afterwards one
   normal request must be answered 200 with the same vectors as before.

Exit status 1 when a check fails (an unexpected status, memory growing more than
``--max-rss-slope`` MiB/min, fitted to each 10 s's lowest reading; embeddings that differ
from ``attnkit embed``; or no answer after the overload).
"""

from __future__ import annotations

import argparse
import base64
import json
import random
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

MIB = 1024 * 1024


# --------------------------------------------------------------------------------------------
# the peer: a plain FastAPI endpoint, sentence-transformers once per request
# --------------------------------------------------------------------------------------------
def run_baseline_server(port: int) -> None:
    """``python serve_load.py --baseline-server PORT``: the peer, in its own process."""
    import uvicorn
    from fastapi import FastAPI
    from sentence_transformers import SentenceTransformer

    from attnkit.checkpoints import resolve

    st = SentenceTransformer(str(resolve("minilm")), device="cpu")
    app = FastAPI()

    @app.post("/v1/embeddings")
    def embeddings(body: dict) -> dict:  # a plain (threadpool) endpoint, one encode per request
        texts = body["input"]
        texts = [texts] if isinstance(texts, str) else texts
        vecs = st.encode(texts, normalize_embeddings=True, convert_to_numpy=True)
        if body.get("encoding_format") == "base64":
            items = [base64.b64encode(v.astype("<f4").tobytes()).decode() for v in vecs]
        else:
            items = [v.tolist() for v in vecs]
        return {
            "object": "list",
            "data": [
                {"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(items)
            ],
            "model": body["model"],
            "usage": {"prompt_tokens": 0, "total_tokens": 0},
        }

    print(f"baseline: http://127.0.0.1:{port}/v1", file=sys.stderr, flush=True)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def start_child(argv: list[str], pattern: str) -> tuple[subprocess.Popen, str]:
    """A server child process and its base URL, read from the first line of its stderr."""
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            raise RuntimeError(f"{argv[:4]} exited before serving (status {proc.wait()})")
        found = re.search(pattern, line)
        if found:
            threading.Thread(target=proc.stderr.read, daemon=True).start()  # keep draining
            return proc, found.group(1)
    proc.kill()
    raise RuntimeError(f"{argv[:4]} did not start in time")


def stop_child(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def shakespeare_lines(n: int) -> list[str]:
    from attnkit.text.corpora import load_corpus

    lines = [ln.strip() for ln in load_corpus("shakespeare").text.splitlines()]
    lines = [ln for ln in lines if len(ln) >= 8]
    if len(lines) < n:
        raise SystemExit(f"the corpus has {len(lines)} usable lines; asked for {n}")
    return lines[:n]


def requests_of(lines: list[str], seed: int) -> list[tuple[int, int]]:
    """(start, stop) of requests of 1-16 consecutive lines covering ``lines``."""
    rng = random.Random(seed)
    out, i = [], 0
    while i < len(lines):
        k = rng.randint(1, 16)
        out.append((i, min(i + k, len(lines))))
        i += k
    return out


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


class Clients:
    """One ``openai`` client per thread."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.local = threading.local()

    def get(self):
        import openai

        if not hasattr(self.local, "client"):
            self.local.client = openai.OpenAI(
                base_url=self.url, api_key="bench", max_retries=0, timeout=120
            )
        return self.local.client


def throughput(url: str, lines: list[str], clients: int, seed: int) -> dict:
    """Phase 1 against one server: all requests by ``clients`` threads."""
    pool = Clients(url)
    reqs = requests_of(lines, seed)
    vecs: list[np.ndarray | None] = [None] * len(lines)
    latencies: list[float] = []
    lock = threading.Lock()

    def one(span: tuple[int, int]) -> None:
        a, b = span
        t0 = time.perf_counter()
        r = pool.get().embeddings.create(model="minilm", input=lines[a:b], encoding_format="base64")
        dt = time.perf_counter() - t0
        with lock:
            latencies.append(dt)
            for i, d in enumerate(r.data):
                vecs[a + i] = np.frombuffer(base64.b64decode(d.embedding), dtype="<f4")

    warm = pool.get()
    warm.embeddings.create(model="minilm", input=lines[:16], encoding_format="base64")
    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as ex:
        list(ex.map(one, reqs))
    wall = time.perf_counter() - t0
    return {
        "lines_per_s": len(lines) / wall,
        "requests_per_s": len(reqs) / wall,
        "p50_ms": 1000 * percentile(latencies, 50),
        "p99_ms": 1000 * percentile(latencies, 99),
        "requests": len(reqs),
        "wall_s": wall,
        "vectors": np.stack(vecs),  # type: ignore[arg-type]
    }


def overload(
    url: str, pid: int, lines: list[str], rate: float, seconds: float, warmup: float = 0.0
) -> dict:
    """Phase 2: open-loop arrivals at ``rate`` per second for ``warmup + seconds``; the
    memory slope is fitted to the last ``seconds``."""
    measured, seconds = seconds, warmup + seconds
    import openai

    pool = Clients(url)
    statuses: Counter[str] = Counter()
    lock = threading.Lock()
    rng = random.Random(1)

    def one(a: int, b: int) -> None:
        try:
            pool.get().embeddings.create(model="minilm", input=lines[a:b], encoding_format="base64")
            code = "200"
        except openai.APIStatusError as e:
            code = str(e.status_code)
        except openai.APIConnectionError as e:
            code = f"connection error ({type(e).__name__}: {e.__cause__!r})"
        with lock:
            statuses[code] += 1

    samples: list[tuple[float, float]] = []
    stop = threading.Event()

    def sample() -> None:
        t0 = time.monotonic()
        while not stop.wait(1.0):
            samples.append((time.monotonic() - t0, rss_mib(pid)))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    sent = 0
    t0 = time.monotonic()
    with ThreadPoolExecutor(512) as ex:
        while (now := time.monotonic() - t0) < seconds:
            due = int(now * rate) + 1
            while sent < due:
                a = rng.randrange(0, len(lines) - 16)
                ex.submit(one, a, a + rng.randint(1, 16))
                sent += 1
            time.sleep(max(0.0, (sent / rate) - (time.monotonic() - t0)))
    stop.set()
    sampler.join()
    tail = [(t, m) for t, m in samples if t >= seconds - measured]
    slope = (
        float(np.polyfit([t for t, _ in tail], [m for _, m in tail], 1)[0]) * 60
        if len(tail) >= 3
        else 0.0
    )
    # the floor: the lowest reading of each 10 s. A leak raises it; a batch that briefly needs
    # 30 MiB more (and gives it back) does not, though it can tilt a fit of every reading
    floors: dict[int, tuple[float, float]] = {}
    for t, m in tail:
        w = int((t - (seconds - measured)) // 10)
        if w not in floors or m < floors[w][1]:
            floors[w] = (10 * w + 5, m)
    floor_slope = (
        float(np.polyfit([t for t, _ in floors.values()], [m for _, m in floors.values()], 1)[0])
        * 60
        if len(floors) >= 3
        else 0.0
    )
    return {
        "sent": sent,
        "rate": rate,
        "statuses": dict(statuses),
        "rss_first": samples[0][1] if samples else float("nan"),
        "rss_last": samples[-1][1] if samples else float("nan"),
        "rss_max": max((m for _, m in samples), default=float("nan")),
        "rss_slope_mib_per_min": slope,
        "rss_floor_slope_mib_per_min": floor_slope,
        "samples": samples,
    }


# --------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lines", type=int, default=4096)
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--overload", type=float, default=4.0, help="times the sustained rate")
    p.add_argument("--overload-seconds", type=float, default=60.0)
    p.add_argument("--overload-warmup", type=float, default=20.0, help="seconds before those")
    p.add_argument("--max-rss-slope", type=float, default=5.0, help="MiB per minute")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="256 lines, 8 clients, 5 s overload")
    p.add_argument("--baseline-server", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.baseline_server is not None:
        run_baseline_server(args.baseline_server)
        return 0
    if args.quick:
        args.lines, args.clients, args.overload_seconds, args.overload_warmup = 256, 8, 5.0, 1.0

    lines = shakespeare_lines(args.lines)
    failures: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "lines.txt"
        src.write_text("\n".join(lines) + "\n", encoding="utf-8")
        ref_path = Path(tmp) / "ref.npy"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "attnkit",
                "embed",
                "--file",
                str(src),
                "--model",
                "minilm",
                "--out",
                str(ref_path),
            ],
            check=True,
            stderr=subprocess.DEVNULL,
        )
        ref = np.load(ref_path)

    print(f"{len(lines)} lines of Shakespeare, requests of 1-16 lines, {args.clients} clients")
    results = {}
    port = free_port()
    base, base_url = start_child(
        [sys.executable, __file__, "--baseline-server", str(port)], r"baseline: (\S+)"
    )
    try:
        results["fastapi + sentence-transformers"] = throughput(
            base_url, lines, args.clients, args.seed
        )
    finally:
        stop_child(base)
    server, url = start_child(
        [
            sys.executable,
            "-m",
            "attnkit",
            "serve",
            "--model",
            "minilm",
            "--port",
            "0",
            "--queue-size",
            "64",
        ],
        r"attnkit serve: (\S+)",
    )
    try:
        results["attnkit serve"] = throughput(url, lines, args.clients, args.seed)
        print(f"{'server':34} {'lines/s':>9} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}")
        for name, r in results.items():
            print(
                f"{name:34} {r['lines_per_s']:9.1f} {r['requests_per_s']:8.1f} {r['p50_ms']:8.1f} {r['p99_ms']:8.1f}"
            )
        ours, peer = results["attnkit serve"], results["fastapi + sentence-transformers"]
        print(f"throughput ratio attnkit / peer: {ours['lines_per_s'] / peer['lines_per_s']:.2f}x")
        diff = float(np.abs(ours["vectors"] - ref).max())
        print(f"largest |attnkit serve - attnkit embed|: {diff:.2e}")
        if diff > 1e-5:
            failures.append(f"served embeddings differ from attnkit embed by {diff:.2e}")

        rate = args.overload * ours["requests_per_s"]
        print(
            f"overload: {rate:.1f} requests/s ({args.overload:g}x) for {args.overload_warmup:g} s, "
            f"then {args.overload_seconds:g} s measured"
        )
        o = overload(url, server.pid, lines, rate, args.overload_seconds, args.overload_warmup)
        print(f"  RSS every 5 s: {[round(m, 1) for _, m in o['samples'][::5]]}")
        print(f"  sent {o['sent']}; answers: {json.dumps(o['statuses'], sort_keys=True)}")
        print(
            f"  server RSS MiB: first {o['rss_first']:.1f}, last {o['rss_last']:.1f}, "
            f"max {o['rss_max']:.1f}; slope over the last {args.overload_seconds:g} s "
            f"{o['rss_slope_mib_per_min']:+.2f} MiB/min (every reading), "
            f"{o['rss_floor_slope_mib_per_min']:+.2f} MiB/min (the floor: each 10 s's lowest)"
        )
        bad = {k: v for k, v in o["statuses"].items() if k not in ("200", "429", "503")}
        if bad:
            failures.append(f"answers other than 200/429/503 under overload: {bad}")
        if sum(o["statuses"].values()) != o["sent"]:
            failures.append(f"{o['sent'] - sum(o['statuses'].values())} requests got no answer")
        if args.overload_seconds < 30:
            print("  (the memory slope is checked from 30 s of overload on)")
        elif o["rss_floor_slope_mib_per_min"] > args.max_rss_slope:
            failures.append(
                f"the RSS floor grew {o['rss_floor_slope_mib_per_min']:.2f} MiB/min under overload"
            )
        import openai

        after = openai.OpenAI(base_url=url, api_key="bench", max_retries=0, timeout=120)
        r = after.embeddings.create(model="minilm", input=lines[:16], encoding_format="float")
        again = np.array([d.embedding for d in r.data], dtype=np.float32)
        diff = float(np.abs(again - ref[:16]).max())
        print(f"after the overload: 200, largest difference from attnkit embed {diff:.2e}")
        if diff > 1e-5:
            failures.append("after the overload the vectors changed")
    finally:
        stop_child(server)
    for f in failures:
        print(f"FAIL: {f}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
