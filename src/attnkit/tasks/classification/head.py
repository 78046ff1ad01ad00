"""Fine-tuning with a frozen encoder: the pooled vectors computed once, the head trained on them.

``FinetuneConfig(freeze_encoder=True)``: the encoder (and a checkpoint's pooler) keep their
weights; every text is run through it once, in eval mode under ``no_grad``, and its pooled
vector (B, C) kept; the classification head (dropout + linear) is then trained on those
vectors with the same optimizer, schedule, class-weighted loss, evaluations and early stopping
as :func:`attnkit.tasks.classification.finetune.finetune`. An epoch costs a few matrix
products instead of a forward and a backward pass through the encoder, so many epochs with
early stopping are cheap; the model written is an ordinary classification checkpoint.

Under torchrun every process computes all the vectors and takes the same steps (the head is
small); only rank 0 writes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from attnkit.models.bert import Bert
from attnkit.tasks.classification.metrics import scores
from attnkit.text.batching import Batch, map_batches
from attnkit.training import distributed, optim, precision

if TYPE_CHECKING:  # pragma: no cover - for static tools only
    from attnkit.tasks.classification.finetune import FinetuneConfig, FinetuneResult

__all__ = ["pooled_vectors", "train_head"]


@torch.no_grad()
def pooled_vectors(
    net: Bert,
    ids_list: Sequence[Sequence[int]],
    batch_size: int,
    pad_id: int,
    dtype: str = "float32",
    progress: str | None = None,
) -> torch.Tensor:
    """(N, C) float32 pooled vectors in the input order: what the classification head of
    ``net`` reads (its pooler's output, or the mean / first-token pooling), eval mode.

    The forward passes run under ``no_grad`` and ``dtype`` autocast, in length-sorted batches
    on ``net``'s device; its training mode is restored afterwards.

    Args:
        net: a classification model.
        ids_list: the token ids of each of the N texts.
        batch_size: texts per forward pass.
        pad_id: the padding id.
        dtype: "float32", "bfloat16" or "float16".
        progress: a tqdm bar with this description (None: no bar).

    Examples:
        >>> pooled_vectors(net, [[101, 2000, 2022, 102]], 32, pad_id=0).shape  # MiniLM
        torch.Size([1, 384])
    """
    was_training = net.training
    net.eval()
    device = next(net.parameters()).device
    try:

        def run(batch: Batch) -> torch.Tensor:
            with precision.autocast(device, dtype):
                h = net.hidden_states(batch.ids, batch.attention_mask)  # (B, T, C)
                pooled = (
                    net.pooler(h) if net.pooler is not None else net.pool(h, batch.attention_mask)
                )
            return pooled.float()  # (B, C)

        return map_batches(ids_list, batch_size, run, pad_id, device=device, progress=progress)
    finally:
        net.train(was_training)


def train_head(
    cfg: FinetuneConfig,
    d: distributed.Dist,
    net: Bert,
    train_ids: Sequence[Sequence[int]],
    eval_ids: Sequence[Sequence[int]],
    y_train: Sequence[int],
    y_eval: Sequence[int],
    labels: list[str],
    weights: torch.Tensor,
    baseline: dict[str, Any],
    pad_id: int,
    say: Callable[[str], None],
    progress: bool,
    record: Callable[[dict[str, Any]], None] = lambda row: None,
) -> FinetuneResult:
    """Train ``net.classifier`` on the frozen encoder's pooled vectors (module docstring).

    The fine-tuning loop of :func:`~attnkit.tasks.classification.finetune.finetune` with
    ``freeze_encoder``: the head's state with the best ``cfg.metric`` is loaded back into
    ``net`` (or the last, with ``keep="last"``), every parameter is trainable again and
    ``net`` is left in eval mode.

    Args:
        cfg: the hyper-parameters (``eval_batch_size`` is also the batch of the vectors).
        d: the process group.
        net: a classification model (from ``classifier_from``) on ``d``'s device.
        train_ids: the token ids of the N training texts.
        eval_ids: the token ids of the M eval texts.
        y_train: the N training class indices.
        y_eval: the M eval class indices.
        labels: the K class names.
        weights: (K,) class weights of the loss.
        baseline: the majority-class scores, passed into the result.
        pad_id: the padding id.
        say: called with progress lines.
        progress: tqdm bars while the vectors are computed.
        record: called with each evaluation's row (step, losses, scores, seconds).

    Returns:
        The run's :class:`~attnkit.tasks.classification.finetune.FinetuneResult` (without
            ``tfidf`` and ``out``: the caller sets them).

    Examples:
        >>> result = train_head(cfg, d, net, train_ids, eval_ids, y_train, y_eval, labels,
        ...                     class_weights(y_train, len(labels)), baseline, 0, print, False)
    """
    from attnkit.tasks.classification.finetune import FinetuneResult, better

    head = net.classifier
    assert head is not None  # classifier_from built it
    for p in net.parameters():
        p.requires_grad_(False)
    for p in head.parameters():
        p.requires_grad_(True)
    start = time.perf_counter()
    bar = "vectors" if progress else None
    x_train = pooled_vectors(net, train_ids, cfg.eval_batch_size, pad_id, cfg.dtype, bar)  # (N, C)
    x_eval = pooled_vectors(net, eval_ids, cfg.eval_batch_size, pad_id, cfg.dtype, bar)  # (M, C)
    encode_seconds = time.perf_counter() - start
    y_train_t = torch.tensor(list(y_train), device=x_train.device)
    y_eval_cpu = torch.tensor(list(y_eval))
    w_dev = weights.to(x_train.device)
    optimizer = optim.make_optimizer(
        head, cfg.lr, cfg.weight_decay, (0.9, 0.999), x_train.device, fused=False
    )
    gen = torch.Generator().manual_seed(cfg.seed)
    n = len(x_train)
    per_epoch = -(-n // cfg.batch_size)
    total = per_epoch * cfg.epochs
    warmup = int(total * cfg.warmup_fraction)
    say(
        f"frozen encoder: pooled vectors of {n} training and {len(x_eval)} eval texts in "
        f"{encode_seconds:.1f} s; training the head for up to {cfg.epochs} epoch(s) of "
        f"{per_epoch} batches of {cfg.batch_size}; class weights "
        f"{[round(float(w), 3) for w in weights]}"
    )

    @torch.no_grad()
    def evaluate() -> tuple[dict[str, Any], float]:
        head.eval()
        logits = head(x_eval).float().cpu()  # (M, K)
        head.train()
        loss = float(F.cross_entropy(logits, y_eval_cpu, weight=weights))
        return scores(list(y_eval), logits.argmax(-1).tolist(), labels), loss

    history: list[dict[str, Any]] = []
    best_value: float | None = None
    best_state: dict[str, torch.Tensor] | None = None
    best_scores: dict[str, Any] = {}
    bad, step, stopped = 0, 0, False
    run_loss, run_n = 0.0, 0
    head.train()
    for epoch in range(cfg.epochs):
        order = torch.randperm(n, generator=gen).tolist()
        batches = [order[i : i + cfg.batch_size] for i in range(0, n, cfg.batch_size)]
        for b, idx in enumerate(batches):
            optim.set_lr(
                optimizer,
                optim.lr_at(
                    step,
                    lr=cfg.lr,
                    min_lr=0.0,
                    warmup=warmup,
                    decay_iters=total,
                    decay=cfg.lr_decay,
                ),
            )
            rows = torch.tensor(idx, device=x_train.device)
            logits = head(x_train[rows])  # (b, K)
            y = y_train_t[rows]
            loss = F.cross_entropy(logits, y, weight=w_dev, reduction="sum") / w_dev[y].sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optim.clip_and_step(optimizer, head.parameters(), cfg.grad_clip, None)
            step += 1
            run_loss += float(loss.detach()) * len(idx)
            run_n += len(idx)
            last = b == len(batches) - 1
            if not (
                (cfg.eval_every and step % cfg.eval_every == 0) or (not cfg.eval_every and last)
            ):
                if not (last and epoch == cfg.epochs - 1):
                    continue
            sc, eval_loss = evaluate()
            row = {
                "step": step,
                "epoch": round(step / per_epoch, 3),
                "train_loss": run_loss / max(run_n, 1),
                "eval_loss": eval_loss,
                "accuracy": sc["accuracy"],
                "macro_f1": sc["macro_f1"],
                "seconds": round(time.perf_counter() - start, 2),
            }
            history.append(row)
            record(row)
            run_loss, run_n = 0.0, 0
            value = eval_loss if cfg.metric == "loss" else sc[cfg.metric]
            improved = better(cfg.metric, value, best_value)
            if cfg.keep == "last":  # no early stopping: the state after the last step
                best_scores = {**sc, "eval_loss": eval_loss, "step": step}
                improved = False
            elif improved:
                best_value, bad = value, 0
                best_state = {k: v.detach().clone() for k, v in head.state_dict().items()}
                best_scores = {**sc, "eval_loss": eval_loss, "step": step}
            else:
                bad += 1
            if improved or len(history) % 10 == 0 or bad >= cfg.patience:
                say(
                    f"step {step} (epoch {row['epoch']:g}): train loss {row['train_loss']:.4f}, "
                    f"eval loss {eval_loss:.4f}, accuracy {sc['accuracy']:.4f}, macro-F1 "
                    f"{sc['macro_f1']:.4f}{' (best)' if improved else ''}"
                )
            if bad >= cfg.patience:
                stopped = True
                say(f"early stop: no better {cfg.metric} in {bad} evaluation(s)")
                break
        if stopped:
            break
    if best_state is not None:
        head.load_state_dict(best_state)
    for p in net.parameters():
        p.requires_grad_(True)
    net.eval()
    return FinetuneResult(
        net,
        labels,
        best_scores,
        baseline,
        history,
        [float(w) for w in weights],
        step,
        round(step / per_epoch, 3),
        stopped,
        round(time.perf_counter() - start, 2),
        world_size=d.world_size,
        is_main=d.is_main,
    )
