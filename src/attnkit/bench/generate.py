"""``attnkit bench generate``: KV-cached greedy decoding, attnkit next to HF transformers.

Both sides hold the same weights: a ``transformers.GPT2LMHeadModel`` is built from a
``GPT2Config`` (GPT-2 124M shape unless ``--quick``) with its random initialisation, and its
state dict is converted into an attnkit GPT. Each case decodes the same random prompts greedily
(HF: ``generate(do_sample=False)``; attnkit: ``attnkit.generate(temperature=0)``), always the
full number of new tokens, both sides in turns (``--rounds``, the best round of each counts;
the time includes the prompt). Cases:

* ``b1-fp32``: batch 1, 256 new tokens, float32 on both sides. Target: >= 0.95x HF.
* ``b1-bf16``: batch 1, attnkit with bfloat16 weights, against HF in float32. Target: >= 1.8x.
* ``b8-fp32``: batch 8, 128 new tokens, float32. Target: >= 2x HF's tokens/s.
* ``b1-int8``: batch 1, attnkit with int8 weight-only linears, against HF float32. Targets:
  >= 3x, and its top-1 token equal to float32's on >= 99% of the steps of the float32 greedy
  sequence (teacher-forced: the int8 model reads the float32 output and predicts each token).

Greedy agreement is the share of new tokens where attnkit's output equals HF's (float32 cases
must agree on every token). Prints a table and writes ``generate.json`` in ``--out``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch

from attnkit.bench.harness import environment, load_text, timed
from attnkit.bench.report import Report, Table, write_json
from attnkit.models.gpt import GPT

logger = logging.getLogger(__name__)

CASES: dict[
    str, tuple[int, int, str, float]
] = {  # name: (batch, new tokens, attnkit weights, target speed-up over HF float32)
    "b1-fp32": (1, 256, "float32", 0.95),
    "b1-bf16": (1, 256, "bfloat16", 1.8),
    "b8-fp32": (8, 128, "float32", 2.0),
    "b1-int8": (1, 256, "int8", 3.0),
}
QUICK: dict[str, Any] = dict(n_layer=2, n_head=4, n_embd=64, vocab_size=512, n_positions=128)
INT8_AGREEMENT = 0.99


@dataclass(frozen=True)
class GenerateSettings:
    """One run of ``attnkit bench generate``."""

    quick: bool = False
    cases: list[str] = field(default_factory=lambda: list(CASES))
    prompt_len: int = 32
    new_tokens: int | None = None  # None: each case's own (8 with quick)
    rounds: int = 2
    seed: int = 0
    out: Path = Path("bench_out")

    def __post_init__(self) -> None:
        bad = [c for c in self.cases if c not in CASES]
        if bad or not self.cases:
            raise ValueError(
                f"--cases must be a comma-separated subset of {list(CASES)}, got {self.cases!r}"
            )


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


def run(args: GenerateSettings) -> Report:
    """Every case of the module docstring, both sides in turns; writes generate.json."""
    names = args.cases
    import transformers

    from attnkit.checkpoints.hf import convert_from_hf
    from attnkit.generation import generate, quantize_int8

    torch.manual_seed(args.seed)
    shape = QUICK if args.quick else {}
    hf_cfg = transformers.GPT2Config(**shape)
    hf = transformers.GPT2LMHeadModel(hf_cfg).eval()
    hf.generation_config.eos_token_id = None  # always the full number of new tokens
    ours = convert_from_hf(hf.state_dict(), hf_cfg.to_dict()).eval()
    assert isinstance(ours, GPT)
    variants: dict[str, GPT] = {"float32": ours}
    vocab = hf_cfg.vocab_size
    g = torch.Generator().manual_seed(args.seed + 1)
    prompts: dict[int, torch.Tensor] = {}
    rows: list[dict[str, Any]] = []
    load_before = os.getloadavg()
    for name in names:
        batch, n, weights, target = CASES[name]
        n = args.new_tokens or (8 if args.quick else n)
        if weights not in variants:
            fresh = convert_from_hf(hf.state_dict(), hf_cfg.to_dict()).eval()
            assert isinstance(fresh, GPT)
            if weights == "bfloat16":
                variants[weights] = fresh.to(torch.bfloat16)
            else:
                quantize_int8(fresh)  # in place
                variants[weights] = fresh
        model = variants[weights]
        if batch not in prompts:
            prompts[batch] = torch.randint(0, vocab, (batch, args.prompt_len), generator=g)
        prompt = prompts[batch]

        def ours_fn(
            model: GPT = model, prompt: torch.Tensor = prompt, n: int = n
        ) -> list[list[int]]:
            seqs = cast(list[list[int]], generate(model, prompt, n, temperature=0))
            return [r[args.prompt_len :] for r in seqs]

        generate(model, prompt, 2, temperature=0)  # warm-up
        _hf_generate(hf, prompt, 2)
        ours_best = hf_best = float("inf")
        ours_out: list[list[int]] = []
        hf_out: list[list[int]] = []

        def hf_fn(prompt: torch.Tensor = prompt, n: int = n) -> list[list[int]]:
            return _hf_generate(hf, prompt, n)

        for _ in range(args.rounds):  # in turns, so load from elsewhere hits both sides alike
            t, ours_out = timed(ours_fn)
            ours_best = min(ours_best, t)
            t, hf_out = timed(hf_fn)
            hf_best = min(hf_best, t)
        ours_rate, hf_rate = batch * n / ours_best, batch * n / hf_best
        row: dict[str, Any] = dict(
            case=name,
            batch=batch,
            new_tokens=n,
            dtype=weights,
            attnkit_tokens_per_s=ours_rate,
            hf_fp32_tokens_per_s=hf_rate,
            ratio=ours_rate / hf_rate,
            greedy_agreement=_agreement(ours_out, hf_out),
            target=target,
        )
        met = row["ratio"] >= target
        if weights == "float32":
            met = met and row["greedy_agreement"] == 1.0
        else:  # the float32 greedy output, read by this model and by attnkit float32
            row["top1_vs_fp32"] = _teacher_forced_agreement(model, prompt, hf_out)
            row["fp32_top1_vs_hf"] = _teacher_forced_agreement(ours, prompt, hf_out)
            if weights == "int8":
                met = met and row["top1_vs_fp32"] >= INT8_AGREEMENT
        row["met"] = bool(met)
        rows.append(row)
        logger.info(
            f"{name}: attnkit {ours_rate:.1f} tokens/s, HF float32 {hf_rate:.1f} tokens/s, "
            f"{row['ratio']:.2f}x"
        )
    load_after = os.getloadavg()

    title = (
        f"greedy decoding, GPT-2 {'tiny (--quick)' if args.quick else '124M'} shape, "
        f"random weights shared by both sides, prompt {args.prompt_len} tokens, "
        f"{torch.get_num_threads()} threads, best of {args.rounds} round(s)"
    )
    table = Table(
        [
            "case",
            "batch",
            "new",
            "attnkit weights",
            "attnkit tokens/s",
            "HF fp32 tokens/s",
            "ratio",
            "target",
            "greedy = HF",
            "top-1 = fp32",
            "met",
        ],
        title=title,
    )
    for row in rows:
        table.add_row(
            row["case"],
            row["batch"],
            row["new_tokens"],
            row["dtype"],
            f"{row['attnkit_tokens_per_s']:.1f}",
            f"{row['hf_fp32_tokens_per_s']:.1f}",
            f"{row['ratio']:.2f}x",
            f">= {row['target']}x",
            f"{100 * row['greedy_agreement']:.1f}%",
            f"{100 * row['top1_vs_fp32']:.1f}%" if "top1_vs_fp32" in row else "-",
            "yes" if row["met"] else "NO",
        )
    out = Path(args.out)
    path = write_json(
        out / "generate.json",
        {
            "rows": rows,
            "environment": environment(),
            "quick": bool(args.quick),
            "prompt_len": args.prompt_len,
            "rounds": args.rounds,
            "config": hf_cfg.to_dict(),
            "load_before": load_before,
            "load_after": load_after,
        },
    )
    text = "\n".join([table.render(), load_text(load_before, load_after), f"wrote {path}"])
    return Report(text, (path,))
