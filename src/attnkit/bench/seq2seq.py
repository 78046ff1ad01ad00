"""``attnkit bench seq2seq``: translation training and beam search, attnkit next to HF
transformers (and CTranslate2 for reference), in one run on the same data.

1. Data: the pairs of ``--data`` (``bible:en-es`` or a .tsv/.jsonl file,
   :func:`attnkit.text.parallel.load_pairs`), one BPE tokenizer, length-bucketed batches of
   about ``batch_tokens`` padded tokens a side (:mod:`attnkit.bench.seq2seq_parts`).
2. Training: a Marian-shaped model (``MODELS``: 7.7M parameters; ``--quick``: a tiny one)
   built by attnkit and exported to a ``MarianMTModel`` with the same initial weights; both
   train in alternating rounds (the order flips every round) for ``budget_s`` seconds each
   on the same batches in the same order, with the same optimizer settings, learning-rate
   schedule, label smoothing and clipping, and no dropout (HF's Marian also drops out the
   attention outputs, attnkit's layers only the MLP's: with none the two train the same
   function). Tokens/s: the median over the steady-state steps
   (the first ``WARMUP_STEPS`` of each side left out) of (real source + target tokens) /
   step seconds; the 10th and 90th percentiles and each round's rate are printed beside it.
   Target: attnkit >= 1.3x HF.
3. Quality: BLEU and chrF (sacrebleu) of both trained models on the held-out sentences (beam
   search by attnkit; it equals HF's generate token for token, as part 4 checks), and of
   copying the source.
4. Decoding: attnkit's trained weights are exported to HF (``checkpoints/hf``) and converted
   to CTranslate2 from there; attnkit's ``generate``, HF's ``generate`` and CTranslate2's
   ``translate_batch`` decode the held-out sentences with ``beams`` beams in batches of
   ``decode_batch``, in alternating rounds; sentences/s is the median round. attnkit's and
   HF's outputs must be identical (``outputs_identical``; the command exits 1 otherwise);
   CTranslate2's agreement with them is reported. Target: attnkit >= 1.5x HF.

Everything is written to ``seq2seq.json`` in ``--out``, with the machine's load before and
after.
"""

from __future__ import annotations

import logging
import os
import statistics
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from attnkit.bench import seq2seq_parts as parts
from attnkit.bench.harness import environment, in_turns, load_text, timed
from attnkit.bench.report import Report, Table, write_json

logger = logging.getLogger(__name__)

TRAIN_TARGET = 1.3
DECODE_TARGET = 1.5
WARMUP_STEPS = 2

# the model and run of the full benchmark and of --quick
MODELS: dict[str, dict[str, Any]] = {
    "full": dict(d_model=256, n_heads=4, d_ff=1024, n_encoder_layers=3, n_decoder_layers=3),
    "quick": dict(d_model=32, n_heads=2, d_ff=64, n_encoder_layers=1, n_decoder_layers=1),
}
RUNS: dict[str, dict[str, Any]] = {
    "full": dict(vocab=8000, batch_tokens=3000, max_tokens=96, sentences=96, rounds=4),
    "quick": dict(vocab=300, batch_tokens=400, max_tokens=40, sentences=12, rounds=2),
}


@dataclass(frozen=True)
class Seq2SeqSettings:
    """One run of ``attnkit bench seq2seq`` (None: the full or --quick preset's value)."""

    quick: bool = False
    data: str = "bible:en-es"
    budget_s: float = 300.0  # training seconds per side
    rounds: int | None = None
    decode_rounds: int = 3
    vocab: int | None = None
    batch_tokens: int | None = None
    max_tokens: int | None = None
    sentences: int | None = None
    beams: int = 4
    decode_batch: int = 16
    no_repeat_ngram: int = 0
    lr: float = 1e-3
    label_smoothing: float = 0.1
    ctranslate2: bool = True
    seed: int = 0
    out: Path = Path("bench_out")
    model: dict[str, Any] = field(default_factory=dict)  # overrides of the model shape

    def __post_init__(self) -> None:
        if not self.budget_s > 0:
            raise ValueError(f"--budget-s must be > 0 seconds, got {self.budget_s}")
        if self.beams < 2:
            raise ValueError(f"--beams must be >= 2 (beam search), got {self.beams}")

    def preset(self) -> dict[str, Any]:
        run = dict(RUNS["quick" if self.quick else "full"])
        for key in ("rounds", "vocab", "batch_tokens", "max_tokens", "sentences"):
            if getattr(self, key) is not None:
                run[key] = getattr(self, key)
        return run


