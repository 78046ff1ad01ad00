"""Positional encodings: sinusoidal, learned absolute, RoPE and ALiBi."""
from __future__ import annotations

import math

import torch


def alibi_slopes(n_heads: int) -> torch.Tensor:
    """Per-head ALiBi slopes (Press et al. 2022), float32 tensor of shape (n_heads,).

    For a power of two n the slopes are the geometric sequence 2^(-8/n), 2^(-16/n), ...
    For other head counts the slopes of the nearest lower power of two p are followed by every
    other slope of the sequence for 2p, as in the reference implementation.
    """
    if isinstance(n_heads, bool) or not isinstance(n_heads, int) or n_heads < 1:
        raise ValueError(f"n_heads must be a positive int, got {n_heads!r}")

    def geometric(n: int) -> list[float]:
        start = 2.0 ** (-8.0 / n)
        return [start ** (i + 1) for i in range(n)]

    p = 2 ** int(math.floor(math.log2(n_heads)))
    slopes = geometric(p)
    if p < n_heads:
        slopes += geometric(2 * p)[0::2][: n_heads - p]
    return torch.tensor(slopes, dtype=torch.float32)
