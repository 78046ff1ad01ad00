"""Linears for decoding: the fastest product for a few rows at a time, on the CPU.

Decoding a few rows at a time is a skinny matrix product: x (M, K) with M = batch size
against each weight W (N, K). :func:`decoding_linears` swaps a model's plain ``nn.Linear``
children for :class:`DecodingLinear` wrappers (the parent's child is replaced, the wrapped
layer is not touched) and puts the originals back on exit. A wrapper picks, per call:

* attnkit's native kernel (:mod:`attnkit.native.build`) for 1-24 rows: it streams each weight
  once with prefetching. Measured here on 40 3072x768 weights: 1 row 14.7 ms against 25.6 ms
  for W @ x^T, 8 rows 17.7 against 33.2, 24 rows 43.3 against 55.6; at 32 rows the two are
  even. bfloat16 weights use it for longer inputs too (prompts), in blocks of 64 rows: on
  GPT-2 124M a 32-token prompt took 265 ms through PyTorch's emulated bfloat16 addmm.
* without the kernel, one row (batch 1) through MKL's packed GEMM (the weight reordered once,
  as Inductor does for frozen linears), which streams it faster than sgemv: a 3072x768 weight
  at 14.5 GB/s packed against 8.4 GB/s, the 49 linears of GPT-2 124M in 54 ms per token
  against 58-67 ms. Packing costs a copy of the weights and about 0.4 s for GPT-2 124M, so it
  is asked for only for batch-1 decoding of at least :data:`PACK_MIN_TOKENS` tokens.
* for 2-32 rows W @ x^T: MKL's x @ W^T packs the whole weight before using it, about twice
  the memory traffic (GPT-2 124M at batch 8: LM head 40 ms as x @ W^T, 21 ms as W @ x^T; the
  48 block linears 54 ms and 44 ms). The sums run in a different order, so results match
  F.linear to float rounding, not bit for bit.
* anything else (other devices, dtypes, row counts): ``F.linear``.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from attnkit.native.skinny import SkinnyLinear

__all__ = [
    "NATIVE_MAX_ROWS",
    "NATIVE_PREFILL_ROWS",
    "PACK_MIN_TOKENS",
    "SKINNY_MAX_ROWS",
    "DecodingLinear",
    "can_pack",
    "decoding_linears",
    "native_product",
]

SKINNY_MAX_ROWS = 32
PACK_MIN_TOKENS = 16
NATIVE_MAX_ROWS = 24
NATIVE_PREFILL_ROWS = 64


def native_product(native: SkinnyLinear, x: torch.Tensor, rows: int) -> torch.Tensor:
    """x (..., K) through the native kernel, :data:`NATIVE_PREFILL_ROWS` rows per call;
    returns (..., M) in x's dtype.

    Args:
        native: the plan of a (M, K) weight (:meth:`SkinnyLinear.create`).
        x: (..., K) CPU input.
        rows: the number of rows of x, ``x.numel() // K``.

    Examples:
        >>> native_product(plan, torch.randn(2, 3, 768), rows=6).shape  # plan: (3072, 768)
    """
    x2 = x.reshape(rows, x.shape[-1])  # (rows, K)
    if rows <= NATIVE_PREFILL_ROWS:
        y = native(x2)
    else:
        y = torch.cat(
            [native(x2[i : i + NATIVE_PREFILL_ROWS]) for i in range(0, rows, NATIVE_PREFILL_ROWS)]
        )
    if y.dtype != x.dtype:
        y = y.to(x.dtype)
    return y.view(*x.shape[:-1], native.M)


def can_pack() -> bool:
    """Whether this torch has MKL's packed GEMM (``torch.ops.mkl._mkl_linear``).

    Examples:
        >>> can_pack()  # True on a usual x86 Linux build of torch
    """
    return bool(getattr(torch._C, "has_mkl", False)) and hasattr(torch.ops.mkl, "_mkl_linear")


class DecodingLinear(nn.Module):
    """``linear(x)``, computed by the fastest product for x's row count (see the module
    docstring). Holds the wrapped layer as ``self.linear`` (its parameters, unchanged), and
    the packed weight and native plan made for it when it was wrapped.

    ``pack`` asks for MKL's packed copy of a float32 CPU weight, used for one-row inputs when
    there is no native plan.

    Examples:
        >>> DecodingLinear(nn.Linear(768, 3072))(torch.randn(1, 1, 768)).shape  # (1, 1, 3072)
    """

    def __init__(self, linear: nn.Linear, pack: bool = False) -> None:
        super().__init__()
        self.linear = linear
        self.native = SkinnyLinear.create(linear.weight, linear.bias)
        self.packed: torch.Tensor | None = None
        w = linear.weight
        if self.native is None and pack and w.device.type == "cpu" and w.dtype == torch.float32:
            with torch.no_grad():
                self.packed = torch.ops.mkl._mkl_reorder_linear_weight(w.detach(), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., in_features) -> ``linear(x)`` (..., out_features), by the fastest product.

        Examples:
            >>> layer(torch.randn(8, 1, 768)).shape  # 8 rows: native or W @ x^T; (8, 1, 3072)
        """
        # the common decoding case first, with as few attribute reads as possible (this runs
        # for every linear of every step)
        native = self.native
        if native is not None and x.dtype == native.weight.dtype and x.device.type == "cpu":
            rows = x.numel() // native.K if native.K else 0
            if rows and (rows <= NATIVE_MAX_ROWS or x.dtype == torch.bfloat16):
                return native_product(native, x, rows)
        lin = self.linear
        w, bias = lin.weight, lin.bias
        rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
        if x.device.type != "cpu" or x.dtype != w.dtype:
            return F.linear(x, w, bias)
        # float32 or bfloat16 weights; with bfloat16 also prompts (prefill): where the CPU has no
        # bfloat16 arithmetic PyTorch's product is emulated, and the kernel is faster
        native = self.native
        if native is not None and rows and (rows <= NATIVE_MAX_ROWS or w.dtype == torch.bfloat16):
            return native_product(native, x, rows)
        if w.dtype != torch.float32:
            return F.linear(x, w, bias)
        if rows == 1 and self.packed is not None:
            y = torch.ops.mkl._mkl_linear(x.reshape(1, x.shape[-1]), self.packed, w, bias, 1)
            return y.view(*x.shape[:-1], w.shape[0])
        if not (2 <= rows <= SKINNY_MAX_ROWS):
            return F.linear(x, w, bias)
        x2 = x.reshape(rows, x.shape[-1])  # (M, K)
        if bias is None:
            y = torch.mm(w, x2.t())  # (N, M)
        else:
            y = torch.addmm(bias[:, None], w, x2.t())  # (N, M)
        return y.t().contiguous().view(*x.shape[:-1], w.shape[0])  # (..., N)

    def extra_repr(self) -> str:
        """Which product one row takes: "native", "packed" or "torch".

        Examples:
            >>> DecodingLinear(nn.Linear(768, 3072)).extra_repr()  # 'native' with the kernel
        """
        path = (
            "native"
            if self.native is not None
            else ("packed" if self.packed is not None else "torch")
        )
        return f"{path}"


