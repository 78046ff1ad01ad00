"""Weight-only int8 linears (one scale per output row) for faster memory-bound decoding."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from attnkit.native.linear import NATIVE_MAX_ROWS, native_product
from attnkit.native.skinny import SkinnyLinear

__all__ = ["Int8Linear", "quantize_int8"]


class Int8Linear(nn.Module):
    """A linear layer with int8 weights: one symmetric scale per output row, w ~ q * scale.

    ``forward`` computes x W^T (+ bias) and returns the input's dtype. On CPU, up to
    :data:`~attnkit.native.linear.NATIVE_MAX_ROWS` rows at a time (decoding) go through
    attnkit's native kernel (float32 activations and scales, sums in float32); other calls use
    ``torch._weight_int8pack_mm`` in bfloat16 (activations and scales rounded to bfloat16).
    Weights take a quarter of their float32 memory, which is what a decoding step mostly reads.
    """

    weight: torch.Tensor
    scale: torch.Tensor
    scale_f32: torch.Tensor
    bias: torch.Tensor | None

    def __init__(self, linear: nn.Linear):
        super().__init__()
        w = linear.weight.detach().float()  # (N, K)
        if w.shape[1] % 8:
            raise ValueError(f"Int8Linear needs in_features divisible by 8, got {w.shape[1]}")
        scale = w.abs().amax(dim=1).clamp(min=1e-12) / 127.0  # (N,)
        q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)  # (N, K)
        self.in_features, self.out_features = w.shape[1], w.shape[0]
        self.register_buffer("weight", q.to(linear.weight.device))
        self.register_buffer("scale", scale.to(torch.bfloat16).to(linear.weight.device))
        self.register_buffer("scale_f32", scale.to(linear.weight.device), persistent=False)
        bias = linear.bias
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // self.in_features
        if (
            x.device.type == "cpu"
            and 1 <= rows <= NATIVE_MAX_ROWS
            and not (torch.is_grad_enabled() and x.requires_grad)
        ):
            native = self._native()
            if native is not None:
                return native_product(native, x, rows)
        flat = x.reshape(-1, self.in_features).to(torch.bfloat16)  # (M, K)
        y = torch._weight_int8pack_mm(flat, self.weight, self.scale).to(x.dtype)  # (M, N)
        if self.bias is not None:
            y = y + self.bias
        return y.view(*x.shape[:-1], self.out_features)

    def __getstate__(self) -> dict[str, Any]:  # the native plan holds raw pointers
        state = self.__dict__.copy()
        state.pop("_native_cache", None)
        return state

    def _native(self) -> SkinnyLinear | None:
        """The native product for the current tensors (rebuilt when they were moved)."""
        key = (
            self.weight.data_ptr(),
            self.scale_f32.data_ptr(),
            None if self.bias is None else self.bias.data_ptr(),
        )
        cached = self.__dict__.get("_native_cache")
        if cached is None or cached[0] != key:
            cached = (key, SkinnyLinear.create(self.weight, self.bias, self.scale_f32))
            self.__dict__["_native_cache"] = cached
        return cached[1]

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


def quantize_int8(model: nn.Module) -> nn.Module:
    """Replace, in place, the linear layers of ``model``'s blocks and its LM head by
    :class:`Int8Linear` (weight-only int8, per-row scales); returns ``model``. Embeddings,
    norms and the KV cache keep their dtype; a tied LM head gets its own int8 copy.
    Linears whose input width is not a multiple of 8 stay as they are."""
    if not hasattr(torch, "_weight_int8pack_mm"):
        raise RuntimeError(
            f"int8 decoding needs torch._weight_int8pack_mm, which torch {torch.__version__} lacks"
        )
    targets = [
        (name, mod)
        for name, mod in model.named_modules()
        if isinstance(mod, nn.Linear)
        and mod.in_features % 8 == 0
        and (name.startswith("blocks.") or name.startswith("lm_head."))
    ]
    if not targets:
        raise ValueError(
            f"{type(model).__name__} has no linear layers to quantize in blocks.* or lm_head.*"
        )
    for name, mod in targets:
        model.set_submodule(name, Int8Linear(mod))
    return model
