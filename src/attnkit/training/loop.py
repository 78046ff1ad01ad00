"""The pre-training loop: one code path for a single process and for torchrun (DDP, or FSDP2
shards with ``train.parallel = "fsdp"``; :mod:`attnkit.training.parallelism`).

    cfg = training.config.build(toml_dict, [("train.max_iters", 200)])
    summary = pretrain(cfg, "runs/char")            # or resume=True

Objectives follow the model: a GPT learns causal LM (next token), a BERT masked LM (15% of
tokens chosen, 80/10/10 mask/random/keep; :mod:`attnkit.training.objectives`). Each optimizer step sees ``batch_size x world x
grad_accum`` sequences. Every process draws the same global batch from one seeded generator
and takes its rows, and losses are normalised by the global token count, so a 2-process run
takes the same steps as one process with twice the batch.

Output directory:

* ``config.json``, ``model.safetensors``, ``tokenizer.json``: the best model so far (lowest
  val loss), loadable with ``attnkit.load(out)``;
* ``checkpoints/step-NNNNNN/``: the latest checkpoints, with optimizer and RNG states and a
  manifest of SHA-256 digests (:mod:`attnkit.training.checkpointing`); a damaged one is
  skipped on resume;
* ``run_config.json`` (the resolved config), ``metrics.jsonl``/``metrics.csv``,
  ``loss.png`` and ``summary.json``.

A directory that already holds a run is refused unless ``resume`` (continue it) or
``overwrite`` (replace it; the old run is kept aside until the new run's first checkpoint is
complete) is given, and paths that lead out of the directory are refused
(:mod:`attnkit.training.rundir`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from attnkit import checkpoints as ckpt_io
from attnkit._util import checks, faults
from attnkit._util.fs import atomic_write_json
from attnkit.training import distributed, loggers, metrics, optim, precision, rundir
from attnkit.training.checkpointing import damaged_checkpoints, latest_checkpoint
from attnkit.training.config import RunConfig, check_train
from attnkit.training.objectives import Batches, loss_sum, loss_sums
from attnkit.training.parallelism import Parallel
from attnkit.training.rundir import has_checkpoint, open_run_dir
from attnkit.training.speed import budget_spent, compile_model, steady_tokens_per_second
from attnkit.training.warmstart import warm_start

if TYPE_CHECKING:  # pragma: no cover - for static tools only
    from tokenizers import Tokenizer

    from attnkit.models.common import ModelBase
    from attnkit.models.config import ModelConfig
    from attnkit.text.datasets import TokenStream

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# data and model
# --------------------------------------------------------------------------------------------
def prepare_data(
    cfg: RunConfig, d: distributed.Dist, tokenizer: Tokenizer | None = None
) -> tuple[Tokenizer, dict[str, TokenStream]]:
    """(tokenizer, {"train", "val"} streams); rank 0 builds the caches, the others wait.
    ``tokenizer`` (train.init_from's) replaces the one data.tokenizer would build.

    Args:
        cfg: the run config (``data.*``).
        d: this process's place in the process group.
        tokenizer: a tokenizer to use instead of building one, or None.

    Returns:
        ``(tokenizer, {"train": stream, "val": stream})``.

    Examples:
        >>> tok, streams = prepare_data(build({}, []), distributed.init("cpu"))
    """
    from attnkit._util.fs import cache_dir
    from attnkit.text.corpora import load_corpus
    from attnkit.text.datasets import build_streams
    from attnkit.text.tokenizers import build_tokenizer

    def make():
        corpus = load_corpus(cfg.data.corpus)
        vocab = cfg.data.vocab_size or None
        tok = tokenizer
        if tok is None:
            tok = build_tokenizer(
                cfg.data.tokenizer, corpus.text, corpus.checksum, vocab, cache_dir()
            )
        return tok, build_streams(corpus, tok, cfg.data.val_fraction, cache_dir())

    if d.is_main:
        result = make()
        distributed.barrier(d)
    else:
        distributed.barrier(d)
        result = make()
    return result


def model_config(cfg: RunConfig, tok: Tokenizer) -> ModelConfig:
    """The model config of a pre-training run: ``cfg.model`` with the tokenizer's vocab size,
    ``max_seq_len`` defaulting to ``train.block_size``, and for a BERT the mlm head and the
    ``[PAD]`` id.

    Args:
        cfg: the run config.
        tok: the run's tokenizer.

    Returns:
        The :class:`~attnkit.models.ModelConfig`.

    Raises:
        ValueError: a BERT without a ``[MASK]`` token, a head other than lm (GPT) or mlm
            (BERT), or ``train.block_size`` over ``model.max_seq_len``.

    Examples:
        >>> model_config(build({"model": {"n_layer": 2}}, []), tok).max_seq_len  # block_size
        64
    """
    from attnkit.models import ModelConfig

    fields = dict(cfg.model)
    fields["vocab_size"] = tok.get_vocab_size()
    fields.setdefault("max_seq_len", cfg.train.block_size)
    if fields.get("arch", "gpt") == "bert":
        fields.setdefault("head", "mlm")
        if tok.token_to_id("[MASK]") is None:
            raise ValueError(
                f"a BERT (masked LM) run needs a tokenizer with a [MASK] token; "
                f"data.tokenizer is {cfg.data.tokenizer!r}, expected 'wordpiece'"
            )
        fields.setdefault("pad_token_id", tok.token_to_id("[PAD]"))
        if fields["head"] != "mlm":
            raise ValueError(
                f"model.head must be 'mlm' for pre-training a BERT, got {fields['head']!r}"
            )
    elif fields.get("head", "lm") != "lm":
        raise ValueError(f"model.head must be 'lm' for pre-training a GPT, got {fields['head']!r}")
    if fields["max_seq_len"] < cfg.train.block_size:
        raise ValueError(
            f"train.block_size={cfg.train.block_size} exceeds model.max_seq_len="
            f"{fields['max_seq_len']}"
        )
    return ModelConfig(**fields)


@torch.no_grad()
def evaluate(
    model: torch.nn.Module, batches: Batches, iters: int, d: distributed.Dist, dtype: str, seed: int
) -> dict[str, float]:
    """Mean loss, perplexity and accuracy over ``iters`` fixed validation batches (no autograd).
    The loop passes the uncompiled model: a compiled one would compile a second graph for
    evaluation, which costs more than the few evaluation batches gain from it.

    The batches are the same at every evaluation (the generator is reseeded with ``seed``),
    and the sums are all-reduced over the processes.

    Args:
        model: the (unwrapped, uncompiled) model.
        batches: the validation :class:`~attnkit.training.objectives.Batches`.
        iters: the number of batches.
        d: this process's place in the process group.
        dtype: ``train.dtype`` (the autocast precision).
        seed: the seed the batches are drawn with.

    Returns:
        ``{"loss", "perplexity", "accuracy"}`` (accuracy of the predicted target tokens).

    Examples:
        >>> evaluate(model, val_batches, iters=20, d=d, dtype="float32", seed=1339)["loss"]
    """
    was = model.training
    model.eval()
    batches.gen.manual_seed(seed)  # the same batches at every evaluation
    total = torch.zeros(3, dtype=torch.float64, device=d.device)  # loss sum, correct, count
    for i in range(iters):
        x, y, _count = batches.next()
        with precision.autocast(d.device, dtype):
            loss, correct = loss_sums(model, x, y)
        total += torch.stack([loss.double(), correct.double(), (y != -100).sum().double()])
        if i == 0:
            faults.point("in-eval")
    if d.enabled:
        torch.distributed.all_reduce(total)
    model.train(was)
    mean_loss = float(total[0] / total[2])
    return {
        "loss": mean_loss,
        "perplexity": math.exp(min(mean_loss, 700.0)),
        "accuracy": float(total[1] / total[2]),
    }


# --------------------------------------------------------------------------------------------
# the loop
# --------------------------------------------------------------------------------------------
def pretrain(
    cfg: RunConfig, out: str | Path, resume: bool = False, overwrite: bool = False
) -> dict[str, Any]:
    """Train, evaluate and checkpoint as ``cfg`` says; returns the summary (also written to
    ``out/summary.json``). ``train.threads`` is applied by the command line (a library never
    changes the process's thread pool; a caller sets its own).

    ``out`` holding a run already is a ValueError (:class:`~attnkit.training.rundir.RunExistsError`)
    unless ``resume=True`` (continue from its latest complete checkpoint) or ``overwrite=True``
    (start afresh; its files are deleted once the new run's first checkpoint is complete, and
    restored if the new run ends before that). Paths are checked as
    :func:`attnkit.training.rundir.check_paths` says.

    A config with ``model.arch = "encdec"`` trains an encoder-decoder
    (:func:`attnkit.training.seq2seq.pretrain_seq2seq`, ``train.parallel = "ddp"`` only).

    Args:
        cfg: the run config (see :func:`build`).
        out: the output directory.
        resume: continue the run in ``out`` from its latest complete checkpoint (from step 0,
            with a warning, when it has none).
        overwrite: replace the run in ``out``.

    Returns:
        The summary: val loss and perplexity, best val loss, iters, tokens, tokens per second
        (``tokens_per_second`` over the summed step times; ``steady_tokens_per_second`` over
        the median step, :func:`attnkit.training.speed.steady_tokens_per_second`), each step's wall-clock seconds
        (``step_seconds``, between the ends of consecutive steps; ``busy_steps`` index those
        that hold an evaluation or checkpoint, ``first_step_seconds`` includes compilation),
        wall and setup seconds, what stopped the run (``stopped_by``), parameters and more.

    Raises:
        ValueError: a setting out of range, ``resume`` and ``overwrite`` both set, ``out``
            holding a run without either, or every complete checkpoint damaged on resume.

    Examples:
        >>> pretrain(build({}, [("train.max_iters", 200)]), "runs/char")["val_loss"]
    """

    t_start = time.perf_counter()
    out = Path(out)
    tc = cfg.train
    checks.flag("resume", resume)
    checks.flag("overwrite", overwrite)
    if resume and overwrite:
        raise ValueError(
            "resume=True and overwrite=True ask for opposite things; expected at most one "
            "(--resume continues the run in the directory, --overwrite replaces it)"
        )
    if cfg.model.get("arch") == "encdec":  # pairs or span corruption: its own batches and eval
        from attnkit.training.seq2seq import pretrain_seq2seq

        check_train(cfg)
        if tc.parallel != "ddp":  # its loop replicates the model (DDP) and shards nothing
            raise ValueError(
                f"train.parallel={tc.parallel!r} is not supported for an encoder-decoder run "
                f"(model.arch='encdec'); expected 'ddp'"
            )
        return pretrain_seq2seq(cfg, out, resume=resume, overwrite=overwrite)
    check_train(cfg)
    loggers.parse_loggers(tc.logger)  # a missing extra is an error before any work
    d = distributed.init(tc.device)
    return distributed.run_in_group(d, _pretrain_in_group, cfg, d, out, resume, overwrite, t_start)


def _pretrain_in_group(
    cfg: RunConfig, d: distributed.Dist, out: Path, resume: bool, overwrite: bool, t_start: float
) -> dict[str, Any]:
    """The body of :func:`pretrain` inside the process group (returning frees its DDP
    wrapper before the group ends)."""
    from attnkit.models import build_model

    tc = cfg.train
    precision.check_dtype(tc.dtype, d.device)
    par = Parallel(tc.parallel, d, compile=tc.compile)
    replacing = open_run_dir(out, d, resume, overwrite)
    warm = warm_start(cfg, resume and has_checkpoint(out))  # train.init_from, or None
    tok, streams = prepare_data(cfg, d, None if warm is None else warm.tokenizer)
    mcfg = model_config(cfg, tok) if warm is None else warm.config
    objective = "clm" if mcfg.arch == "gpt" else "mlm"
    torch.manual_seed(tc.seed)  # same initial weights on every rank
    raw = build_model(mcfg).to(d.device)
    if warm is not None:
        warm.load_into(raw)
    par.prepare(raw)  # FSDP shards it in place, before the optimizer takes its parameters
    optimizer = optim.make_optimizer(
        raw, tc.lr, tc.weight_decay, (tc.beta1, tc.beta2), d.device, fused=tc.fused_adamw
    )
    train_batches = Batches(streams["train"], cfg, d, objective, tok, tc.seed + 1)
    val_batches = Batches(streams["val"], cfg, d, objective, tok, tc.seed + 2)
    init_val = None  # the warm start's loss on the windows every evaluation uses
    if warm is not None:
        init_val = evaluate(raw, val_batches, tc.eval_iters, d, tc.dtype, tc.seed + 2)
        if d.is_main:
            logger.info("attnkit: step 0 (train.init_from): val loss %.4f", init_val["loss"])
    start, best, tokens_before, elapsed_before = 0, math.inf, 0, 0.0
    if resume:
        found = latest_checkpoint(out)
        damaged = damaged_checkpoints(out) if found is None else []
        if damaged:  # finished checkpoints, all damaged: starting over would hide it
            where, problem = damaged[-1]
            raise ValueError(
                f"--resume: every complete checkpoint in {out / 'checkpoints'} is damaged "
                f"({len(damaged)}; the newest, {where.name}: {problem}); expected at least "
                f"one intact checkpoint: restore it, or pass --overwrite to start the run over"
            )
        if found is None:
            if d.is_main:
                logger.warning(
                    "attnkit: --resume: no complete checkpoint in %s; starting from step 0",
                    out / "checkpoints",
                )
        else:
            state = par.load_checkpoint(found, raw, optimizer)
            train_batches.gen.set_state(state["data_rng"])
            start, best = int(state["step"]), float(state["best_val_loss"])
            tokens_before, elapsed_before = int(state["tokens"]), float(state["elapsed"])
            if d.is_main:
                logger.info("attnkit: resumed from %s (step %d)", found, start)
    resolved = cfg.to_dict()
    resolved["model"] = mcfg.to_dict()
    if d.is_main:
        atomic_write_json(out / "run_config.json", resolved)
    model: torch.nn.Module = raw
    if tc.compile:
        prime = None  # a sharded model's forward is collective: it is not run here
        if not par.sharded:
            prime = torch.zeros(1, tc.block_size, dtype=torch.long, device=d.device)
        model = compile_model(raw, tc.elementwise_threads, d.device, prime)
    model = par.wrap(model)
    log = None
    if d.is_main:
        resume_step = start if resume else None
        log = loggers.open_loggers(
            tc.logger,
            out,
            metrics=metrics.MetricsLog(out, resume_step=resume_step),
            resume_step=resume_step,
            config=resolved,
        )
    if log is not None and init_val is not None:  # train.init_from: the loss it starts at
        log.log(
            step=start,
            split="val",
            loss=init_val["loss"],
            perplexity=init_val["perplexity"],
            accuracy=init_val["accuracy"] if mcfg.arch == "bert" else "",
            elapsed_seconds=0.0,
        )
    try:
        summary = _train(
            cfg,
            d,
            out,
            raw,
            model,
            tok,
            optimizer,
            train_batches,
            val_batches,
            start,
            best,
            tokens_before,
            elapsed_before,
            log,
            replacing,
            par,
        )
    finally:
        if log is not None:
            log.close()
    summary["setup_seconds"] = round(time.perf_counter() - t_start - summary["loop_seconds"], 3)
    if init_val is not None:
        summary["init_from"] = str(warm.source) if warm is not None else None
        summary["init_val_loss"] = init_val["loss"]
    if d.is_main:
        atomic_write_json(out / "summary.json", summary)
        metrics.plot_loss(out / "metrics.jsonl", out / "loss.png")
    return summary


def _train(
    cfg: RunConfig,
    d: distributed.Dist,
    out: Path,
    raw: ModelBase,
    model: torch.nn.Module,
    tok: Tokenizer,
    optimizer: torch.optim.Optimizer,
    train_batches: Batches,
    val_batches: Batches,
    start: int,
    best: float,
    tokens_before: int,
    elapsed_before: float,
    log: loggers.RunLog | None,
    replacing: bool = False,
    par: Parallel | None = None,
) -> dict[str, Any]:
    tc = cfg.train
    par = par or Parallel("ddp", d)
    decay_iters = tc.lr_decay_iters or tc.max_iters
    ckpt_every = tc.checkpoint_interval or tc.eval_interval
    scaler = precision.grad_scaler(d.device, tc.dtype)
    tokens_per_step = tc.batch_size * tc.block_size * tc.grad_accum * d.world_size
    flops_per_token = raw.flops_per_token(seq_len=tc.block_size, training=True)
    stopped_by: str | None = None
    bar = None
    if d.is_main and tc.progress:
        from tqdm.auto import tqdm

        bar = tqdm(
            total=tc.max_iters,
            initial=start,
            desc="pretrain",
            unit="step",
            dynamic_ncols=True,
            mininterval=0.5,
        )
    last_val: dict[str, Any] | None = None
    loop_t0 = time.perf_counter()
    train_seconds = 0.0
    # wall-clock between the ends of consecutive optimizer steps (the first from the loop's
    # start), as nanoGPT logs its iteration time; ``busy`` are the steps whose interval holds
    # an evaluation or a checkpoint of the step before
    step_seconds: list[float] = []
    busy: list[int] = []
    after_work = False
    mark = loop_t0
    step = start
    model.train()
    while step < tc.max_iters:
        t0 = time.perf_counter()
        lr = optim.lr_at(
            step, lr=tc.lr, min_lr=tc.min_lr, warmup=tc.warmup_iters, decay_iters=decay_iters
        )
        optim.set_lr(optimizer, lr)
        step_loss = torch.zeros((), dtype=torch.float64, device=d.device)
        for micro in range(tc.grad_accum):
            x, y, count = train_batches.next()
            sync: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
            if micro < tc.grad_accum - 1:
                sync = par.no_sync(model)
            with sync:
                with precision.autocast(d.device, tc.dtype):
                    summed = loss_sum(model, x, y)
                # the global mean over this micro-batch; DDP averages gradients over ranks
                loss = summed * (d.world_size / (count * tc.grad_accum))
                (scaler.scale(loss) if scaler else loss).backward()
            step_loss += loss.detach().double() / d.world_size
        optim.clip_and_step(optimizer, raw.parameters(), tc.grad_clip, scaler)
        optimizer.zero_grad(set_to_none=True)
        step += 1
        now = time.perf_counter()
        train_seconds += now - t0
        if after_work:
            busy.append(len(step_seconds))
        step_seconds.append(now - mark)
        mark, after_work = now, False
        tokens_now = tokens_before + (step - start) * tokens_per_step
        stopped_by = budget_spent(
            tc, tokens_now, elapsed_before + time.perf_counter() - loop_t0, flops_per_token
        )
        if d.enabled and tc.budget_seconds:  # clocks differ: every rank stops when one does
            flag = torch.tensor(float(stopped_by is not None), device=d.device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            stopped_by = "budget_seconds" if flag.item() else None
        last = step == tc.max_iters or stopped_by is not None
        if step % tc.log_interval == 0 or last:
            total = distributed.mean(step_loss, d) * d.world_size if d.enabled else step_loss
            loss_value = float(total)
            tps = (step - start) * tokens_per_step / max(train_seconds, 1e-9)
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
                bar.set_postfix(
                    loss=f"{loss_value:.4f}", tok_s=f"{tps:,.0f}", lr=f"{lr:.2e}", refresh=False
                )
        if bar is not None:
            bar.update(1)
        if step % tc.eval_interval == 0 or last:
            last_val = evaluate(raw, val_batches, tc.eval_iters, d, tc.dtype, tc.seed + 2)
            last_val["step"] = step
            if log is not None:
                log.log(
                    step=step,
                    split="val",
                    loss=last_val["loss"],
                    perplexity=last_val["perplexity"],
                    accuracy=last_val["accuracy"] if raw.config.arch == "bert" else "",
                    elapsed_seconds=round(elapsed_before + time.perf_counter() - loop_t0, 3),
                )
            if bar is not None:
                bar.write(
                    f"step {step}: val loss {last_val['loss']:.4f}, ppl {last_val['perplexity']:.2f}"
                    + (
                        f", masked acc {last_val['accuracy']:.3f}"
                        if raw.config.arch == "bert"
                        else ""
                    )
                )
            if last_val["loss"] < best:
                best = last_val["loss"]
                par.save_model(raw, out, tok)
            after_work = True
        if step % ckpt_every == 0 or last:
            state = {
                "step": step,
                "best_val_loss": best,
                "tokens": tokens_now,
                "elapsed": elapsed_before + time.perf_counter() - loop_t0,
                "data_rng": train_batches.gen.get_state(),
            }
            par.save_checkpoint(out, raw, tok, optimizer, state, tc.keep_checkpoints)
            if replacing:  # the new run can be resumed now: the old one may go
                rundir.discard_replaced(out)
                replacing = False
            distributed.barrier(d)
            after_work = True
        if stopped_by is not None:
            break
    if bar is not None:
        bar.close()
    loop_seconds = time.perf_counter() - loop_t0
    missing = float(d.is_main and not (out / ckpt_io.CONFIG_NAME).is_file())
    if distributed.total(torch.tensor(missing, device=d.device), d).item():  # every rank agrees
        par.save_model(raw, out, tok)
    trained = (step - start) * tokens_per_step
    summary = {
        "val_loss": last_val["loss"] if last_val else None,
        "val_perplexity": last_val["perplexity"] if last_val else None,
        "best_val_loss": best if math.isfinite(best) else None,
        "iters": step,
        "resumed_from": start,
        "wall_seconds": round(loop_seconds, 3),
        "loop_seconds": loop_seconds,
        "train_seconds": round(train_seconds, 3),
        "tokens_per_second": round(trained / max(train_seconds, 1e-9), 1),
        "steady_tokens_per_second": _round(
            steady_tokens_per_second(step_seconds, tokens_per_step, exclude=busy)
        ),
        "first_step_seconds": round(step_seconds[0], 3) if step_seconds else None,
        "step_seconds": [round(t, 6) for t in step_seconds],
        "busy_steps": busy,
        "tokens": tokens_before + trained,
        "flops_per_token": flops_per_token,
        "stopped_by": stopped_by or ("max_iters" if step >= tc.max_iters else None),
        "world_size": d.world_size,
        "parameters": sum(p.numel() for p in raw.parameters()),
        "vocab_size": raw.config.vocab_size,
        "objective": "causal LM" if raw.config.arch == "gpt" else "masked LM",
    }
    if last_val and raw.config.arch == "bert":
        summary["val_masked_accuracy"] = last_val["accuracy"]
    return summary


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def format_summary(s: dict[str, Any], out: Path) -> str:
    """The lines a finished run reports (what ``attnkit pretrain`` prints).

    Args:
        s: the summary :func:`pretrain` returned.
        out: the run directory.

    Returns:
        The text, lines joined by newlines.

    Examples:
        >>> print(format_summary(pretrain(cfg, "runs/char"), Path("runs/char")))
    """
    lines = [
        f"pre-training done: {s['objective']}, {s['parameters']:,} parameters, vocab {s['vocab_size']}",
        f"  iters {s['iters']}  wall {s['wall_seconds']:.1f}s  {s['tokens_per_second']:,.0f} tokens/s",
    ]
    if s["val_loss"] is not None:
        lines.append(
            f"  val loss {s['val_loss']:.4f} (best {s['best_val_loss']:.4f}), "
            f"perplexity {s['val_perplexity']:.2f}"
        )
    for split in ("val", "test"):
        if f"{split}_bleu" in s:
            lines.append(
                f"  {split} BLEU {s[f'{split}_bleu']:.2f}, chrF {s[f'{split}_chrf']:.2f} "
                f"({s[f'{split}_sentences']} sentences)"
            )
    if "val_masked_accuracy" in s:
        lines.append(f"  masked-token accuracy {s['val_masked_accuracy']:.3f}")
    lines.append(f"  model: {out}  checkpoints: {out / 'checkpoints'}")
    return "\n".join(lines)
