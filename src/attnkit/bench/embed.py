"""``attnkit bench embed``: MiniLM sentence-embedding throughput, attnkit against
sentence-transformers and ONNX Runtime, in float32 and int8.

Every side embeds the same real texts with the same batch size and thread count in the same
process, on two sets: short lines (the first ``--lines`` lines longer than ``--min-chars``
characters of the Shakespeare text) and long passages (``--passages`` paragraphs of 100-256
tokens, :func:`~attnkit.bench.embed_texts.read_passages`). The sides: sentence-transformers
float32 (the reference for speed-ups and cosines), ONNX Runtime float32 and dynamic int8
(:mod:`attnkit.bench.onnx_embed`), attnkit float32 and int8 (``Encoder(quantize="int8")``).
On a shared machine the load changes from second to second, so the texts are cut into
``--interleave`` slices and the sides embed each slice back to back, in an order that
alternates by slice and round; each side's time is its sum over the slices, the best of
``--rounds`` rounds counts, and the spread (slowest round over fastest, minus one) and the
load at the start of each set are printed. attnkit is also measured with bfloat16 autocast on
the lines. Each row shows the smallest and mean per-text cosine to sentence-transformers'
embeddings; attnkit's rows are checked against ONNX Runtime's in the same precision (at
least as fast, at an equal or better smallest cosine).

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
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from attnkit.bench.embed_texts import (
    CORPUS_NAME,
    cosines,
    default_corpus,
    read_lines,
    read_passages,
)
from attnkit.bench.harness import environment, in_turns, load_text, timed
from attnkit.bench.report import Report, Table, write_json

if TYPE_CHECKING:  # pragma: no cover - for static tools only
    from attnkit.tasks.sentence import Encoder

logger = logging.getLogger(__name__)

# attnkit's rows: (x sentence-transformers float32, smallest cosine to its embeddings)
TARGETS = {"float32": (1.3, 0.99999), "bfloat16": (2.5, 0.999), "int8": (2.5, 0.99)}


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
    passages: int = 128  # long texts of 100-256 tokens; 0: short lines only
    onnx: bool = True  # ONNX Runtime float32 and int8 rows
    int8: bool = True  # attnkit's dynamic int8 row
    out: Path = Path("bench_out")

    def __post_init__(self) -> None:
        if self.bf16 not in ("auto", "on", "off"):
            raise ValueError(f"bf16 must be 'auto', 'on' or 'off', got {self.bf16!r}")
        if not isinstance(self.passages, int) or self.passages < 0:
            raise ValueError(f"passages must be an integer >= 0, got {self.passages!r}")


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


Side = tuple[str, str, Callable[[list[str]], np.ndarray]]  # (impl, dtype, encode)


def _measure(
    sides: list[Side], texts: list[str], rounds: int, interleave: int
) -> tuple[list[list[float]], list[np.ndarray]]:
    """Every side's time per round (summed over the slices) and its embeddings of ``texts``
    (from the last round). Within a slice the sides run back to back, in an order that
    alternates from slice to slice and round to round."""
    k = min(interleave, len(texts))
    bounds = [len(texts) * i // k for i in range(k + 1)]
    slices = [texts[a:b] for a, b in zip(bounds, bounds[1:])]
    times = [[0.0] * rounds for _ in sides]
    parts: list[list[np.ndarray]] = [[] for _ in sides]
    for r in range(rounds):
        parts = [[] for _ in sides]
        for i, part in enumerate(slices):
            for j in in_turns(range(len(sides)), r + i):
                t, out = timed(partial(sides[j][2], part))
                times[j][r] += t
                parts[j].append(np.asarray(out, dtype=np.float32))
    return times, [np.concatenate(p) for p in parts]


def _rows(
    text_set: str, sides: list[Side], times: list[list[float]], embs: list[np.ndarray], n: int
) -> list[dict[str, Any]]:
    """One row per side; the first side (sentence-transformers float32) is the reference for
    speed-ups and cosines."""
    ref_rate = n / min(times[0])
    rows = []
    for (impl, dtype, _), ts, emb in zip(sides, times, embs):
        cos = cosines(embs[0], emb) if len(emb) else np.ones(1)
        rate = n / min(ts)
        rows.append(
            dict(
                set=text_set,
                impl=impl,
                dtype=dtype,
                lines=n,
                sentences_per_s=rate,
                seconds=ts,
                spread=max(ts) / min(ts) - 1.0,
                speedup=rate / ref_rate,
                min_cosine=float(cos.min()),
                mean_cosine=float(cos.mean()),
            )
        )
    return rows


def _checks(rows: list[dict[str, Any]]) -> list[tuple[str, bool]]:
    """attnkit against its targets and against ONNX Runtime in the same precision."""
    by = {(r["set"], r["impl"], r["dtype"]): r for r in rows}
    out = []
    for r in rows:
        target = TARGETS.get(r["dtype"]) if r["impl"] == "attnkit" else None
        r["target"] = None if target is None else f">= {target[0]}x, cos >= {target[1]}"
        r["met"] = (
            None
            if target is None
            else bool(r["speedup"] >= target[0] and r["min_cosine"] >= target[1])
        )
        ort = by.get((r["set"], "onnxruntime", r["dtype"]))
        if r["impl"] == "attnkit" and ort is not None:
            ok = (
                r["sentences_per_s"] >= ort["sentences_per_s"]
                and r["min_cosine"] >= ort["min_cosine"] - 1e-6
            )
            out.append(
                (
                    f"{r['set']}: attnkit {r['dtype']} {r['sentences_per_s']:.1f}/s "
                    f"(min cos {r['min_cosine']:.4f}) vs ONNX Runtime {ort['sentences_per_s']:.1f}/s "
                    f"(min cos {ort['min_cosine']:.4f}): "
                    f"{r['sentences_per_s'] / ort['sentences_per_s']:.2f}x",
                    ok,
                )
            )
    return out


def run(args: EmbedSettings) -> Report:
    """Every side on the same texts, in turns (see the module docstring); writes embed.json."""
    corpus = Path(args.corpus) if args.corpus else default_corpus()
    if corpus is None or not corpus.is_file():
        raise ValueError(
            f"corpus {str(corpus or '../shared/data/' + CORPUS_NAME)!r} not found; "
            f"expected a text file (give --corpus PATH)"
        )
    if args.onnx:
        from attnkit.bench.onnx_embed import onnx_available

        missing = onnx_available()
        if missing is not None:
            raise ValueError(missing)
    lines = read_lines(corpus, args.lines, args.min_chars)
    if len(lines) < args.lines:
        logger.warning(
            f"note: {corpus} has only {len(lines)} lines longer than {args.min_chars} characters"
        )

    from sentence_transformers import SentenceTransformer

    from attnkit.checkpoints import resolve
    from attnkit.tasks.sentence import Encoder

    load_before = os.getloadavg()
    source = resolve(args.model)
    enc = Encoder.load(args.model)
    st = SentenceTransformer(str(source), device="cpu")
    bs = args.batch_size
    sides: list[Side] = [
        (
            "sentence-transformers",
            "float32",
            lambda t: st.encode(t, batch_size=bs, convert_to_numpy=True),
        ),
    ]
    onnx = None
    if args.onnx:
        from attnkit.bench.onnx_embed import OnnxEncoders

        onnx = OnnxEncoders(st, source)
        sides += [("onnxruntime", dt, onnx.encoder(dt, bs)) for dt in ("float32", "int8")]
    sides.append(("attnkit", "float32", lambda t: enc.encode(t, batch_size=bs)))
    if args.int8:
        enc8 = Encoder.load(args.model, quantize="int8")
        sides.append(("attnkit", "int8", lambda t: enc8.encode(t, batch_size=bs)))

    sets = [("lines", lines)]
    if args.passages:
        passages = read_passages(corpus, args.passages, lambda t: len(enc.tokenize([t])[0]))
        sets.append(("passages", passages))
    rows: list[dict[str, Any]] = []
    loads: dict[str, tuple[float, ...]] = {}
    try:
        for name, texts in sets:
            warm = texts[: 2 * bs]
            for side in sides:
                side[2](warm)
            loads[name] = os.getloadavg()
            times, embs = _measure(sides, texts, args.rounds, args.interleave)
            rows += _rows(name, sides, times, embs, len(texts))
            if name == "lines":
                ref = embs[0]
    finally:
        if onnx is not None:
            onnx.close()

    from attnkit.tasks.sentence import cpu_has_native_bf16

    native = cpu_has_native_bf16()
    if args.bf16 != "off":
        n16 = args.bf16_lines or (
            len(lines) if native or args.bf16 == "on" else min(512, len(lines))
        )
        sub = lines[:n16]
        enc.autocast_dtype = torch.bfloat16
        enc.encode(lines[:bs], batch_size=bs)
        t, out16 = timed(lambda: enc.encode(sub, batch_size=bs))
        enc.autocast_dtype = None
        cos16 = cosines(ref[:n16], out16)
        st_rate = rows[0]["sentences_per_s"]
        rows.append(
            dict(
                set="lines",
                impl="attnkit",
                dtype="bfloat16",
                lines=n16,
                sentences_per_s=n16 / t,
                seconds=[t],
                spread=0.0,
                speedup=n16 / t / st_rate,
                min_cosine=float(cos16.min()),
                mean_cosine=float(cos16.mean()),
            )
        )
    paired = _paired_model_times(enc, lines, bs) if args.paired_model else None
    load_after = os.getloadavg()
    checks = _checks(rows)

    table = Table(
        [
            "set",
            "impl",
            "dtype",
            "texts",
            "sentences/s",
            "spread",
            "vs ST fp32",
            "min cos",
            "mean cos",
            "target",
            "met",
        ],
        title=f"MiniLM embeddings, batch {bs}, {torch.get_num_threads()} threads, "
        f"{len(lines)} lines of {corpus.name}"
        + (f" and {len(sets[1][1])} passages of 100-256 tokens" if len(sets) > 1 else "")
        + f", {min(args.interleave, len(lines))} interleaved slice(s), "
        f"best of {args.rounds} alternating round(s)",
    )
    for row in rows:
        table.add_row(
            row["set"],
            row["impl"],
            row["dtype"],
            row["lines"],
            f"{row['sentences_per_s']:.1f}",
            f"{100 * row['spread']:.0f}%",
            f"{row['speedup']:.2f}x",
            f"{row['min_cosine']:.5f}",
            f"{row['mean_cosine']:.5f}",
            row.get("target") or "-",
            "-" if row.get("met") is None else ("yes" if row["met"] else "NO"),
        )
    text = [table.render()]
    text += [f"{'met' if ok else 'NOT MET'}: {line}" for line, ok in checks]
    text.append(
        f"{load_text(load_before, load_after)}; at the start of each set: "
        + ", ".join(f"{k} {v[0]:.2f}" for k, v in loads.items())
        + f"; native bf16: "
        f"{'yes' if native else 'no (bf16 is emulated and slower than fp32 here)'}; "
        f"quantized engine {torch.backends.quantized.engine}"
        + (f"; onnxruntime {onnx.version}" if onnx is not None else "")
    )
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
            "checks": [{"check": line, "met": ok} for line, ok in checks],
            "environment": environment(),
            "corpus": str(corpus),
            "batch_size": bs,
            "threads": torch.get_num_threads(),
            "interleave": args.interleave,
            "rounds": args.rounds,
            "load_before": load_before,
            "load_after": load_after,
            "load_at_sets": loads,
            "native_bf16": native,
            "quantized_engine": torch.backends.quantized.engine,
            "onnxruntime": None if onnx is None else onnx.version,
            "onnx_bytes": None if onnx is None else onnx.sizes,
            "paired_model": paired,
        },
    )
    text.append(f"wrote {path}")
    return Report("\n".join(text), (path,))
