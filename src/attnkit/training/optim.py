"""AdamW with weight-decay groups, and the learning-rate schedule: linear warmup, then cosine
(pre-training) or linear (fine-tuning) decay."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW parameter groups: matrices (embeddings, projections) decay; biases and norm gains
    (1-D) do not. Frozen parameters are left out and tied weights appear once.

    Args:
        model: the model whose parameters are grouped.
        weight_decay: the decay of the first group (the second has 0.0).

    Returns:
        Two groups, ``{"params": [...], "weight_decay": ...}``: the matrices with
        ``weight_decay``, then the rest with 0.0.

    Examples:
        >>> [len(g["params"]) for g in param_groups(nn.Linear(4, 2), 0.1)]
        [1, 1]
    """
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    seen: set[int] = set()
    for _, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:  # tied weights appear once
            continue
        seen.add(id(p))
        (decay if p.dim() >= 2 else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def make_optimizer(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float],
    device: torch.device,
    fused: bool = True,
) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups`, fused (one kernel for all parameters) where this build
    supports it, else ``foreach`` on CUDA.

    Args:
        model: the model to optimize.
        lr: the learning rate (the loop sets it every step with :func:`set_lr`).
        weight_decay: decay of the matrices (biases and norm gains get none).
        betas: Adam's ``(beta1, beta2)``.
        device: the parameters' device (picks ``foreach`` when not fused).
        fused: try the fused implementation first.

    Returns:
        The ``torch.optim.AdamW``.

    Examples:
        >>> opt = make_optimizer(nn.Linear(4, 2), 1e-3, 0.1, (0.9, 0.99), torch.device("cpu"))
    """
    groups = param_groups(model, weight_decay)
    if fused:
        try:
            return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=True)
        except (RuntimeError, TypeError, ValueError):
            pass
    return torch.optim.AdamW(groups, lr=lr, betas=betas, foreach=device.type == "cuda")


DECAYS = ("cosine", "linear")


def lr_at(
    step: int, *, lr: float, min_lr: float, warmup: int, decay_iters: int, decay: str = "cosine"
) -> float:
    """Linear warmup for ``warmup`` steps, then ``decay`` ("cosine", or "linear" as BERT
    fine-tuning does) to ``min_lr`` at ``decay_iters``, flat after. ``step`` counts from 0
    (the step about to be taken).

    Args:
        step: the step about to be taken, from 0.
        lr: the peak learning rate, reached at the end of warmup.
        min_lr: the final learning rate.
        warmup: warmup steps (``lr * (step + 1) / (warmup + 1)`` during them).
        decay_iters: the step at which ``min_lr`` is reached.
        decay: "cosine" or "linear".

    Returns:
        The learning rate for ``step``.

    Raises:
        ValueError: ``decay`` is neither "cosine" nor "linear" (raised once past warmup).

    Examples:
        >>> lr_at(500, lr=1e-3, min_lr=1e-4, warmup=100, decay_iters=500)
        0.0001
    """
    if step < warmup:
        return lr * (step + 1) / (warmup + 1)
    if step >= decay_iters:
        return min_lr
    progress = (step - warmup) / max(1, decay_iters - warmup)
    if decay == "linear":
        return min_lr + (1.0 - progress) * (lr - min_lr)
    if decay != "cosine":
        raise ValueError(f"decay must be one of {list(DECAYS)}, got {decay!r}")
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (lr - min_lr)


def clip_and_step(
    optimizer: torch.optim.Optimizer,
    parameters: Iterable[nn.Parameter],
    grad_clip: float,
    scaler: torch.amp.GradScaler | None = None,
) -> None:
    """One optimizer step: unscale the gradients (float16's ``scaler``), clip their norm to
    ``grad_clip`` (0: no clipping), step (through the scaler, which skips non-finite steps).
    The gradients are not zeroed.

    Args:
        optimizer: the optimizer to step.
        parameters: the parameters whose gradient norm is clipped.
        grad_clip: the largest total gradient norm; 0 for no clipping.
        scaler: float16's loss scaler (:func:`attnkit.training.precision.grad_scaler`), or None.

    Examples:
        >>> clip_and_step(opt, model.parameters(), grad_clip=1.0)  # after loss.backward()
    """
    if scaler is not None:
        scaler.unscale_(optimizer)
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(parameters, grad_clip)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()


def set_lr(optimizer: torch.optim.Optimizer, value: float) -> None:
    """Set every parameter group's learning rate to ``value``.

    Args:
        optimizer: the optimizer whose groups are set.
        value: the new learning rate.

    Examples:
        >>> set_lr(opt, lr_at(step, lr=1e-3, min_lr=1e-4, warmup=100, decay_iters=2000))
    """
    for group in optimizer.param_groups:
        group["lr"] = value
