"""Exact attention (`attention`, `explain`), masks, and the attention module."""

from attnkit.attention import masks
from attnkit.attention.functional import BACKENDS, Plan, attention, explain

__all__ = ["attention", "explain", "Plan", "BACKENDS", "masks", "MultiHeadAttention"]


def __getattr__(name):
    if name == "MultiHeadAttention":
        from attnkit.attention.module import MultiHeadAttention

        return MultiHeadAttention
    raise AttributeError(f"module 'attnkit.attention' has no attribute {name!r}")
