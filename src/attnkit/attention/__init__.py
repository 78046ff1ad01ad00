"""Exact attention (`attention`, `explain`), masks, and the attention module."""
from .functional import BACKENDS, Plan, attention, explain
from . import masks

__all__ = ["attention", "explain", "Plan", "BACKENDS", "masks", "MultiHeadAttention"]


def __getattr__(name):
    if name == "MultiHeadAttention":
        from .module import MultiHeadAttention

        return MultiHeadAttention
    raise AttributeError(f"module 'attnkit.attention' has no attribute {name!r}")
