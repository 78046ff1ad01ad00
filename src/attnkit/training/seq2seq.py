"""Training an encoder-decoder: translation / summarisation pairs (teacher forcing) or T5 span
corruption on plain text, with the pre-training loop's run directory, checkpoints, resume,
budgets and torchrun.

``attnkit pretrain`` comes here when ``model.arch = "encdec"`` (see
:func:`attnkit.training.loop.pretrain`); the data is :mod:`attnkit.training.seq2seq_data`.
Each step takes ``processes x grad_accum`` batches of at most ``train.batch_tokens`` padded
tokens; the loss is the label-smoothed (``train.label_smoothing``) cross-entropy of the
targets, summed and divided by the step's target-token count (every rank counts it from the
shared batch order), so a 2-process run takes the same steps as one process over both halves.

Each evaluation reports the validation loss (plain cross-entropy, no smoothing) and, for
pairs, BLEU and chrF (:func:`attnkit.text.scores.translation_scores`) of the first
``train.eval_sentences`` validation sources decoded by
:func:`attnkit.generation.translate.translate` (greedy, or ``train.eval_num_beams`` beams);
the end of the run scores as many test sentences too. Both go into ``metrics.jsonl`` and
``summary.json``. The output directory is the loop's: the best model (lowest validation loss)
with its tokenizer, ``checkpoints/step-N`` with the optimizer state and the data position
(epoch, cursor), so ``--resume`` continues with the very batches the run would have drawn.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from attnkit import checkpoints as ckpt_io
from attnkit._util import faults
from attnkit._util.fs import atomic_write_json
from attnkit.training import distributed, metrics, optim, precision, rundir
from attnkit.training.checkpointing import (
    damaged_checkpoints,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from attnkit.training.rundir import open_run_dir
from attnkit.training.seq2seq_data import (
    EOS,
    PAD,
    Example,
    ExampleBatches,
    Seq2SeqData,
    caps,
    make_batch,
    prepare,
    special_id,
)
from attnkit.training.seq2seq_eval import decode_scores, loss_sum, validation_loss
from attnkit.training.speed import budget_spent, compile_model

if TYPE_CHECKING:  # pragma: no cover - for static tools only
    from attnkit.models.encdec import EncoderDecoder
    from attnkit.models.encdec_config import EncDecConfig
    from attnkit.training.config import RunConfig

logger = logging.getLogger(__name__)


def model_config(cfg: RunConfig, data: Seq2SeqData) -> EncDecConfig:
    """The encoder-decoder config of the run: ``cfg.model`` with the tokenizer's vocab size,
    ``<pad>`` and ``</s>`` ids (``decoder_start_token_id`` defaults to pad) and
    ``max_seq_len`` defaulting to the longer of :func:`~attnkit.training.seq2seq_data.caps`.

    Args:
        cfg: the run config.
        data: the run's data (its tokenizer).

    Returns:
        The ``EncDecConfig``.

    Raises:
        ValueError: ``model.pad_token_id`` or ``model.eos_token_id`` differs from the
            tokenizer's.

    Examples:
        >>> model_config(cfg, data).vocab_size == data.tok.get_vocab_size()
        True
    """
    from attnkit.models.encdec_config import EncDecConfig

    fields = dict(cfg.model)
    tok = data.tok
    fields["vocab_size"] = tok.get_vocab_size()
    max_src, max_tgt = caps(cfg)
    fields.setdefault("max_seq_len", max(max_src, max_tgt))
    pad, eos = special_id(tok, PAD), special_id(tok, EOS)
    for name, value in (("pad_token_id", pad), ("eos_token_id", eos)):
        if fields.setdefault(name, value) != value:
            raise ValueError(
                f"model.{name}={fields[name]} differs from the tokenizer's {value}; leave it unset"
            )
    fields.setdefault("decoder_start_token_id", pad)
    return EncDecConfig(**fields)


def _count(batches: list[list[Example]]) -> int:
    return sum(len(t) for b in batches for _, t in b)


def pretrain_seq2seq(
    cfg: RunConfig, out: str | Path, resume: bool = False, overwrite: bool = False
) -> dict[str, Any]:
    """:func:`attnkit.training.loop.pretrain` for an encoder-decoder (same arguments, same
    output directory, the summary with BLEU/chrF added for pairs). ``pretrain`` calls
    it for ``model.arch = "encdec"`` after checking the config.

    Args:
        cfg: the run config.
        out: the output directory.
        resume: continue the run in ``out`` from its latest complete checkpoint.
        overwrite: replace the run in ``out``.

    Returns:
        The summary (also written to ``out/summary.json``).

    Examples:
        >>> pretrain_seq2seq(build(read_file(find_config("translate-bible-en-es")), []), "runs/t")
    """

    t_start = time.perf_counter()
    out = Path(out)
    tc = cfg.train
    d = distributed.init(tc.device)
    return distributed.run_in_group(
        d, _pretrain_seq2seq_in_group, cfg, d, out, resume, overwrite, t_start
    )


def _pretrain_seq2seq_in_group(
    cfg: RunConfig, d: distributed.Dist, out: Path, resume: bool, overwrite: bool, t_start: float
) -> dict[str, Any]:
    """The body of :func:`pretrain_seq2seq` inside the process group (returning frees its DDP
    wrapper before the group ends)."""
    from attnkit._util.fs import cache_dir
    from attnkit.models import build_model

    tc = cfg.train
    precision.check_dtype(tc.dtype, d.device)
    replacing = open_run_dir(out, d, resume, overwrite)
    if d.is_main:
        data = prepare(cfg, cache_dir())
        distributed.barrier(d)
    else:
        distributed.barrier(d)
        data = prepare(cfg, cache_dir())
    mcfg = model_config(cfg, data)
    torch.manual_seed(tc.seed)
    raw: EncoderDecoder = build_model(mcfg).to(d.device)  # type: ignore[assignment]
    optimizer = optim.make_optimizer(
        raw, tc.lr, tc.weight_decay, (tc.beta1, tc.beta2), d.device, fused=tc.fused_adamw
    )
    max_tokens = tc.batch_tokens or tc.batch_size * tc.block_size
    batches = ExampleBatches(data, max_tokens, tc.seed + 1, d.world_size * tc.grad_accum, cfg)
    start, best, tokens_before, elapsed_before = 0, math.inf, 0, 0.0
    if resume:
        found = latest_checkpoint(out)
        damaged = damaged_checkpoints(out) if found is None else []
        if damaged:
            where, problem = damaged[-1]
            raise ValueError(
                f"--resume: every complete checkpoint in {out / 'checkpoints'} is damaged "
                f"({len(damaged)}; the newest, {where.name}: {problem}); expected at least "
                f"one intact checkpoint: restore it, or pass --overwrite to start the run over"
            )
        if found is not None:
            state = load_checkpoint(found, raw, optimizer)
            batches.seek(list(state["data_position"]))
            start, best = int(state["step"]), float(state["best_val_loss"])
            tokens_before, elapsed_before = int(state["tokens"]), float(state["elapsed"])
            if d.is_main:
                logger.info("attnkit: resumed from %s (step %d)", found, start)
        elif d.is_main:
            logger.warning(
                "attnkit: --resume: no complete checkpoint in %s; starting from step 0",
                out / "checkpoints",
            )
    resolved = cfg.to_dict()
    resolved["model"] = mcfg.to_dict()
    if d.is_main:
        atomic_write_json(out / "run_config.json", resolved)
    model: torch.nn.Module = raw
    if tc.compile:
        # every length-bucketed batch has its own (B, S, T): compiled for symbolic sizes from
        # the first step, rather than once for the first shape and again when the next differs
        model = compile_model(raw, tc.elementwise_threads, d.device, dynamic=True)
    if d.enabled:
        model = DDP(model, device_ids=[d.local_rank] if d.device.type == "cuda" else None)
    log = metrics.MetricsLog(out, resume_step=start if resume else None) if d.is_main else None
    state_in = (start, best, tokens_before, elapsed_before, replacing)
    summary = _train(cfg, d, out, raw, model, data, optimizer, batches, state_in, log)
    summary["setup_seconds"] = round(time.perf_counter() - t_start - summary["loop_seconds"], 3)
    if d.is_main:
        atomic_write_json(out / "summary.json", summary)
        metrics.plot_loss(out / "metrics.jsonl", out / "loss.png")
    return summary


def _train(
    cfg: RunConfig,
    d: distributed.Dist,
    out: Path,
    raw: EncoderDecoder,
    model: torch.nn.Module,
    data: Seq2SeqData,
    optimizer: torch.optim.Optimizer,
    batches: ExampleBatches,
    state_in: tuple[int, float, int, float, bool],
    log: metrics.MetricsLog | None,
) -> dict[str, Any]:

    tc = cfg.train
    start, best, tokens_before, elapsed_before, replacing = state_in
    decay_iters = tc.lr_decay_iters or tc.max_iters
    ckpt_every = tc.checkpoint_interval or tc.eval_interval
    scaler = precision.grad_scaler(d.device, tc.dtype)
    pad = raw.config.pad_token_id
    max_tokens = batches.max_tokens
    flops_per_token = raw.flops_per_token(seq_len=max(caps(cfg)), training=True)
    bar = None
    if d.is_main and tc.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=tc.max_iters, initial=start, desc="pretrain", unit="step", mininterval=0.5)

    def report(line: str) -> None:
        if bar is not None:
            bar.write(line)
        elif d.is_main:
            logger.info("attnkit: %s", line)

    last_val: dict[str, Any] | None = None
    stopped_by: str | None = None
    loop_t0 = time.perf_counter()
    train_seconds, trained, padded = 0.0, 0, 0
    step = start
    model.train()
    while step < tc.max_iters:
        t0 = time.perf_counter()
        lr = optim.lr_at(
            step, lr=tc.lr, min_lr=tc.min_lr, warmup=tc.warmup_iters, decay_iters=decay_iters
        )
        optim.set_lr(optimizer, lr)
        group = batches.next_step()
        count = _count(group)  # the step's target tokens over all ranks
        padded += sum(
            len(b) * (max(len(x) for x, _ in b) + max(len(y) for _, y in b)) for b in group
        )
        mine = group[d.rank :: d.world_size]
        step_loss = torch.zeros((), dtype=torch.float64, device=d.device)
        for micro, examples in enumerate(mine):
            batch = {k: v.to(d.device) for k, v in make_batch(examples, pad).items()}
            sync: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
            if isinstance(model, DDP) and micro < len(mine) - 1:
                sync = model.no_sync()
            with sync:
                with precision.autocast(d.device, tc.dtype):
                    s, _ = loss_sum(model, batch, tc.label_smoothing)
                loss = s * (d.world_size / count)
                (scaler.scale(loss) if scaler else loss).backward()
            step_loss += loss.detach().double() / d.world_size
        optim.clip_and_step(optimizer, raw.parameters(), tc.grad_clip, scaler)
        optimizer.zero_grad(set_to_none=True)
        step += 1
        train_seconds += time.perf_counter() - t0
        tokens_step = count + sum(len(s) for b in group for s, _ in b)
        trained += tokens_step
        tokens_now = tokens_before + trained
        stopped_by = budget_spent(
            tc, tokens_now, elapsed_before + time.perf_counter() - loop_t0, flops_per_token
        )
        if d.enabled and tc.budget_seconds:
            flag = torch.tensor(float(stopped_by is not None), device=d.device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            stopped_by = "budget_seconds" if flag.item() else None
        last = step == tc.max_iters or stopped_by is not None
        if step % tc.log_interval == 0 or last:
            total = distributed.total(step_loss, d) if d.enabled else step_loss
            loss_value = float(total)
            tps = trained / max(train_seconds, 1e-9)
            if log is not None:
                log.log(
                    step=step,
                    split="train",
                    loss=loss_value,
                    perplexity=math.exp(min(loss_value, 700)),
                    lr=lr,
                    tokens_per_second=round(tps, 1),
                    elapsed_seconds=round(elapsed_before + time.perf_counter() - loop_t0, 3),
                )
            if bar is not None:
                bar.set_postfix(loss=f"{loss_value:.4f}", tok_s=f"{tps:,.0f}", refresh=False)
        if bar is not None:
            bar.update(1)
        if step % tc.eval_interval == 0 or last:
            last_val = validation_loss(raw, data, max_tokens, d, tc.dtype)
            faults.point("in-eval")
            if d.is_main:
                last_val.update(decode_scores(raw, data, "validation", cfg))
            last_val["step"] = step
            line = f"step {step}: val loss {last_val['loss']:.4f}, ppl {last_val['perplexity']:.2f}"
            if "bleu" in last_val:
                line += f", BLEU {last_val['bleu']:.2f}, chrF {last_val['chrf']:.2f}"
            report(line)
            if log is not None:
                row = {k: v for k, v in last_val.items() if k != "example"}
                log.log(
                    split="val",
                    elapsed_seconds=round(elapsed_before + time.perf_counter() - loop_t0, 3),
                    **row,
                )
            if last_val["loss"] < best:
                best = last_val["loss"]
                if d.is_main:
                    ckpt_io.save(raw, out, tokenizer=data.tok)
        if step % ckpt_every == 0 or last:
            if d.is_main:
                state = {
                    "step": step,
                    "best_val_loss": best,
                    "tokens": tokens_now,
                    "elapsed": elapsed_before + time.perf_counter() - loop_t0,
                    "data_position": batches.position,
                }
                save_checkpoint(out, raw, data.tok, optimizer, state, tc.keep_checkpoints)
                if replacing:
                    rundir.discard_replaced(out)
                    replacing = False
            distributed.barrier(d)
        if stopped_by is not None:
            break
    if bar is not None:
        bar.close()
    loop_seconds = time.perf_counter() - loop_t0
    if d.is_main and not (out / ckpt_io.CONFIG_NAME).is_file():
        ckpt_io.save(raw, out, tokenizer=data.tok)
    test = decode_scores(raw, data, "test", cfg) if d.is_main else {}
    if test:
        report(
            f"test ({test['sentences']} sentences): BLEU {test['bleu']:.2f}, chrF {test['chrf']:.2f}"
        )
    summary: dict[str, Any] = {
        "val_loss": last_val["loss"] if last_val else None,
        "val_perplexity": last_val["perplexity"] if last_val else None,
        "best_val_loss": best if math.isfinite(best) else None,
        "iters": step,
        "resumed_from": start,
        "wall_seconds": round(loop_seconds, 3),
        "loop_seconds": loop_seconds,
        "train_seconds": round(train_seconds, 3),
        "tokens_per_second": round(trained / max(train_seconds, 1e-9), 1),
        "tokens": tokens_before + trained,
        "padding_fraction": round(1 - trained / padded, 4) if padded else None,
        "flops_per_token": flops_per_token,
        "stopped_by": stopped_by or ("max_iters" if step >= tc.max_iters else None),
        "world_size": d.world_size,
        "parameters": sum(p.numel() for p in raw.parameters()),
        "vocab_size": raw.config.vocab_size,
        "objective": "seq2seq" if data.objective == "seq2seq" else "span corruption",
        "data": data.name,
        "train_examples": len(data.train),
        "left_out_pairs": data.left_out,
    }
    for split, scores in (("val", last_val or {}), ("test", test)):
        for key in ("bleu", "chrf", "sentences"):
            if key in scores:
                summary[f"{split}_{key}"] = scores[key]
        if "example" in scores:
            summary[f"{split}_example"] = scores["example"]
    return summary
