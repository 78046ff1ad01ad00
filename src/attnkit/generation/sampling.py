"""Choosing the next token from a step's logits: repetition penalty, temperature, top-k, top-p."""

from __future__ import annotations

import math

import torch

__all__ = ["apply_repetition_penalty", "choose_tokens", "filter_logits"]


def apply_repetition_penalty(
    logits: torch.Tensor, seen: torch.Tensor, penalty: float
) -> torch.Tensor:
    """logits (B, V); seen (B, V) bool, True for ids already in the row. Returns new logits:
    seen positive logits / penalty, seen negative logits * penalty.

    Examples:
        >>> apply_repetition_penalty(torch.tensor([[2.0, -1.0]]), torch.tensor([[True, True]]), 2.0)  # [[1.0, -2.0]]
    """
    if penalty == 1.0:
        return logits
    scaled = torch.where(logits > 0, logits / penalty, logits * penalty)  # (B, V)
    return torch.where(seen, scaled, logits)


def filter_logits(
    logits: torch.Tensor, top_k: int | None = None, top_p: float | None = None
) -> torch.Tensor:
    """logits (B, V) -> logits with the tokens outside top-k / top-p set to -inf.

    Examples:
        >>> filter_logits(torch.tensor([[1.0, 3.0, 2.0]]), top_k=2)  # [[-inf, 3.0, 2.0]]
    """
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # (B, V)
        probs = torch.softmax(sorted_logits, dim=-1)
        before = torch.cumsum(probs, dim=-1) - probs  # mass of the more likely tokens
        drop_sorted = before >= top_p
        drop_sorted[:, 0] = False  # the most likely token always stays
        drop = torch.zeros_like(drop_sorted).scatter_(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def _refuse_non_finite(top: torch.Tensor) -> None:
    """top (B,): each row's largest logit. One host sync (the chosen ids need one anyway),
    and no tensor ops: this runs at every decoding step."""
    for row, value in enumerate(top.tolist()):
        if not math.isfinite(value):
            raise ValueError(
                f"the model's logits for row {row} hold NaN or inf (non-finite weights or "
                f"activations); expected finite logits to choose a token from"
            )


def choose_tokens(
    logits: torch.Tensor,
    temperature: float,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """(B, V) logits -> (B,) token ids: arg-max for temperature 0, else a draw from the
    filtered, tempered softmax.

    ValueError when a row's logits hold NaN or +inf (a model with non-finite weights or
    activations): no token is chosen from them. The tempered logits are shifted by their row
    maximum first, so that a tiny temperature (down to the smallest float) is a clean arg-max
    instead of inf / inf.

    Examples:
        >>> choose_tokens(torch.tensor([[0.1, 2.0, 0.3]]), temperature=0.0)  # tensor([1])
    """
    if temperature == 0:
        top, ids = logits.max(dim=-1)  # (B,) each, in one pass; top is NaN if the row holds one
        _refuse_non_finite(top)
        return ids
    top = logits.amax(dim=-1, keepdim=True)  # (B, 1)
    _refuse_non_finite(top[:, 0])
    # a temperature below the dtype's smallest normal number would round to 0 in it
    temperature = max(temperature, torch.finfo(logits.dtype).tiny)
    logits = filter_logits((logits - top) / temperature, top_k, top_p)  # max is 0: no overflow
    probs = torch.softmax(logits, dim=-1)  # (B, V)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
