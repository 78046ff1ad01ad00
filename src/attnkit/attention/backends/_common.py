"""What the attention backends share: the softmax dtype, GQA head repetition, the ALiBi bias."""

from __future__ import annotations

import torch
from torch import Tensor

from attnkit.attention.masks import MaskSpec

NEG_INF = float("-inf")


def softmax_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def repeat_kv(x: Tensor, n_rep: int) -> Tensor:
    """(B, Hkv, T, D) -> (B, Hkv * n_rep, T, D); query head h uses key head h // n_rep."""
    if n_rep == 1:
        return x
    b, h, t, d = x.shape
    return x[:, :, None].expand(b, h, n_rep, t, d).reshape(b, h * n_rep, t, d)


def alibi_bias(slopes: Tensor, spec: MaskSpec, device=None) -> Tensor:
    """(1, H, Tq, Tk) ALiBi bias -slope_h * |query position - key position|."""
    device = slopes.device if device is None else device
    q_pos = torch.arange(spec.q_len, device=device)[:, None] + spec.offset
    k_pos = torch.arange(spec.k_len, device=device)[None, :]
    dist = (q_pos - k_pos).abs().to(slopes.dtype)  # (Tq, Tk)
    return -(slopes.to(device)[:, None, None] * dist)[None]
