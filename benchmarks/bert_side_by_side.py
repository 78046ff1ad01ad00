"""Masked-LM pre-training side by side with Hugging Face ``BertForMaskedLM``, at equal wall time.

    python benchmarks/bert_side_by_side.py [--config bert-shakespeare] [--seconds 300]
        [--data CORPUS] [--out bench_out] [--threads 2] [--hf-recipe config|bert]
        [--hf bert,roformer]

Two models of the shape the config gives (vocabulary, width, layers, heads, MLP width, positions,
norm eps), trained one after the other on the same machine with the same threads:

1. attnkit, exactly as a user gets it: ``python -m attnkit pretrain --config CONFIG`` in a
   subprocess, with ``train.budget_seconds = --seconds`` added (nothing else changed);
2. ``transformers.BertForMaskedLM`` (learned absolute positions, whatever the config's; and
   ``RoFormerForMaskedLM``, the same BERT with rotary positions, when the config has RoPE or
   ``--hf`` names it) with HF's own initialisation, trained by a plain PyTorch loop written
   here (AdamW without decay on biases and LayerNorm gains, gradient clipping) for as many
   seconds of training steps as attnkit spent on its training steps. The learning
   rate follows the config's schedule (``--hf-recipe config``: linear warmup, cosine decay to
   ``min_lr``) or the BERT paper's recipe scaled to the run (``--hf-recipe bert``: lr 1e-4,
   betas (0.9, 0.999), weight decay 0.01, warmup over 1% of ``max_iters``, linear decay to 0).

Both see the same tokenizer and the same masked batches, step for step: the batches are drawn
with attnkit's masking (15%, 80/10/10) from generators seeded as the pre-training loop seeds
them (``train.seed + 1`` for training, ``train.seed + 2`` for the ``eval_iters`` held-out
batches, reseeded at every evaluation). Both are evaluated on those held-out batches at every
``eval_interval`` steps and at their last step (masked-token cross entropy in nats and masked
accuracy); evaluation (and attnkit's checkpoints) are not counted as training time. The
attnkit curve is the one its run logs; the model it saves is evaluated again here as a check
that both curves are measured on the same batches.

Baselines on the held-out masked positions: the entropy of their token distribution (the loss
of the best constant prediction, fitted on those very positions), the cross entropy of a
unigram model fitted on the training stream, and the accuracy of always predicting the most
frequent token. Prints the curves side by side and writes ``bert_side_by_side.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
HF_RECIPES = ("config", "bert")


# --------------------------------------------------------------------------------------------
# pure parts: scores, baselines, schedules, the table
# --------------------------------------------------------------------------------------------
def masked_sums(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, int, int]:
    """(summed cross entropy in nats, correct argmax predictions, counted positions) over the
    positions whose label is not -100.

    logits (B, T, V), labels (B, T).
    """
    if logits.dim() != 3 or labels.shape != logits.shape[:2]:
        raise ValueError(
            f"logits must be (B, T, V) and labels (B, T); got {tuple(logits.shape)} and "
            f"{tuple(labels.shape)}"
        )
    keep = labels != -100  # (B, T)
    picked = logits[keep].double()  # (N, V)
    target = labels[keep]  # (N,)
    loss = F.cross_entropy(picked, target, reduction="sum")
    correct = int((picked.argmax(-1) == target).sum())
    return float(loss), correct, int(target.numel())


def label_counts(labels: Iterable[torch.Tensor], vocab_size: int) -> torch.Tensor:
    """(vocab_size,) int64: how often each id is a label (ignoring -100) over the batches."""
    counts = torch.zeros(vocab_size, dtype=torch.int64)
    for y in labels:
        ids = y[y != -100].reshape(-1).long()
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab_size):
            raise ValueError(f"a label lies outside [0, {vocab_size})")
        counts += torch.bincount(ids, minlength=vocab_size)
    return counts


def entropy(counts: torch.Tensor) -> float:
    """The entropy (nats) of the distribution that ``counts`` (V,) give, zeros left out."""
    c = counts.double()
    total = float(c.sum())
    if total <= 0 or bool((c < 0).any()):
        raise ValueError("counts must be non-negative with a positive sum")
    p = c[c > 0] / total
    return float(-(p * p.log()).sum())


def unigram_baseline(
    labels: Iterable[torch.Tensor], vocab_size: int, train_counts: torch.Tensor | None = None
) -> dict[str, float]:
    """What a model that ignores the context scores on the masked positions of ``labels``.

    Returns ``entropy`` (nats: the entropy of the label distribution over those positions, the
    loss of the best constant prediction fitted on them; with few positions per vocabulary
    entry it lies well below the entropy of the text), ``top1_accuracy`` (always predicting
    the most frequent label), ``positions``, and with ``train_counts`` (token counts of the
    training text) ``train_unigram_loss``: the cross entropy of the add-one smoothed training
    unigram distribution on those positions.
    """
    counts = label_counts(labels, vocab_size).double()
    total = float(counts.sum())
    if total == 0:
        raise ValueError("no masked position (every label is -100)")
    out = {
        "entropy": entropy(counts),
        "top1_accuracy": float(counts.max() / total),
        "positions": int(total),
    }
    if train_counts is not None:
        if train_counts.shape != (vocab_size,):
            raise ValueError(
                f"train_counts must be ({vocab_size},), got {tuple(train_counts.shape)}"
            )
        q = (train_counts.double() + 1.0) / (float(train_counts.sum()) + vocab_size)
        out["train_unigram_loss"] = float(-(counts * q.log()).sum() / total)
    return out


def config_lr(step: int, *, lr: float, min_lr: float, warmup: int, decay_iters: int) -> float:
    """The config's schedule for ``step`` (from 0): ``lr * (step + 1) / (warmup + 1)`` during
    warmup, then cosine from ``lr`` to ``min_lr`` at ``decay_iters``, flat after."""
    if step < warmup:
        return lr * (step + 1) / (warmup + 1)
    if step >= decay_iters:
        return min_lr
    progress = (step - warmup) / max(1, decay_iters - warmup)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (lr - min_lr)


def bert_paper_lr(step: int, *, lr: float, warmup: int, total: int) -> float:
    """BERT's schedule: linear warmup to ``lr`` over ``warmup`` steps, linear decay to 0 at
    ``total``."""
    if step < warmup:
        return lr * (step + 1) / warmup
    return lr * max(0.0, (total - step) / max(1, total - warmup))


def baseline_line(base: dict[str, float]) -> str:
    """The baselines as one line of text."""
    return (
        f"baselines: unigram model (fitted on the training split) {base['train_unigram_loss']:.4f} "
        f"nats; unigram entropy of the validation split {base['val_split_entropy']:.4f}, of the "
        f"{base['positions']} masked positions alone {base['entropy']:.4f}; most frequent token "
        f"accuracy {base['top1_accuracy']:.3f}"
    )


def side_by_side(ours: Sequence[dict], theirs: Sequence[dict]) -> list[str]:
    """Text rows: the evaluations of both runs, matched by step (either side may have more)."""
    by_step: dict[int, list[dict | None]] = {}
    for i, rows in enumerate((ours, theirs)):
        for r in rows:
            by_step.setdefault(int(r["step"]), [None, None])[i] = r
    head = f"{'step':>6} | {'attnkit s':>9} {'loss':>7} {'acc':>6} | {'HF s':>9} {'loss':>7} {'acc':>6}"
    lines = [head, "-" * len(head)]

    def cells(r: dict | None) -> str:
        if r is None:
            return f"{'':>9} {'':>7} {'':>6}"
        return f"{r['train_seconds']:9.1f} {r['loss']:7.4f} {r['accuracy']:6.3f}"

    for step in sorted(by_step):
        a, b = by_step[step]
        lines.append(f"{step:6d} | {cells(a)} | {cells(b)}")
    return lines


# --------------------------------------------------------------------------------------------
# the runs
# --------------------------------------------------------------------------------------------
HF_MODELS = ("bert", "roformer")


def _hf_shape(mcfg: Any, model: str) -> dict[str, Any]:
    """The config fields BertConfig and RoFormerConfig share, of the attnkit config's shape."""
    if mcfg.arch != "bert" or mcfg.norm_placement != "post" or mcfg.norm != "layernorm":
        raise ValueError(
            f"HF {model} is a post-LayerNorm encoder; the config has arch={mcfg.arch!r}, "
            f"norm={mcfg.norm!r}, norm_placement={mcfg.norm_placement!r}"
        )
    if mcfg.mlp not in ("gelu", "gelu_tanh", "relu"):
        raise ValueError(f"HF {model} has a gelu/relu MLP; the config has mlp={mcfg.mlp!r}")
    return dict(
        vocab_size=mcfg.vocab_size,
        hidden_size=mcfg.d_model,
        num_hidden_layers=mcfg.n_layer,
        num_attention_heads=mcfg.n_heads,
        intermediate_size=mcfg.d_ff,
        hidden_act={"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu"}[mcfg.mlp],
        max_position_embeddings=mcfg.max_seq_len,
        type_vocab_size=max(mcfg.type_vocab_size, 1),
        layer_norm_eps=mcfg.norm_eps,
        hidden_dropout_prob=mcfg.dropout,
        attention_probs_dropout_prob=mcfg.attn_dropout,
        pad_token_id=mcfg.pad_token_id or 0,
        tie_word_embeddings=mcfg.tie_embeddings,
        initializer_range=0.02,  # HF's default
    )


