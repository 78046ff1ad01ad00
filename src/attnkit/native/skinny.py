"""The skinny product through the native kernel: :class:`SkinnyLinear` (a weight checked and
converted once, called for a few rows at a time) and :func:`skinny_linear` (a one-off call).
The kernel itself is built and loaded by :mod:`attnkit.native.build`."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from attnkit.native import build

__all__ = ["SkinnyLinear", "skinny_linear"]

_INT_MAX = 2**31 - 1
_SUFFIX = {torch.float32: "f32", torch.bfloat16: "bf16", torch.int8: "i8"}


class SkinnyLinear:
    """``(x @ weight.T) * scale + bias`` through the native kernel, with everything about the
    weight checked and converted once: calling it costs a few microseconds on top of the
    product, which matters when a decoding step makes 50 of them.

    weight: (M, K) contiguous CPU float32, bfloat16 or int8 (int8 needs ``scale``, one
    factor per output row); bias, scale: (M,) of any floating dtype. Build it with
    :meth:`create`, which returns ``None`` when the kernel or the weight is not supported. The
    object keeps references to the tensors it reads; it does not follow later in-place
    replacements of ``weight`` (build a new one). No autograd.

    Calling it with x (N, K) on the CPU, any floating dtype, returns float32 (N, M); x of
    another shape or device is a ValueError.

    Examples:
        >>> plan = SkinnyLinear.create(torch.randn(3072, 768))  # None without the kernel
        >>> plan(torch.randn(4, 768)).shape  # (4, 3072), float32
    """

    __slots__ = ("weight", "bias", "scale", "M", "K", "_fn", "_args")
    weight: torch.Tensor
    bias: torch.Tensor | None
    scale: torch.Tensor | None
    M: int
    K: int
    _fn: Any
    _args: tuple[int, int | None, int | None]

    @classmethod
    def create(
        cls,
        weight: torch.Tensor,
        bias: torch.Tensor | None = None,
        scale: torch.Tensor | None = None,
    ) -> SkinnyLinear | None:
        """The plan for ``weight`` (M, K), or ``None`` when the kernel is not available or the
        weight is unsupported (not a plain contiguous 2-D CPU float32, bfloat16 or int8 tensor, int8
        without ``scale``, a bias or scale that is not M floats on the CPU).

        Args:
            weight: (M, K) the weight, read in place (detached, not copied).
            bias: (M,) added to each output row, or None.
            scale: (M,) one factor per output row (needed for int8 weights), or None.

        Examples:
            >>> plan = SkinnyLinear.create(q, scale=row_scale)  # q (M, K) int8, row_scale (M,)
        """
        lib = build.library()
        if (
            lib is None
            # a tensor subclass (a quantized wrapper such as torchao's) may report float32
            # while its storage holds something else: the kernel reads raw memory
            or type(weight) not in (torch.Tensor, nn.Parameter)
            or (bias is not None and type(bias) not in (torch.Tensor, nn.Parameter))
            or weight.device.type != "cpu"
            or weight.dtype not in _SUFFIX
            or weight.dim() != 2
            or not weight.is_contiguous()
            or max(weight.shape) > _INT_MAX
            or (weight.dtype == torch.int8 and scale is None)
        ):
            return None
        M = weight.shape[0]
        extras = []
        for t in (scale, bias):
            if t is not None and (
                t.device.type != "cpu" or t.numel() != M or not t.is_floating_point()
            ):
                return None
            extras.append(
                None if t is None else t.detach().reshape(M).to(torch.float32).contiguous()
            )
        self = cls.__new__(cls)
        self.weight = weight.detach()
        self.scale, self.bias = extras
        self.M, self.K = M, weight.shape[1]
        self._fn = getattr(lib, "attnkit_skinny_linear_" + _SUFFIX[weight.dtype])
        self._args = (
            self.weight.data_ptr(),
            self.scale.data_ptr() if self.scale is not None else None,
            self.bias.data_ptr() if self.bias is not None else None,
        )
        return self

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, K) on the CPU, any floating dtype; returns float32 (N, M)."""
        if x.dim() != 2 or x.shape[1] != self.K or x.device.type != "cpu":
            raise ValueError(
                f"SkinnyLinear expects a (N, {self.K}) CPU tensor, got "
                f"{tuple(x.shape)} on {x.device}"
            )
        if x.dtype != torch.float32 or not x.is_contiguous():
            x = x.to(torch.float32).contiguous()
        N = x.shape[0]
        y = torch.empty(N, self.M, dtype=torch.float32)
        if N and self.M:
            w, s, b = self._args
            self._fn(
                x.data_ptr(), w, s, b, y.data_ptr(), N, self.M, self.K, torch.get_num_threads()
            )
        return y


def skinny_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    scale: torch.Tensor | None = None,
) -> torch.Tensor | None:
    """``(x @ weight.T) * scale + bias`` in float32 for a 2-D CPU ``x`` (N, K) with few rows,
    through the native kernel (a one-off :class:`SkinnyLinear`).

    weight: (M, K), contiguous, float32, bfloat16 or int8 (int8 needs ``scale``, one factor per
    output row). x, bias and scale may be any floating dtype; the products are summed in float32
    and the result is float32 (N, M). Returns ``None`` when the kernel or these inputs are not
    supported: the caller then computes the product itself. No autograd (``None`` also when
    grad mode is on and an input requires grad).

    Examples:
        >>> y = skinny_linear(torch.randn(4, 768), torch.randn(3072, 768))  # (4, 3072) or None
    """
    if (
        x.device.type != "cpu"
        or not x.is_floating_point()
        or x.dim() != 2
        or weight.dim() != 2
        or x.shape[1] != weight.shape[1]
        or x.numel() > _INT_MAX
    ):
        return None
    if torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, weight, bias, scale)
    ):
        return None
    plan = SkinnyLinear.create(weight, bias, scale)
    return None if plan is None else plan(x)
