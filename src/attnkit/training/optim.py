"""AdamW with weight-decay groups, and the learning-rate schedule: linear warmup, then cosine
(pre-training) or linear (fine-tuning) decay."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Matrices (embeddings, projections) decay; biases and norm gains (1-D) do not."""
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
    """AdamW, fused (one kernel for all parameters) where this build supports it."""
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
    (the step about to be taken)."""
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
    ``grad_clip`` (0: no clipping), step (through the scaler, which skips non-finite steps)."""
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
    for group in optimizer.param_groups:
        group["lr"] = value
