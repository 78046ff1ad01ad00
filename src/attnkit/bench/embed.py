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

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from attnkit.bench.harness import environment, in_turns, load_text, shared_data_file, timed
from attnkit.bench.report import Report, Table, write_json

if TYPE_CHECKING:  # pragma: no cover - for static tools only
    from attnkit.tasks.sentence import Encoder

logger = logging.getLogger(__name__)

TARGETS = {"float32": (1.3, 0.99999), "bfloat16": (2.5, 0.999)}  # (x sentence-transformers, cosine)
CORPUS_NAME = "tinyshakespeare.txt"


@dataclass(frozen=True)
class EmbedSettings:
    """One run of ``attnkit bench embed``."""

    lines: int = 4096
    min_chars: int = 20
    batch_size: int = 64
    corpus: Path | None = None  # None: ../shared/data/tinyshakespeare.txt
    model: str = "minilm"
    rounds: int = 1
    interleave: int = 1
    bf16: str = "auto"  # "auto", "on" or "off"
    bf16_lines: int | None = None
    paired_model: bool = False
    out: Path = Path("bench_out")

    def __post_init__(self) -> None:
        if self.bf16 not in ("auto", "on", "off"):
            raise ValueError(f"bf16 must be 'auto', 'on' or 'off', got {self.bf16!r}")


def default_corpus() -> Path | None:
    """../shared/data/tinyshakespeare.txt next to the repository (or the working directory)."""
    return shared_data_file(CORPUS_NAME)


def read_lines(path: str | os.PathLike[str], n: int, min_chars: int = 20) -> list[str]:
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


def _paired_model_times(enc: Encoder, lines: list[str], bs: int) -> dict[str, float]:
    """attnkit's model vs transformers' BertModel on identical batches, alternating per batch."""
    from transformers import AutoModel

    from attnkit.text.batching import pad_batch

    source = enc.model.meta.source
    if source is None:
        raise ValueError(
            "--paired-model needs the model's source directory (model.meta.source), got None"
        )
    hf = AutoModel.from_pretrained(source).eval()
    ids_list = enc.tokenize(lines)
    order = sorted(range(len(ids_list)), key=lambda i: -len(ids_list[i]))
    ours = theirs = 0.0
    n = 0
    with torch.inference_mode():
        for n, start in enumerate(range(0, len(order), bs)):
            ids, mask = pad_batch([ids_list[i] for i in order[start : start + bs]], enc.pad_id)
            full = mask if mask is not None else torch.ones_like(ids)
            pair = [
                (
                    True,
                    lambda ids=ids, mask=mask: enc.model.hidden_states(ids, attention_mask=mask),
                ),
                (False, lambda ids=ids, full=full: hf(input_ids=ids, attention_mask=full)),
            ]
            for is_ours, fn in in_turns(pair, n + 1):
                t, _ = timed(fn)
                if is_ours:
                    ours += t
                else:
                    theirs += t
    return {"batches": n + 1, "attnkit_s": ours, "transformers_s": theirs}


def run(args: EmbedSettings) -> Report:
    """Both sides on the same lines, in turns (see the module docstring); writes embed.json."""
    corpus = Path(args.corpus) if args.corpus else default_corpus()
    if corpus is None or not corpus.is_file():
        raise ValueError(
            f"corpus {str(corpus or '../shared/data/' + CORPUS_NAME)!r} not found; "
            f"expected a text file (give --corpus PATH)"
        )
    lines = read_lines(corpus, args.lines, args.min_chars)
    if len(lines) < args.lines:
        logger.warning(
            f"note: {corpus} has only {len(lines)} lines longer than {args.min_chars} characters"
        )

    from sentence_transformers import SentenceTransformer

    from attnkit.checkpoints import resolve
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
                ("st", lambda part=part: st.encode(part, batch_size=bs, convert_to_numpy=True)),
                ("ours", lambda part=part: enc.encode(part, batch_size=bs)),
            ]
            for name, fn in in_turns(sides, r + i):
                t, out = timed(fn)
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
        t, out16 = timed(lambda: enc.encode(sub, batch_size=bs))
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
    text = [
        table.render(),
        f"{load_text(load_before, load_after)}; native bf16: "
        f"{'yes' if native else 'no (bf16 is emulated and slower than fp32 here)'}",
    ]
    if paired is not None:
        text.append(
            f"model only, same {paired['batches']} length-sorted batches, timed batch by batch: "
            f"attnkit {paired['attnkit_s']:.2f} s, transformers BertModel {paired['transformers_s']:.2f} s "
            f"({paired['transformers_s'] / paired['attnkit_s']:.2f}x)"
        )
    out = Path(args.out)
    path = write_json(
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
    text.append(f"wrote {path}")
    return Report("\n".join(text), (path,))
