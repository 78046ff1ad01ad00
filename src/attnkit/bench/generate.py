"""``attnkit bench generate``: KV-cached greedy decoding, attnkit next to HF transformers, and
each side against the machine's memory-bandwidth limit.

Both sides hold the same weights: a ``transformers.GPT2LMHeadModel`` is built from a
``GPT2Config`` (GPT-2 124M shape unless ``--quick``) with its random initialisation, and its
state dict is converted into an attnkit GPT. Each case decodes the same random prompts greedily
(HF: ``generate(do_sample=False)``; attnkit: ``attnkit.generate(temperature=0)``), always the
full number of new tokens, every side in turns (``--rounds``, the best round of each counts;
the time includes the prompt). Cases:

* ``b1-fp32``: batch 1, 256 new tokens, float32 on both sides. Target: >= 0.95x HF.
* ``b1-bf16``: batch 1, attnkit with bfloat16 weights, against HF in float32. Target: >= 1.8x.
  HF in bfloat16 is timed too (the baseline in the same precision).
* ``b8-fp32``: batch 8, 128 new tokens, float32. Target: >= 2x HF's tokens/s.
* ``b1-int8``: batch 1, attnkit with int8 weight-only linears, against HF float32. Targets:
  >= 3x, and its top-1 token equal to float32's on >= 99% of the steps of the float32 greedy
  sequence (teacher-forced: the int8 model reads the float32 output and predicts each token).
  Two other weight-only int8 linears run in the same attnkit model and decoding loop beside
  it, so that only the linear differs: torchao's ``quantize_(model, Int8WeightOnlyConfig())``
  (skipped, saying why, where torchao is not installed or fails) and a minimal linear over
  ``torch._weight_int8pack_mm`` (bfloat16 activations, the same per-row int8 codes). (HF's
  GPT-2 holds its block weights in ``Conv1D`` layers, which torchao's default filter, plain
  ``nn.Linear``, passes over: in HF's model only the LM head would be quantized.)

The limit: this machine's memory read bandwidth is measured before and after the cases with
the benchmark's threads (:func:`attnkit.bench.bandwidth.measure_read_bandwidth`; the higher
of the two counts). A decoding step reads every weight once, in its storage dtype, and the KV
cache (:func:`~attnkit.bench.bandwidth.decode_weight_bytes`,
:func:`~attnkit.bench.bandwidth.kv_cache_bytes`): all block weights, the final norm, the whole
LM head (tied to the token embedding in GPT-2: the head's product reads all of it) and one row
of each embedding per batch row; the cache at the mean context ``prompt + (new - 1) / 2``
(float32 for attnkit on the CPU, which keeps a bfloat16 model's cache in float32; the model's
dtype for HF). The limit is ``batch x bandwidth / bytes per step`` tokens/s; each side reports
its share of it. Targets: the batch-1 float32, bfloat16 and int8 attnkit rows at >= 70%.

Greedy agreement is the share of new tokens where a side's output equals HF float32's (float32
cases must agree on every token). Prints the tables and the targets, and writes
``generate.json`` in ``--out``.
"""

from __future__ import annotations

import copy
import functools
import logging
import os
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from attnkit.bench import bandwidth as bw
from attnkit.bench.generate_targets import (
    CASES,
    EXTRA_SIDES,
    INT8_AGREEMENT,
    SIDES,
    add_limits,
    evaluate_checks,
    render_cases,
    render_limits,
)
from attnkit.bench.harness import environment, in_turns, load_text, short_error, timed
from attnkit.bench.int8_peers import int8pack_model, quiet_torchao, torchao_int8_model
from attnkit.bench.report import Report, render_checks, write_json
from attnkit.models.gpt import GPT

logger = logging.getLogger(__name__)

QUICK: dict[str, Any] = dict(n_layer=2, n_head=4, n_embd=64, vocab_size=512, n_positions=128)
QUICK_BANDWIDTH_BYTES = 32 * 1024**2  # --quick: a small probe (the tiny model is cached anyway)