def hf_bert_config(mcfg: Any):
    """A ``transformers.BertConfig`` of the shape of the attnkit BERT config ``mcfg``, with
    BERT's learned absolute positions (whatever positions ``mcfg`` has: HF BERT has no other)."""
    import transformers

    return transformers.BertConfig(**_hf_shape(mcfg, "BERT"))


def hf_roformer_config(mcfg: Any):
    """A ``transformers.RoFormerConfig`` of the shape of ``mcfg``: BERT with rotary positions
    (base 10000) in place of position embeddings, the HF form of an attnkit BERT with RoPE."""
    import transformers

    if mcfg.positional == "rope" and mcfg.rope_base != 10000.0:
        raise ValueError(f"HF RoFormer rotates with base 10000; the config has {mcfg.rope_base}")
    shape = _hf_shape(mcfg, "RoFormer")
    return transformers.RoFormerConfig(**shape, embedding_size=shape["hidden_size"])


def hf_model(mcfg: Any, kind: str) -> torch.nn.Module:
    """HF's masked-LM model ``kind`` ("bert" or "roformer") of the shape of ``mcfg``, with HF's
    own initialisation (seeded by the caller)."""
    import transformers

    if kind == "bert":
        return transformers.BertForMaskedLM(hf_bert_config(mcfg))
    if kind == "roformer":
        return transformers.RoFormerForMaskedLM(hf_roformer_config(mcfg))
    raise ValueError(f"HF model must be one of {HF_MODELS}, got {kind!r}")