def _wrapper_key(linear: nn.Linear) -> tuple[object, ...]:
    """What a :class:`DecodingLinear` made for ``linear`` depends on: the tensors it reads
    (identity, storage, in-place version, dtype, device)."""
    w, b = linear.weight, linear.bias
    return (
        id(w),
        w.data_ptr(),
        w._version,
        w.dtype,
        w.device,
        id(b),
        None if b is None else (b.data_ptr(), b._version, b.dtype),
    )


# model -> {(parent id, child name): (linear, key, wrapper)}: wrappers kept between decoding
# calls (building them and their native plans costs about 40 us a layer, several ms for a
# deep model, at every call). Keyed weakly on the model; the values hold the model's own
# linears, never the model, so a dropped model drops its entry.
_WRAPPERS: weakref.WeakKeyDictionary[
    nn.Module, dict[tuple[int, str], tuple[nn.Linear, tuple[object, ...], DecodingLinear]]
] = weakref.WeakKeyDictionary()


@contextlib.contextmanager
def decoding_linears(model: nn.Module, pack: bool = False) -> Iterator[nn.Module]:
    """Within the block, every plain ``nn.Linear`` of ``model`` (exactly that type, so
    :class:`~attnkit.native.int8.Int8Linear` and other subclasses keep their own forward) is
    replaced in its parent by a :class:`DecodingLinear` wrapping it; with ``pack``, one-row
    products go through MKL's packed GEMM where the native kernel is not available. The
    original layers are put back on exit. Unpacked wrappers are kept for the next call while
    the layer and its tensors stay the same (same objects, storage and in-place version);
    packed ones are made for the call and dropped after it. Yields ``model``.

    Examples:
        >>> with decoding_linears(model, pack=True):
        ...     logits = model(ids).logits  # ids (1, T)
    """
    pack = pack and can_pack()
    slots = [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent._modules.items()
        if type(child) is nn.Linear
    ]
    kept = _WRAPPERS.get(model, {}) if not pack else {}
    fresh: dict[tuple[int, str], tuple[nn.Linear, tuple[object, ...], DecodingLinear]] = {}
    swapped: list[tuple[nn.Module, str, nn.Linear]] = []
    try:
        for parent, name, linear in slots:
            assert isinstance(linear, nn.Linear)
            slot = (id(parent), name)
            key = _wrapper_key(linear)
            entry = kept.get(slot)
            if entry is not None and entry[0] is linear and entry[1] == key:
                wrapper = entry[2]
            else:
                wrapper = DecodingLinear(linear, pack)
            fresh[slot] = (linear, key, wrapper)
            setattr(parent, name, wrapper)
            swapped.append((parent, name, linear))
        if not pack:
            _WRAPPERS[model] = fresh
        yield model
    finally:
        for parent, name, linear in reversed(swapped):
            setattr(parent, name, linear)