@dataclass(frozen=True)
class GenerateSettings:
    """One run of ``attnkit bench generate``.

    ``bandwidth_bytes``: the read-bandwidth probe's buffer (None: twice the last-level cache,
    at least 1 GiB; 32 MiB with ``quick``); ``bandwidth_passes``: its timed passes per kernel.

    Examples:
        >>> report = run(GenerateSettings(quick=True, out=Path("/tmp/gen")))
    """

    quick: bool = False
    cases: list[str] = field(default_factory=lambda: list(CASES))
    prompt_len: int = 32
    new_tokens: int | None = None  # None: each case's own (8 with quick)
    rounds: int = 2
    seed: int = 0
    out: Path = Path("bench_out")
    bandwidth_bytes: int | None = None
    bandwidth_passes: int = 7

    def __post_init__(self) -> None:
        bad = [c for c in self.cases if c not in CASES]
        if bad or not self.cases:
            raise ValueError(
                f"--cases must be a comma-separated subset of {list(CASES)}, got {self.cases!r}"
            )
        b = self.bandwidth_bytes
        if b is not None and (isinstance(b, bool) or not isinstance(b, int)):
            raise TypeError(f"bandwidth_bytes must be an int or None, got {b!r}")
        if b is not None and b < bw.MIN_BUFFER_BYTES:
            raise ValueError(f"bandwidth_bytes must be >= {bw.MIN_BUFFER_BYTES}, got {b!r}")
        p = self.bandwidth_passes
        if isinstance(p, bool) or not isinstance(p, int) or p < 1:
            raise ValueError(f"bandwidth_passes must be an int >= 1, got {p!r}")


def _hf_generate(hf: Any, ids: torch.Tensor, n: int) -> list[list[int]]:
    with torch.inference_mode():
        out = hf.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=n,
            do_sample=False,
            pad_token_id=0,
        )
    return out[:, ids.shape[1] :].tolist()


def _agreement(a: list[list[int]], b: list[list[int]]) -> float:
    pairs = [(x, y) for ra, rb in zip(a, b) for x, y in zip(ra, rb)]
    return sum(x == y for x, y in pairs) / max(1, len(pairs))


def _teacher_forced_agreement(model: GPT, prompt: torch.Tensor, new: list[list[int]]) -> float:
    """Share of steps where ``model``'s arg-max equals the reference next token, reading the
    reference sequence (prompt + new) in one forward pass."""
    seq = torch.cat([prompt, torch.tensor(new, dtype=torch.long)], dim=1)  # (B, P + N)
    with torch.inference_mode():
        logits = model(seq[:, :-1]).logits[:, prompt.shape[1] - 1 :]  # (B, N, V)
    return (logits.argmax(-1) == seq[:, prompt.shape[1] :]).float().mean().item()


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


# --------------------------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------------------------


@dataclass
class _Side:
    """One timed side of a case: its model (None when skipped) and how to decode with it."""

    name: str
    weights: str
    model: nn.Module | None  # an attnkit GPT, or a transformers model with ``hf``
    kv_itemsize: int  # bytes per number of its KV cache
    hf: bool = False
    skipped: str | None = None
    teacher: GPT | None = None  # an attnkit model whose top-1 is compared with float32's
    best: float = float("inf")
    out: list[list[int]] = field(default_factory=list)


def _decode(side: _Side, prompt: torch.Tensor, n: int) -> list[list[int]]:
    """The ``n`` new tokens of each row that ``side`` decodes greedily from ``prompt`` (B, P)."""
    from attnkit.generation import generate

    if side.hf:
        return _hf_generate(side.model, prompt, n)
    seqs = cast(list[list[int]], generate(cast(GPT, side.model), prompt, n, temperature=0))
    return [r[prompt.shape[1] :] for r in seqs]


def _measure_bandwidth(args: GenerateSettings) -> bw.ReadBandwidth:
    size = args.bandwidth_bytes or (QUICK_BANDWIDTH_BYTES if args.quick else None)
    passes = min(args.bandwidth_passes, 3) if args.quick else args.bandwidth_passes
    return bw.measure_read_bandwidth(size, passes=passes)


