"""The math backend: the readable reference, and the only backend that returns the weights."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from attnkit.attention.backends._common import NEG_INF, repeat_kv, softmax_dtype
from attnkit.attention.masks import MaskSpec


def _masked_softmax(scores: Tensor, allowed: Tensor | None) -> Tensor:
    """Softmax over the last dim that gives exact zeros (and zero gradients) for empty rows."""
    if allowed is not None:
        scores = scores.masked_fill(~allowed, NEG_INF)
    row_max = scores.amax(dim=-1, keepdim=True)
    row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max)).detach()
    p = torch.exp(scores - row_max)
    denom = p.sum(dim=-1, keepdim=True)
    return p / torch.where(denom > 0, denom, torch.ones_like(denom))


def math_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    spec: MaskSpec,
    *,
    bias: Tensor | None,
    scale: float,
    dropout_p: float,
    return_weights: bool,
):
    """Reference: scores -> masked softmax -> (dropout) -> weighted sum, in float32/float64.

    Examples:
        >>> out, w = math_attention(q, k, v, spec, bias=None, scale=D**-0.5, dropout_p=0.0, return_weights=True)  # q (B, Hq, Tq, D), k, v (B, Hkv, Tk, D)
    """
    n_rep = q.shape[1] // k.shape[1]
    k = repeat_kv(k, n_rep)
    v = repeat_kv(v, n_rep)
    ct = softmax_dtype(q.dtype)
    scores = torch.matmul(q.to(ct), k.to(ct).transpose(-2, -1)) * scale  # (B, H, Tq, Tk)
    if bias is not None:
        scores = scores + bias.to(ct)
    weights = _masked_softmax(scores, spec.dense(q.device))
    used = F.dropout(weights, p=dropout_p) if dropout_p > 0 else weights
    out = torch.matmul(used, v.to(ct)).to(q.dtype)  # (B, H, Tq, Dv)
    if return_weights:
        return out, weights.to(q.dtype)
    return out