@torch.no_grad()
def evaluate(logits_of: Callable[[torch.Tensor], torch.Tensor], val: Sequence[tuple]) -> dict:
    """Masked-token loss (nats) and accuracy over the held-out batches ``val`` [(x, y), ...]."""
    loss = correct = count = 0.0
    for x, y in val:
        s, c, n = masked_sums(logits_of(x), y)
        loss, correct, count = loss + s, correct + c, count + n
    return {"loss": loss / count, "accuracy": correct / count}


def plain_loop(
    model: torch.nn.Module,
    logits_of: Callable[[torch.Tensor], torch.Tensor],
    next_batch: Callable[[], tuple[torch.Tensor, torch.Tensor]],
    val: Sequence[tuple],
    *,
    lr_at: Callable[[int], float],
    betas: tuple[float, float],
    weight_decay: float,
    grad_clip: float,
    max_iters: int,
    seconds: float,
    eval_interval: int,
) -> dict[str, Any]:
    """Train ``model`` with AdamW until ``seconds`` of training steps or ``max_iters``; evaluate
    on ``val`` (time not counted) every ``eval_interval`` steps and at the last step."""
    decay, rest = [], []
    for p in model.parameters():  # no decay on biases and LayerNorm gains (the 1-D ones)
        if not p.requires_grad:
            continue
        (rest if p.dim() < 2 else decay).append(p)
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}],
        lr=lr_at(0),
        betas=betas,
    )
    curve: list[dict[str, Any]] = []
    train_s, step = 0.0, 0
    model.train()
    while step < max_iters and train_s < seconds:
        t0 = time.perf_counter()
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        x, y = next_batch()
        logits = logits_of(x)  # (B, T, V)
        loss = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), y.reshape(-1), ignore_index=-100
        )
        loss.backward()
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        train_s += time.perf_counter() - t0
        if step % eval_interval == 0 or step >= max_iters or train_s >= seconds:
            model.eval()
            curve.append({"step": step, "train_seconds": train_s, **evaluate(logits_of, val)})
            model.train()
    return {"curve": curve, "iters": step, "train_seconds": train_s}


