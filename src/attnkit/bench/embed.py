"""``attnkit bench embed``: MiniLM sentence-embedding throughput, attnkit vs sentence-transformers.

Both embed the same real lines (the first ``--lines`` lines longer than ``--min-chars``
characters of the Shakespeare text) with the same batch size in the same process. On a shared
machine the load changes from second to second, so the lines are cut into ``--interleave``
slices and both sides embed each slice back to back (order alternating); each side's time is
its sum over the slices, and with ``--rounds`` the best round counts. attnkit is
measured in float32 and with bfloat16 autocast; each figure is printed next to
sentence-transformers' float32 throughput with the smallest per-sentence cosine similarity
between the two sets of embeddings.

Where attnkit's speed comes from: sequences are sorted by token count (sentence-transformers
sorts by characters), so a batch of 64 holds sequences of one length and needs no padding
and no mask, and attention takes SDPA's unmasked path; q/k/v are one fused projection.

``--paired-model`` adds a load-robust figure for the model alone: attnkit's model and
transformers' ``BertModel`` run the same length-sorted batches, alternating batch by batch.

bfloat16 is fast only on CPUs with native bf16 arithmetic (AVX-512 BF16 or AMX); elsewhere
PyTorch emulates it and it is slower than float32. The report says which kind of CPU it ran
on, and measures bf16 on ``--bf16-lines`` lines there (default 512) to keep the run short.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from attnkit.bench.common import Table, environment, write_json

TARGETS = {"float32": (1.3, 0.99999), "bfloat16": (2.5, 0.999)}  # (x sentence-transformers, cosine)
CORPUS_NAME = "tinyshakespeare.txt"


def default_corpus() -> Path | None:
    """../shared/data/tinyshakespeare.txt next to the repository (or the working directory)."""
    repo = Path(__file__).resolve().parents[3]
    for base in (repo, Path.cwd()):
        p = base.parent / "shared" / "data" / CORPUS_NAME
        if p.is_file():
            return p
    return None


def read_lines(path: str | os.PathLike, n: int, min_chars: int = 20) -> list[str]:
    """The first ``n`` stripped lines of ``path`` longer than ``min_chars`` characters."""
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if len(line) > min_chars:
                out.append(line)
                if len(out) == n:
                    break
    return out


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float((a * b).sum(axis=1).min())


def _timed(fn) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def _paired_model_times(enc, lines: list[str], bs: int) -> dict[str, float]:
    """attnkit's model vs transformers' BertModel on identical batches, alternating per batch."""
    from transformers import AutoModel

    hf = AutoModel.from_pretrained(enc.model.source).eval()
    ids_list = enc.tokenize(lines)
    order = sorted(range(len(ids_list)), key=lambda i: -len(ids_list[i]))
    ours = theirs = 0.0
    n = 0
    with torch.inference_mode():
        for n, start in enumerate(range(0, len(order), bs)):
            ids, mask = enc._batch([ids_list[i] for i in order[start : start + bs]])
            full = mask if mask is not None else torch.ones_like(ids)
            pair = [
                (True, lambda: enc.model.hidden_states(ids, attention_mask=mask)),
                (False, lambda: hf(input_ids=ids, attention_mask=full)),
            ]
            for is_ours, fn in pair if n % 2 else pair[::-1]:
                t, _ = _timed(fn)
                if is_ours:
                    ours += t
                else:
                    theirs += t
    return {"batches": n + 1, "attnkit_s": ours, "transformers_s": theirs}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from attnkit.cli import positive_int

    parser.add_argument(
        "--lines", type=positive_int, default=4096, help="sentences to embed (default 4096)"
    )
    parser.add_argument(
        "--min-chars", type=int, default=20, help="use lines longer than this (default 20)"
    )
    parser.add_argument("--batch-size", type=positive_int, default=64)
    parser.add_argument("--corpus", help=f"text file (default: ../shared/data/{CORPUS_NAME})")
    parser.add_argument(
        "--model", default="minilm", help="model name or directory (default minilm)"
    )
    parser.add_argument(
        "--rounds", type=positive_int, default=1, help="timed rounds per side (best counts)"
    )
    parser.add_argument(
        "--interleave",
        type=positive_int,
        default=1,
        help="slices embedded by both sides back to back, against load noise (default 1: "
        "one call per side with all lines, as a user would make)",
    )
    parser.add_argument(
        "--bf16",
        choices=("auto", "on", "off"),
        default="auto",
        help="measure bf16 autocast: on, off, or auto (on; fewer lines without native bf16)",
    )
    parser.add_argument(
        "--bf16-lines",
        type=positive_int,
        help="lines for the bf16 run (default: --lines with native bf16, else 512)",
    )
    parser.add_argument(
        "--paired-model",
        action="store_true",
        help="also time attnkit's model and transformers' BertModel on the same "
        "length-sorted batches, batch by batch (model cost alone, robust to load)",
    )
    parser.add_argument("--threads", type=positive_int, help="torch threads (default: as is)")
    parser.add_argument(
        "--out", default="bench_out", help="directory for embed.json (default bench_out)"
    )


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.threads:
        torch.set_num_threads(args.threads)
    corpus = Path(args.corpus) if args.corpus else default_corpus()
    if corpus is None or not corpus.is_file():
        raise ValueError(
            f"corpus {str(corpus or '../shared/data/' + CORPUS_NAME)!r} not found; "
            f"expected a text file (give --corpus PATH)"
        )
    lines = read_lines(corpus, args.lines, args.min_chars)
    if len(lines) < args.lines:
        print(f"note: {corpus} has only {len(lines)} lines longer than {args.min_chars} characters")

    from sentence_transformers import SentenceTransformer

    from attnkit.checkpoints.io import resolve
    from attnkit.tasks.sentence import Encoder

    load_before = os.getloadavg()
    enc = Encoder.load(args.model)
    st = SentenceTransformer(str(resolve(args.model)), device="cpu")
    bs = args.batch_size
    warm = lines[: 2 * bs]
    st.encode(warm, batch_size=bs)
    enc.encode(warm, batch_size=bs)

    # Paired measurement: the lines are cut into --interleave slices and each slice is embedded
    # by both sides back to back (order alternating), so a burst of load from other processes
    # hits both alike. Each side's time is the sum over slices; the best round counts.
    k = min(args.interleave, len(lines))
    bounds = [len(lines) * i // k for i in range(k + 1)]
    slices = [lines[a:b] for a, b in zip(bounds, bounds[1:])]
    st_times, ours_times = [], []
    ref_parts: list[np.ndarray] = []
    our_parts: list[np.ndarray] = []
    for r in range(args.rounds):
        st_t = ours_t = 0.0
        ref_parts, our_parts = [], []
        for i, part in enumerate(slices):
            sides = [
                ("st", lambda: st.encode(part, batch_size=bs, convert_to_numpy=True)),
                ("ours", lambda: enc.encode(part, batch_size=bs)),
            ]
            if (r + i) % 2:
                sides.reverse()
            for name, fn in sides:
                t, out = _timed(fn)
                if name == "st":
                    st_t += t
                    ref_parts.append(out)
                else:
                    ours_t += t
                    our_parts.append(out)
        st_times.append(st_t)
        ours_times.append(ours_t)
    ref, ours = np.concatenate(ref_parts), np.concatenate(our_parts)
    st_rate = len(lines) / min(st_times)
    rows: list[dict[str, Any]] = [
        dict(
            impl="sentence-transformers",
            dtype="float32",
            lines=len(lines),
            sentences_per_s=st_rate,
            speedup=1.0,
            min_cosine=1.0,
        )
    ]
    rows.append(
        dict(
            impl="attnkit",
            dtype="float32",
            lines=len(lines),
            sentences_per_s=len(lines) / min(ours_times),
            min_cosine=min_cosine(ref, ours),
        )
    )

    from attnkit.tasks.sentence import cpu_has_native_bf16

    native = cpu_has_native_bf16()
    if args.bf16 != "off":
        n16 = args.bf16_lines or (
            len(lines) if native or args.bf16 == "on" else min(512, len(lines))
        )
        sub = lines[:n16]
        enc.autocast_dtype = torch.bfloat16
        enc.encode(warm[:bs], batch_size=bs)
        t, out16 = _timed(lambda: enc.encode(sub, batch_size=bs))
        enc.autocast_dtype = None
        rows.append(
            dict(
                impl="attnkit",
                dtype="bfloat16",
                lines=n16,
                sentences_per_s=n16 / t,
                min_cosine=min_cosine(ref[:n16], out16),
            )
        )
    paired = _paired_model_times(enc, lines, bs) if args.paired_model else None
    load_after = os.getloadavg()

    table = Table(
        ["impl", "dtype", "lines", "sentences/s", "vs ST fp32", "min cosine", "target", "met"],
        title=f"MiniLM embeddings, batch {bs}, {torch.get_num_threads()} threads, "
        f"{len(lines)} lines of {corpus.name} in {k} interleaved slices, "
        f"best of {args.rounds} round(s)",
    )
    for row in rows:
        row["speedup"] = row["sentences_per_s"] / st_rate
        target = TARGETS.get(row["dtype"]) if row["impl"] == "attnkit" else None
        row["target"] = None if target is None else f">= {target[0]}x, cos >= {target[1]}"
        row["met"] = (
            None
            if target is None
            else bool(row["speedup"] >= target[0] and row["min_cosine"] >= target[1])
        )
        table.add_row(
            row["impl"],
            row["dtype"],
            row["lines"],
            f"{row['sentences_per_s']:.1f}",
            f"{row['speedup']:.2f}x",
            f"{row['min_cosine']:.7f}",
            row["target"] or "-",
            "-" if row["met"] is None else ("yes" if row["met"] else "NO"),
        )
    print(table)
    print(
        f"load average (1, 5, 15 min): before {tuple(round(x, 2) for x in load_before)}, after "
        f"{tuple(round(x, 2) for x in load_after)} on {os.cpu_count()} CPUs; native bf16: "
        f"{'yes' if native else 'no (bf16 is emulated and slower than fp32 here)'}"
    )
    if paired is not None:
        print(
            f"model only, same {paired['batches']} length-sorted batches, timed batch by batch: "
            f"attnkit {paired['attnkit_s']:.2f} s, transformers BertModel {paired['transformers_s']:.2f} s "
            f"({paired['transformers_s'] / paired['attnkit_s']:.2f}x)"
        )
    out = Path(args.out)
    write_json(
        out / "embed.json",
        {
            "rows": rows,
            "environment": environment(),
            "corpus": str(corpus),
            "batch_size": bs,
            "interleave": k,
            "rounds": args.rounds,
            "load_before": load_before,
            "load_after": load_after,
            "native_bf16": native,
            "paired_model": paired,
        },
    )
    print(f"wrote {out / 'embed.json'}")
    return 0