def _percentile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def _rates(side: parts.TrainSide, rounds: list[tuple[int, int]]) -> dict[str, Any]:
    """Tokens/s of one side: median, p10, p90 of the steady-state steps and each round's."""
    steady = [
        n / s for n, s in zip(side.step_tokens[WARMUP_STEPS:], side.step_seconds[WARMUP_STEPS:])
    ] or [n / s for n, s in zip(side.step_tokens, side.step_seconds)]
    per_round = [
        sum(side.step_tokens[a:b]) / sum(side.step_seconds[a:b]) for a, b in rounds if b > a
    ]
    return {
        "tokens_per_s": statistics.median(steady),
        "tokens_per_s_p10": _percentile(steady, 0.1),
        "tokens_per_s_p90": _percentile(steady, 0.9),
        "round_tokens_per_s": per_round,
        "steps": side.steps,
        "tokens": sum(side.step_tokens),
        "train_seconds": sum(side.step_seconds),
        "first_loss": side.losses[0],
        "last_loss": statistics.mean(side.losses[-5:]),
        "losses": [round(x, 4) for x in side.losses],
    }


def _texts(data: parts.Data, outputs: list[list[int]]) -> list[str]:
    return [data.tokenizer.decode(ids) for ids in outputs]


def run(args: Seq2SeqSettings) -> Report:
    """Parts 1-4 of the module docstring; writes seq2seq.json."""
    from attnkit.text.parallel import load_pairs

    load_before = os.getloadavg()
    corpus = load_pairs(args.data, seed=args.seed)  # bad data is refused before the imports

    import transformers

    from attnkit.checkpoints import load as load_model
    from attnkit.checkpoints.hf.convert import export_hf
    from attnkit.models.encdec import EncoderDecoder
    from attnkit.models.encdec_config import get_encdec_preset
    from attnkit.text.scores import translation_scores

    preset = args.preset()
    data = parts.prepare_data(
        corpus.splits,
        vocab=preset["vocab"],
        max_tokens=preset["max_tokens"],
        batch_tokens=preset["batch_tokens"],
        sentences=preset["sentences"],
        seed=args.seed,
    )
    shape = dict(MODELS["quick" if args.quick else "full"], **args.model)
    V = data.vocab_size
    cfg = get_encdec_preset(
        "tiny-marian",
        vocab_size=V,
        max_seq_len=2 * preset["max_tokens"] + 8,
        pad_token_id=data.pad,
        eos_token_id=data.eos,
        decoder_start_token_id=data.pad,
        dropout=0.0,  # attnkit's and HF's Marian drop out at different places: none here
        **shape,
    )
    torch.manual_seed(args.seed)
    ours = EncoderDecoder(cfg)
    parts.zero_pad_row(ours, ours.encoder.embed.tok.weight, data.pad)
    work = Path(tempfile.mkdtemp(prefix="attnkit-bench-seq2seq-"))
    export_hf(ours, work / "init")  # the same initial weights for HF
    hf = transformers.MarianMTModel.from_pretrained(work / "init")
    # the same trainable weights on both sides: HF's final_logits_bias is a buffer, its
    # sinusoidal position tables are fixed (attnkit computes them; they come back trainable)
    assert ours.logits_bias is not None
    ours.logits_bias.requires_grad_(False)
    for stack in (hf.get_encoder(), hf.get_decoder()):
        stack.embed_positions.weight.requires_grad_(False)
    schedule = parts.Schedule(
        lr=args.lr,
        warmup=4 if args.quick else 16,  # a budget of minutes is tens of steps on a CPU
        grad_clip=1.0,
        label_smoothing=args.label_smoothing,
    )
    sides = [
        parts.attnkit_side(ours, data, schedule),
        parts.hf_side(hf, data, schedule, cfg.decoder_start_token_id),
    ]

    # 2. training, in alternating rounds
    n_rounds = preset["rounds"]
    spans: dict[str, list[tuple[int, int]]] = {s.name: [] for s in sides}
    for r in range(n_rounds):
        for side in in_turns(sides, r):
            a = side.steps
            side.train_for(args.budget_s / n_rounds)
            spans[side.name].append((a, side.steps))
            logger.info(f"round {r + 1}/{n_rounds}: {side.name} at step {side.steps}")
    train = {s.name: _rates(s, spans[s.name]) for s in sides}
    common = min(s.steps for s in sides)  # the loss where both have taken as many steps
    for s in sides:
        train[s.name]["loss_at_common_step"] = statistics.mean(
            s.losses[max(0, common - 5) : common]
        )
    train_ratio = train["attnkit"]["tokens_per_s"] / train["HF"]["tokens_per_s"]
    round_ratios = [
        a / b
        for a, b in zip(train["attnkit"]["round_tokens_per_s"], train["HF"]["round_tokens_per_s"])
    ]

    # 3. quality of both trained models (HF's weights read by attnkit)
    ours.eval()
    hf.eval()
    hf.save_pretrained(work / "hf-trained")
    hf_trained = load_model(work / "hf-trained")
    assert isinstance(hf_trained, EncoderDecoder)
    max_new = min(cfg.max_seq_len - 1, max(len(s) for s in data.sources) * 3 // 2 + 8)
    dec = dict(
        batch=args.decode_batch, beams=args.beams, max_new=max_new, ngram=args.no_repeat_ngram
    )
    ours_out = parts.attnkit_decode(ours, data, **dec)
    quality = {
        "attnkit": translation_scores(_texts(data, ours_out), data.references),
        "HF": translation_scores(
            _texts(data, parts.attnkit_decode(hf_trained, data, **dec)), data.references
        ),
        "copy source": translation_scores(data.source_texts, data.references),
    }

    # 4. decoding of attnkit's weights by attnkit, HF and CTranslate2
    export_hf(ours, work / "export")
    parts.write_hf_tokenizer(data, work / "export")
    hf_same = transformers.MarianMTModel.from_pretrained(work / "export").eval()
    decoders: dict[str, Any] = {
        "attnkit": lambda: parts.attnkit_decode(ours, data, **dec),
        "HF": lambda: parts.hf_decode(hf_same, data, **dec),
    }
    if args.ctranslate2:
        translator = parts.ct2_translator(work / "export", work / "ct2", torch.get_num_threads())
        decoders["CTranslate2"] = lambda: parts.ct2_decode(translator, data, **dec)
    seconds: dict[str, list[float]] = {name: [] for name in decoders}
    outputs: dict[str, list[list[int]]] = {}
    for r in range(args.decode_rounds):
        for name in in_turns(list(decoders), r):
            t, outputs[name] = timed(decoders[name])
            seconds[name].append(t)
    n = len(data.sources)
    decode: dict[str, Any] = {
        name: {
            "sentences_per_s": n / statistics.median(ts),
            "round_sentences_per_s": [n / t for t in ts],
        }
        for name, ts in seconds.items()
    }
    differing = sum(a != b for a, b in zip(outputs["attnkit"], outputs["HF"]))
    identical = differing == 0 and outputs["attnkit"] == ours_out
    decode_ratio = decode["attnkit"]["sentences_per_s"] / decode["HF"]["sentences_per_s"]
    if "CTranslate2" in outputs:
        same = sum(a == b for a, b in zip(outputs["CTranslate2"], outputs["attnkit"]))
        decode["CTranslate2"]["agreement_with_attnkit"] = same / n
    load_after = os.getloadavg()

    result: dict[str, Any] = {
        "quick": args.quick,
        "data": corpus.name,
        "data_checksum": corpus.checksum,
        "train_pairs": len(data.train),
        "batches": len(data.batches),
        "held_out_sentences": n,
        "vocab_size": V,
        "parameters": sum(p.numel() for p in ours.parameters() if p.requires_grad),
        "hf_parameters": sum(p.numel() for p in hf.parameters() if p.requires_grad),
        "model": cfg.to_dict(),
        "budget_s_per_side": args.budget_s,
        "rounds": n_rounds,
        "schedule": vars(schedule) | {"betas": list(schedule.betas)},
        "train": train,
        "train_ratio": train_ratio,
        "train_round_ratios": round_ratios,
        "train_target": TRAIN_TARGET,
        "train_met": train_ratio >= TRAIN_TARGET,
        "quality": quality,
        "decode": decode,
        "decode_settings": dec | {"rounds": args.decode_rounds},
        "decode_ratio": decode_ratio,
        "decode_target": DECODE_TARGET,
        "decode_met": decode_ratio >= DECODE_TARGET and identical,
        "outputs_identical": identical,
        "outputs_differing": differing,
        "environment": environment(),
        "threads": torch.get_num_threads(),
        "load_before": list(load_before),
        "load_after": list(load_after),
    }
    path = write_json(Path(args.out) / "seq2seq.json", result)
    return Report(_text(result, path), (path,), missed=not identical)


def _text(r: dict[str, Any], path: Path) -> str:
    t, q, d = r["train"], r["quality"], r["decode"]
    head = (
        f"bench seq2seq: {r['data']} ({r['train_pairs']:,} training pairs, {r['batches']} "
        f"batches), Marian shape, {r['parameters']:,} parameters (HF {r['hf_parameters']:,}), "
        f"{r['threads']} threads"
    )
    train = Table(
        ["training", "steps", "tokens/s (median)", "p10..p90", "per round", "loss", "last loss"],
        title=(
            f"{r['budget_s_per_side']:g} s per side in {r['rounds']} alternating rounds; loss: "
            f"the mean of the 5 steps up to the last step both sides took"
        ),
    )
    for name in ("attnkit", "HF"):
        s = t[name]
        train.add_row(
            name,
            s["steps"],
            f"{s['tokens_per_s']:,.0f}",
            f"{s['tokens_per_s_p10']:,.0f}..{s['tokens_per_s_p90']:,.0f}",
            " ".join(f"{x:,.0f}" for x in s["round_tokens_per_s"]),
            f"{s['loss_at_common_step']:.3f}",
            f"{s['last_loss']:.3f}",
        )
    ratios = " ".join(f"{x:.2f}" for x in r["train_round_ratios"])
    lines = [
        head,
        train.render(),
        f"training: attnkit {r['train_ratio']:.2f}x HF tokens/s (rounds: {ratios}); target "
        f">= {r['train_target']}x: {'met' if r['train_met'] else 'MISSED'}",
    ]
    quality = Table(["held-out", "BLEU", "chrF"], title=f"{r['held_out_sentences']} sentences")
    for name, s in q.items():
        quality.add_row(name, f"{s['bleu']:.1f}", f"{s['chrf']:.1f}")
    lines.append(quality.render())
    ds = r["decode_settings"]
    decode = Table(
        ["decoder", "sentences/s (median)", "per round", "same as attnkit"],
        title=(
            f"beam search, {ds['beams']} beams, batches of {ds['batch']}, up to {ds['max_new']} "
            f"new tokens, attnkit's weights"
        ),
    )
    for name, s in d.items():
        same = "yes" if name == "attnkit" else ""
        if name == "HF":
            same = "identical" if r["outputs_identical"] else f"{r['outputs_differing']} differ"
        if "agreement_with_attnkit" in s:
            same = f"{100 * s['agreement_with_attnkit']:.0f}%"
        decode.add_row(
            name,
            f"{s['sentences_per_s']:.2f}",
            " ".join(f"{x:.2f}" for x in s["round_sentences_per_s"]),
            same,
        )
    lines += [
        decode.render(),
        f"beam search: attnkit {r['decode_ratio']:.2f}x HF sentences/s, outputs "
        f"{'identical' if r['outputs_identical'] else 'NOT identical'}; target >= "
        f"{r['decode_target']}x: {'met' if r['decode_met'] else 'MISSED'}",
        load_text(r["load_before"], r["load_after"]),
        f"wrote {path}",
    ]
    return "\n".join(lines)
