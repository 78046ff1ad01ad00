"""Exact attention (`attention`, `explain`), masks, kernels and the attention module.

`MultiHeadAttention` holds one kernel (`AttentionKernel`): `ExactKernel` (exact attention
through `attention`, which picks a backend) or a variant from `attnkit.attention.variants`.
"""

from typing import Any

from attnkit.attention import masks
from attnkit.attention.functional import BACKENDS, Plan, attention, explain

__all__ = [
    "attention",
    "explain",
    "Plan",
    "BACKENDS",
    "masks",
    "AttentionKernel",
    "ExactKernel",
    "MultiHeadAttention",
]


def __getattr__(name: str) -> Any:
    if name == "MultiHeadAttention":
        from attnkit.attention.module import MultiHeadAttention

        return MultiHeadAttention
    if name in ("AttentionKernel", "ExactKernel"):
        from attnkit.attention import kernel

        return getattr(kernel, name)
    raise AttributeError(f"module 'attnkit.attention' has no attribute {name!r}")
