"""One point of a sweep: a normal pre-training run directory, and the record the table shows.

:func:`run_point` trains point ``i`` of a :class:`~attnkit.experiments.spec.SweepSpec` into
``out/points/<name>`` with :func:`attnkit.training.loop.pretrain` (resuming the directory's
run when it holds one, and reusing it untouched when that run already finished), then reads
its ``summary.json`` and ``metrics.jsonl`` into one record: sizes (parameters, non-embedding
parameters, FLOPs per token), tokens seen, wall time, tokens/s, best and final validation
loss, the validation curve, and a digest of the validation windows the run evaluated on (equal
digests: equal windows).

Token and FLOP budgets also set ``train.max_iters`` to the steps the budget buys, so the
learning-rate schedule ends where the budget does; a seconds budget stops the run on the
clock, under the config's schedule.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from attnkit.experiments.spec import SweepSpec
from attnkit.training import rundir
from attnkit.training.config import RunConfig
from attnkit.training.distributed import Dist
from attnkit.training.metrics import read_rows

if TYPE_CHECKING:  # pragma: no cover - for static tools only
    from tokenizers import Tokenizer

    from attnkit.text.datasets import TokenStream

__all__ = ["run_point", "train_step_op", "val_windows_digest"]

logger = logging.getLogger(__name__)


def val_windows_digest(cfg: RunConfig, tok: Tokenizer, streams: dict[str, TokenStream]) -> str:
    """SHA-256 (16 hex digits) of the validation batches a run of ``cfg`` evaluates on: the
    ``train.eval_iters`` batches that :func:`attnkit.training.loop.evaluate` draws from the
    validation stream with seed ``train.seed + 2``.

    Args:
        cfg: the run config.
        tok: the run's tokenizer.
        streams: the run's token streams; ``"val"`` is read.

    Examples:
        >>> len(val_windows_digest(cfg, tok, streams))
        16
    """
    from attnkit.training.objectives import Batches

    objective = "mlm" if cfg.model.get("arch", "gpt") == "bert" else "clm"
    seed = cfg.train.seed + 2
    batches = Batches(streams["val"], cfg, Dist(), objective, tok, seed)
    batches.gen.manual_seed(seed)
    h = hashlib.sha256()
    for _ in range(cfg.train.eval_iters):
        x, y, _count = batches.next()
        h.update(x.numpy().tobytes())
        h.update(y.numpy().tobytes())
    return h.hexdigest()[:16]


def train_step_op(
    model_config: dict[str, Any], batch_size: int, block_size: int, device: str
) -> Any:
    """One optimizer step of a model of ``model_config`` on random tokens: the operation
    :func:`attnkit.bench.memory.measure_peak_memory` measures in a fresh process (its warm-up
    call makes the optimizer state, so the reading is what a step adds beyond the weights and
    that state).

    Args:
        model_config: a :class:`attnkit.models.ModelConfig` as a dict.
        batch_size: rows of the random (batch_size, block_size) token batch.
        block_size: tokens per row.
        device: the device to build the model on, e.g. ``"cpu"`` or ``"cuda"``.

    Returns:
        A function of no arguments that runs one AdamW step.

    Examples:
        >>> step = train_step_op(ModelConfig(vocab_size=64).to_dict(), 2, 16, "cpu"); step()
    """
    from attnkit.models import ModelConfig, build_model
    from attnkit.training.objectives import loss_sums

    dev = torch.device(device)
    torch.manual_seed(0)
    cfg = ModelConfig.from_dict(model_config)
    model = build_model(cfg).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randint(0, cfg.vocab_size, (batch_size, block_size), device=dev)
    y = torch.randint(0, cfg.vocab_size, (batch_size, block_size), device=dev)

    def step() -> None:
        loss, _ = loss_sums(model, x, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def _budget_steps(spec: SweepSpec, cfg: RunConfig, flops_per_token: float) -> int | None:
    """The optimizer steps a token or FLOP budget buys (None for a seconds budget)."""
    tc = cfg.train
    per_step = tc.batch_size * tc.block_size * tc.grad_accum
    if spec.budget.kind == "tokens":
        return max(1, math.ceil(spec.budget.amount / per_step))
    if spec.budget.kind == "flops":
        return max(1, math.ceil(spec.budget.amount / (flops_per_token * per_step)))
    return None


def _finished(out: Path) -> dict[str, Any] | None:
    """The summary of a run in ``out`` that ended (its last checkpoint is its last step)."""
    from attnkit.training.checkpointing import latest_checkpoint

    path = out / "summary.json"
    found = latest_checkpoint(out)
    if not path.is_file() or found is None:
        return None
    summary = json.loads(path.read_text())
    if summary.get("stopped_by") and found.name == f"step-{int(summary['iters']):06d}":
        return summary
    return None


def run_point(spec: SweepSpec, index: int, out: str | Path) -> dict[str, Any]:
    """Train point ``index`` of ``spec`` into ``out/points/<name>`` and return its record.

    A run already in the directory is resumed, or reused when it had finished.

    Args:
        spec: the sweep.
        index: the point's index in ``spec.points``.
        out: the sweep's output directory.

    Returns:
        The record (see the module docstring), with ``peak_memory_bytes`` when
        ``spec.measure_memory``.

    Raises:
        RuntimeError: the run logged no validation loss.

    Examples:
        >>> run_point(spec, 0, "runs/sweep")["best_val_loss"]
    """
    from attnkit.models import build_model
    from attnkit.training.loop import model_config, prepare_data, pretrain

    out = Path(out)
    run_dir = out / "points" / spec.name(index)
    cfg = spec.config(index)
    tok, streams = prepare_data(cfg, Dist())
    mcfg = model_config(cfg, tok)
    torch.manual_seed(cfg.train.seed)
    model = build_model(mcfg)
    fpt = model.flops_per_token(seq_len=cfg.train.block_size, training=True)
    steps = _budget_steps(spec, cfg, fpt)
    if steps is not None:
        cfg = spec.config(index, [("train.max_iters", steps), ("train.lr_decay_iters", 0)])
    summary = _finished(run_dir)
    if summary is None:
        resume = bool(rundir.existing_run(run_dir))
        logger.info(
            "attnkit: sweep point %d %s%s",
            index,
            spec.points[index],
            " (resumed)" if resume else "",
        )
        summary = pretrain(cfg, run_dir, resume=resume)
    else:
        logger.info("attnkit: sweep point %d had finished; its run is reused", index)
    rows = read_rows(run_dir / "metrics.jsonl")
    per_step = cfg.train.batch_size * cfg.train.block_size * cfg.train.grad_accum
    curve = [[r["step"], r["step"] * per_step, r["loss"]] for r in rows if r["split"] == "val"]
    if not curve:
        raise RuntimeError(f"sweep point {index}: {run_dir} logged no validation loss")
    record: dict[str, Any] = {
        "point": index,
        "name": spec.name(index),
        "params": dict(spec.points[index]),
        "run_dir": str(run_dir.relative_to(out)),
        "parameters": model.num_parameters(),
        "non_embedding_parameters": model.num_parameters(exclude_embeddings=True),
        "flops_per_token": fpt,
        "tokens": int(summary["tokens"]),
        "compute_flops": fpt * int(summary["tokens"]),
        "wall_seconds": float(rows[-1].get("elapsed_seconds") or summary["wall_seconds"]),
        "tokens_per_second": float(summary["tokens_per_second"]),
        "best_val_loss": min(c[2] for c in curve),
        "final_val_loss": curve[-1][2],
        "iters": int(summary["iters"]),
        "stopped_by": summary.get("stopped_by"),
        "n_layer": mcfg.n_layer,
        "d_model": mcfg.d_model,
        "n_heads": mcfg.n_heads,
        "attention": mcfg.attention,
        "block_size": cfg.train.block_size,
        "batch_size": cfg.train.batch_size,
        "val_windows": val_windows_digest(cfg, tok, streams),
        "curve": curve,
    }
    if spec.measure_memory:
        from attnkit.bench.memory import measure_peak_memory

        device = "cuda" if cfg.train.device == "cuda" else "cpu"
        if cfg.train.device == "auto" and torch.cuda.is_available():
            device = "cuda"
        reading = measure_peak_memory(
            train_step_op,
            (mcfg.to_dict(), cfg.train.batch_size, cfg.train.block_size, device),
            device=device,
            timeout=600,
        )
        record["peak_memory_bytes"] = int(reading.peak_bytes)
    return record