def run(args: GenerateSettings) -> Report:
    """Every case of the module docstring, every side in turns; writes generate.json.

    Examples:
        >>> print(run(GenerateSettings(quick=True, cases=["b1-int8"])).text)
    """
    names = args.cases
    import transformers

    from attnkit.checkpoints.hf import convert_from_hf
    from attnkit.generation import quantize_int8

    torch.manual_seed(args.seed)
    shape = QUICK if args.quick else {}
    hf_cfg = transformers.GPT2Config(**shape)
    with quiet_torchao():  # where torchao is installed, the first HF model imports it
        hf = transformers.GPT2LMHeadModel(hf_cfg).eval()
    hf.generation_config.eos_token_id = None  # always the full number of new tokens

    def fresh() -> GPT:
        m = convert_from_hf(hf.state_dict(), hf_cfg.to_dict()).eval()
        assert isinstance(m, GPT)
        return m

    ours = fresh()
    variants: dict[str, GPT] = {"float32": ours}
    hf_bf16: Any = None
    vocab = hf_cfg.vocab_size
    g = torch.Generator().manual_seed(args.seed + 1)
    prompts: dict[int, torch.Tensor] = {}
    rows: list[dict[str, Any]] = []
    bandwidth_before = _measure_bandwidth(args)
    load_before = os.getloadavg()
    for name in names:
        batch, n, weights, target = CASES[name]
        n = args.new_tokens or (8 if args.quick else n)
        if weights not in variants:
            m = fresh()
            if weights == "bfloat16":
                m = m.to(torch.bfloat16)
            else:
                quantize_int8(m)  # in place
            variants[weights] = m
        model = variants[weights]
        if batch not in prompts:
            prompts[batch] = torch.randint(0, vocab, (batch, args.prompt_len), generator=g)
        prompt = prompts[batch]

        sides = [
            _Side("attnkit", weights, model, 4, teacher=None if weights == "float32" else model)
        ]
        sides.append(_Side("hf-fp32", "float32", hf, 4, hf=True))
        for extra in EXTRA_SIDES.get(name, ()):
            if extra == "hf-bf16":
                if hf_bf16 is None:
                    hf_bf16 = copy.deepcopy(hf).to(torch.bfloat16)
                sides.append(_Side(extra, "bfloat16", hf_bf16, 2, hf=True))
                continue
            why: str | None = None
            if extra == "torchao-int8":
                m8, why = torchao_int8_model(fresh())
            else:
                try:
                    m8 = int8pack_model(fresh())
                except RuntimeError as e:
                    m8, why = None, short_error(e)
            sides.append(_Side(extra, "int8", m8, 4, skipped=why, teacher=m8))
        live = [s for s in sides if s.model is not None]
        for s in live:  # warm-up: two tokens
            _decode(s, prompt, 2)
        for r in range(args.rounds):  # in turns, so load from elsewhere hits every side alike
            for s in in_turns(live, r):
                t, s.out = timed(functools.partial(_decode, s, prompt, n))
                s.best = min(s.best, t)
        ours_side, hf_side = sides[0], sides[1]
        ours_rate, hf_rate = batch * n / ours_side.best, batch * n / hf_side.best
        row: dict[str, Any] = dict(
            case=name,
            batch=batch,
            new_tokens=n,
            dtype=weights,
            attnkit_tokens_per_s=ours_rate,
            hf_fp32_tokens_per_s=hf_rate,
            ratio=ours_rate / hf_rate,
            greedy_agreement=_agreement(ours_side.out, hf_side.out),
            target=target,
        )
        met = row["ratio"] >= target
        if weights == "float32":
            met = met and row["greedy_agreement"] == 1.0
        else:  # the float32 greedy output, read by this model and by attnkit float32
            row["top1_vs_fp32"] = _teacher_forced_agreement(model, prompt, hf_side.out)
            row["fp32_top1_vs_hf"] = _teacher_forced_agreement(ours, prompt, hf_side.out)
            if weights == "int8":
                met = met and row["top1_vs_fp32"] >= INT8_AGREEMENT
        row["met"] = bool(met)
        context = bw.mean_context(args.prompt_len, n)
        row["mean_context"] = context
        row["sides"] = []
        for s in sides:
            rec: dict[str, Any] = dict(
                side=s.name, runs=SIDES[s.name][0], weights=s.weights, skipped=s.skipped
            )
            if s.model is not None:
                rec["tokens_per_s"] = batch * n / s.best
                rec["seconds"] = s.best
                rec["weight_bytes_per_step"] = bw.decode_weight_bytes(s.model, batch)
                rec["kv_dtype"] = {4: "float32", 2: "bfloat16"}[s.kv_itemsize]
                rec["kv_bytes_per_step"] = bw.kv_cache_bytes(
                    hf_cfg.n_layer, hf_cfg.n_embd, batch, context, s.kv_itemsize
                )
                step = rec["weight_bytes_per_step"] + rec["kv_bytes_per_step"]
                rec["bytes_per_token"] = step / batch
                rec["greedy_vs_hf_fp32"] = _agreement(s.out, hf_side.out)
                rec["attnkit_vs_this"] = ours_rate / rec["tokens_per_s"]
                if s.teacher is not None:
                    rec["top1_vs_fp32"] = (
                        row["top1_vs_fp32"]
                        if s.name == "attnkit"
                        else _teacher_forced_agreement(s.teacher, prompt, hf_side.out)
                    )
                logger.info(f"{name} {s.name}: {rec['tokens_per_s']:.1f} tokens/s")
            row["sides"].append(rec)
        same = [r for r in row["sides"][2:] if r.get("tokens_per_s")]
        if same:
            row["ratio_same_precision"] = {r["side"]: r["attnkit_vs_this"] for r in same}
        rows.append(row)
        logger.info(
            f"{name}: attnkit {ours_rate:.1f} tokens/s, HF float32 {hf_rate:.1f} tokens/s, "
            f"{row['ratio']:.2f}x"
        )
    load_after = os.getloadavg()
    bandwidth_after = _measure_bandwidth(args)
    measured = max(bandwidth_before, bandwidth_after, key=lambda b: b.bytes_per_s)
    add_limits(rows, measured.bytes_per_s)
    checks = evaluate_checks(rows)

    threads = torch.get_num_threads()
    title = (
        f"greedy decoding, GPT-2 {'tiny (--quick)' if args.quick else '124M'} shape, "
        f"random weights shared by both sides, prompt {args.prompt_len} tokens, "
        f"{threads} thread{'' if threads == 1 else 's'}, best of {args.rounds} round(s)"
    )
    versions = {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "torchao": _version("torchao"),
    }
    out = Path(args.out)
    path = write_json(
        out / "generate.json",
        {
            "rows": rows,
            "targets": checks,
            "bandwidth": {
                **measured.to_json(),
                "counted": "the higher of the measurements before and after the cases",
                "before": bandwidth_before.to_json(),
                "after": bandwidth_after.to_json(),
            },
            "limit": (
                "batch x bandwidth / bytes a step reads: every parameter and buffer in its "
                "storage dtype (one row per batch row of each embedding, the whole LM head), "
                "plus the KV cache at the mean context prompt + (new - 1) / 2"
            ),
            "versions": versions,
            "threads": threads,
            "environment": environment(),
            "quick": bool(args.quick),
            "prompt_len": args.prompt_len,
            "rounds": args.rounds,
            "config": hf_cfg.to_dict(),
            "load_before": load_before,
            "load_after": load_after,
        },
    )
    text = "\n\n".join(
        [
            render_cases(rows, title),
            render_limits(rows, measured, bandwidth_before, bandwidth_after),
            render_checks(checks),
            "\n".join([load_text(load_before, load_after), f"wrote {path}"]),
        ]
    )
    return Report(text, (path,), missed=any(c.passed is False for c in checks))