def run_attnkit(args: argparse.Namespace, run_dir: Path, env: dict) -> dict[str, Any]:
    """``attnkit pretrain`` as a user runs it, with the wall budget; its logged curve."""
    cmd = [sys.executable, "-m", "attnkit", "pretrain", "--config", args.config]
    cmd += ["--out", str(run_dir), "--overwrite", "--train.progress", "false"]
    cmd += ["--train.budget_seconds", str(args.seconds), "--train.threads", str(args.threads)]
    if args.data:
        cmd += ["--data", args.data]
    for item in args.set:
        key, _, value = item.partition("=")
        cmd += [f"--{key}", value]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"attnkit pretrain failed:\n{proc.stderr[-3000:]}")
    summary = json.loads((run_dir / "summary.json").read_text())
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train_tps = {r["step"]: r["tokens_per_second"] for r in rows if r.get("split") == "train"}
    rc = json.loads((run_dir / "run_config.json").read_text())
    tokens_per_step = rc["train"]["batch_size"] * rc["train"]["block_size"]
    curve = []
    for r in rows:
        if r.get("split") != "val":
            continue
        tps = train_tps.get(r["step"])  # logged at every eval step: the train rate so far
        secs = r["step"] * tokens_per_step / tps if tps else float("nan")
        curve.append(
            {"step": r["step"], "train_seconds": secs, "loss": r["loss"], "accuracy": r["accuracy"]}
        )
    return {
        "curve": curve,
        "iters": summary["iters"],
        "train_seconds": summary["train_seconds"],
        "process_seconds": time.perf_counter() - t0,
        "parameters": summary["parameters"],
        "stopped_by": summary["stopped_by"],
        "best_val_loss": summary["best_val_loss"],
    }


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--config", default="bert-shakespeare", help="a shipped config or a TOML file")
    ap.add_argument("--seconds", type=float, default=300.0, help="wall budget of attnkit's loop")
    ap.add_argument("--data", default=None, help="a corpus instead of the config's")
    ap.add_argument("--out", type=Path, default=Path("bench_out"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--hf-recipe", choices=HF_RECIPES, default="config")
    ap.add_argument(
        "--hf",
        default=None,
        help="comma-separated HF models to train beside attnkit: bert (BertForMaskedLM), "
        "roformer (RoFormerForMaskedLM, BERT with RoPE); default bert, and roformer too "
        "for a config with RoPE",
    )
    ap.add_argument(
        "--only",
        choices=("both", "hf"),
        default="both",
        help="hf: train HF alone for --seconds of training steps (a diagnostic)",
    )
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="a config override given to both runs (repeatable)",
    )
    args = ap.parse_args(argv)
    if args.seconds <= 0 or args.threads <= 0:
        raise SystemExit("--seconds and --threads must be positive")
    bad = [k for k in (args.hf.split(",") if args.hf else []) if k not in HF_MODELS]
    if bad:
        raise SystemExit(f"--hf {args.hf!r}: {bad} unknown; expected names from {list(HF_MODELS)}")
    sys.path.insert(0, str(ROOT / "src"))
    import attnkit
    from attnkit.training import config as run_config
    from attnkit.training.distributed import init
    from attnkit.training.loop import model_config, prepare_data
    from attnkit.training.objectives import Batches

    torch.set_num_threads(args.threads)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), PYTHONUNBUFFERED="1")
    args.out.mkdir(parents=True, exist_ok=True)
    run_dir = args.out / "attnkit-run"
    load0 = os.getloadavg()

    overrides = [run_config.parse_override(s) for s in args.set]
    if args.data:
        overrides.append(("data.corpus", args.data))
    cfg = run_config.build(run_config.read_file(run_config.find_config(args.config)), overrides)
    tc = cfg.train
    d = init("cpu")
    tok, streams = prepare_data(cfg, d)  # the tokenizer and token files the run uses (cached)
    mcfg = model_config(cfg, tok)
    val_batches = Batches(streams["val"], cfg, d, "mlm", tok, tc.seed + 2)
    val = [val_batches.next()[:2] for _ in range(tc.eval_iters)]  # as its evaluate draws them

    def stream_counts(split: str) -> torch.Tensor:
        return torch.from_numpy(np.bincount(streams[split].data, minlength=mcfg.vocab_size))

    base = unigram_baseline([y for _, y in val], mcfg.vocab_size, stream_counts("train"))
    base["val_split_entropy"] = entropy(stream_counts("val"))
    print(
        f"config {args.config}: {mcfg.n_layer} layers x {mcfg.d_model} wide, {mcfg.n_heads} heads, "
        f"d_ff {mcfg.d_ff}, vocab {mcfg.vocab_size}; batch {tc.batch_size} x {tc.block_size}; "
        f"{args.threads} threads; load average {load0}"
    )
    print(f"held-out: {tc.eval_iters} batches, {base['positions']} masked positions")
    print(baseline_line(base))

    ours: dict[str, Any] = {"curve": [], "train_seconds": args.seconds}
    if args.only == "both":
        print(
            f"attnkit pretrain --config {args.config} (budget {args.seconds:g} s) ...", flush=True
        )
        ours = run_attnkit(args, run_dir, env)
        saved = attnkit.load(run_dir).eval()  # the best model it saved, scored here on `val`
        ours["saved_model_check"] = evaluate(lambda x: saved(x).logits, val)

    hf_kinds = (
        args.hf.split(",")
        if args.hf
        else (["bert", "roformer"] if mcfg.positional == "rope" else ["bert"])
    )
    decay_iters = tc.lr_decay_iters or tc.max_iters
    if args.hf_recipe == "config":

        def lr_at(s: int) -> float:
            return config_lr(
                s, lr=tc.lr, min_lr=tc.min_lr, warmup=tc.warmup_iters, decay_iters=decay_iters
            )

        betas, wd = (tc.beta1, tc.beta2), tc.weight_decay
    else:
        warm = max(1, tc.max_iters // 100)

        def lr_at(s: int) -> float:
            return bert_paper_lr(s, lr=1e-4, warmup=warm, total=tc.max_iters)

        betas, wd = (0.9, 0.999), 0.01
    theirs_all: dict[str, dict[str, Any]] = {}
    for kind in hf_kinds:
        torch.manual_seed(tc.seed)
        hf = hf_model(mcfg, kind)
        train_batches = Batches(streams["train"], cfg, d, "mlm", tok, tc.seed + 1)  # same draws
        name = type(hf).__name__
        print(f"HF {name}, {ours['train_seconds']:.1f} s of training steps ...", flush=True)
        theirs = plain_loop(
            hf,
            lambda x, hf=hf: hf(input_ids=x).logits,
            lambda tb=train_batches: tb.next()[:2],
            val,
            lr_at=lr_at,
            betas=betas,
            weight_decay=wd,
            grad_clip=tc.grad_clip,
            max_iters=tc.max_iters,
            seconds=ours["train_seconds"],
            eval_interval=tc.eval_interval,
        )
        # trained ones: RoFormer keeps its sin/cos table as a frozen parameter
        theirs["parameters"] = sum(p.numel() for p in hf.parameters() if p.requires_grad)
        theirs["class"] = name
        theirs_all[kind] = theirs

    print()
    params = ", ".join(f"HF {t['class']} {t['parameters']:,}" for t in theirs_all.values())
    print(
        f"parameters: attnkit {ours.get('parameters', 0):,}, {params}; HF recipe: {args.hf_recipe}"
    )
    if ours["curve"]:
        print(
            f"attnkit ({mcfg.positional} positions): {ours['iters']} steps in "
            f"{ours['train_seconds']:.1f} s of training "
            f"({ours['stopped_by']}, {ours['process_seconds']:.0f} s for the whole process)"
        )
    ok: dict[str, bool] = {}
    for theirs in theirs_all.values():
        print()
        print(
            f"attnkit vs HF {theirs['class']}: {theirs['iters']} steps in "
            f"{theirs['train_seconds']:.1f} s of training"
        )
        for line in side_by_side(ours["curve"], theirs["curve"]):
            print(line)
    print(baseline_line(base))
    if ours["curve"]:
        a = ours["curve"][-1]
        chk = ours["saved_model_check"]
        print(
            f"attnkit's saved model scored here: loss {chk['loss']:.4f}, accuracy "
            f"{chk['accuracy']:.3f} (its run logged best {ours['best_val_loss']:.4f})"
        )
        for kind, theirs in theirs_all.items():
            b = theirs["curve"][-1]
            ok[kind] = a["loss"] <= b["loss"] and a["accuracy"] >= b["accuracy"]
            print(
                f"{'PASS' if ok[kind] else 'FAIL'}  attnkit at equal wall vs HF {theirs['class']}: "
                f"loss {a['loss']:.4f} vs {b['loss']:.4f}, accuracy {a['accuracy']:.3f} vs "
                f"{b['accuracy']:.3f}"
            )
    print(f"load average after {os.getloadavg()}")
    from attnkit.bench.report import write_json

    path = write_json(
        args.out / "bert_side_by_side.json",
        {
            "config": args.config,
            "overrides": args.set,
            "seconds": args.seconds,
            "threads": args.threads,
            "hf_recipe": args.hf_recipe,
            "baseline": base,
            "attnkit": ours,
            "hf": theirs_all,
            "attnkit_at_least_hf": ok,
            "load_average": [load0, os.getloadavg()],
        },
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
