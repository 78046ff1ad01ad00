"""Pieces shared by the attention variants: the base class and input checks."""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor, nn


def check_positive_int(name: str, value, *, minimum: int = 1) -> int:
    """Return ``value`` if it is an int >= ``minimum``; raise naming the bad value otherwise."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(
            f"{name} must be an int >= {minimum}, got {value!r} ({type(value).__name__})"
        )
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def check_optional_int(name: str, value, *, minimum: int = 1) -> int | None:
    return None if value is None else check_positive_int(name, value, minimum=minimum)


def check_inputs(
    q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None
) -> Tensor | None:
    """Validate (B, H, T, D) inputs; return the key mask as a (B, T) bool tensor on q's device.

    q and k must have the same shape, v the same (B, H, T) with its own last dim. The mask is
    True for real tokens and False for padding.
    """
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor):
            raise TypeError(
                f"{name} must be a torch.Tensor of shape (B, H, T, D), got {type(t).__name__}"
            )
        if t.dim() != 4:
            raise ValueError(f"{name} must have shape (B, H, T, D), got {tuple(t.shape)}")
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating point tensor, got dtype {t.dtype}")
    if k.shape != q.shape:
        raise ValueError(f"k must have the shape of q {tuple(q.shape)}, got {tuple(k.shape)}")
    if v.shape[:3] != q.shape[:3]:
        raise ValueError(
            f"v must have shape (B, H, T, Dv) = {tuple(q.shape[:3])} + (Dv,), got {tuple(v.shape)}"
        )
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    if q.shape[-1] == 0 or v.shape[-1] == 0:
        raise ValueError(f"head dims must be >= 1, got D={q.shape[-1]}, Dv={v.shape[-1]}")
    if key_padding_mask is None:
        return None
    if not isinstance(key_padding_mask, Tensor) or key_padding_mask.dtype != torch.bool:
        got = (
            key_padding_mask.dtype
            if isinstance(key_padding_mask, Tensor)
            else type(key_padding_mask).__name__
        )
        raise TypeError(f"key_padding_mask must be a bool tensor (True = real token), got {got}")
    B, _, T, _ = q.shape
    if tuple(key_padding_mask.shape) != (B, T):
        raise ValueError(
            f"key_padding_mask must have shape (B, T) = {(B, T)}, got {tuple(key_padding_mask.shape)}"
        )
    return key_padding_mask.to(q.device)


class VariantAttention(nn.Module):
    """Base class of the attention variants.

    ``forward(q, k, v, *, causal=False, key_padding_mask=None)`` takes (B, H, T, D) tensors and
    returns (B, H, T, Dv). ``key_padding_mask`` is (B, T) bool with True for real tokens. A query
    that has no key to attend to gets a zero output (never NaN), and no gradient.
    """

    exact: ClassVar[bool] = False
    description: ClassVar[str] = ""

    def forward(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        *,
        causal: bool = False,
        key_padding_mask: Tensor | None = None,
    ) -> Tensor:
        if not isinstance(causal, bool):
            raise TypeError(f"causal must be a bool, got {causal!r}")
        key_valid = check_inputs(q, k, v, key_padding_mask)
        return self._attend(q, k, v, causal, key_valid)

    def _attend(
        self, q: Tensor, k: Tensor, v: Tensor, causal: bool, key_valid: Tensor | None
    ) -> Tensor:
        raise NotImplementedError

    def extra_repr(self) -> str:
        names = [p for p in self._config_names() if hasattr(self, p)]
        return ", ".join(f"{p}={getattr(self, p)!r}" for p in names)

    def _config_names(self) -> list[str]:
        import inspect

        return [p for p in inspect.signature(type(self).__init__).parameters if p != "self"]


def default_scale(d: int) -> float:
    return 1.0 / math.sqrt(d)
