"""Int8 linears.

* :class:`Int8Linear`, :func:`quantize_int8`: weight-only int8 (one scale per output row) for
  faster memory-bound decoding.
* :class:`DynamicInt8Linear`, :func:`quantize_dynamic_int8`: int8 weights and int8 activations
  (one scale per token, chosen on the fly) for compute-bound encoding (sentence embeddings).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from attnkit.native.linear import NATIVE_MAX_ROWS, native_product
from attnkit.native.skinny import SkinnyLinear

__all__ = [
    "DYNAMIC_INT8_SKIP",
    "DynamicInt8Linear",
    "Int8Linear",
    "quantize_dynamic_int8",
    "quantize_int8",
]


class Int8Linear(nn.Module):
    """A linear layer with int8 weights: one symmetric scale per output row, w ~ q * scale.

    ``forward`` computes x W^T (+ bias) and returns the input's dtype. On CPU, up to
    :data:`~attnkit.native.linear.NATIVE_MAX_ROWS` rows at a time (decoding) go through
    attnkit's native kernel (float32 activations and scales, sums in float32); other calls use
    ``torch._weight_int8pack_mm`` in bfloat16 (activations and scales rounded to bfloat16).
    Weights take a quarter of their float32 memory, which is what a decoding step mostly reads.

    Examples:
        >>> Int8Linear(nn.Linear(768, 3072))(torch.randn(4, 768)).shape  # (4, 3072)
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
        """x (..., in_features) -> x W^T + bias (..., out_features), in x's dtype.

        Examples:
            >>> layer(torch.randn(2, 16, 768))  # (..., in_features) -> (..., out_features)
        """
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
        """Sizes and the int8 marker, shown inside ``repr(layer)``.

        Examples:
            >>> print(Int8Linear(nn.Linear(8, 4)))
        """
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


def quantize_int8(model: nn.Module) -> nn.Module:
    """Replace, in place, the linear layers of ``model``'s blocks and its LM head by
    :class:`Int8Linear` (weight-only int8, per-row scales); returns ``model``. Embeddings,
    norms and the KV cache keep their dtype; a tied LM head gets its own int8 copy.
    Linears whose input width is not a multiple of 8 stay as they are.

    Examples:
        >>> model = quantize_int8(attnkit.load("runs/char"))
    """
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


# ------------------------------------------------------------------------------------------
# Dynamic int8: int8 weights and int8 activations, for compute-bound products (encoders)
# ------------------------------------------------------------------------------------------

# Linears left in float32 by default, by measurement on all-MiniLM-L6-v2 (1,024 Shakespeare
# lines, cosine to the float32 embeddings): every block linear in int8 gives a minimum of
# 0.9805; the fused q/k/v projections alone in int8 give 0.9914, and every other kind alone
# 0.997 or more; everything but q/k/v in int8 gives 0.9939 (mean 0.9984). Their input is the
# residual stream after LayerNorm, whose few large channels set every token's scale.
DYNAMIC_INT8_SKIP = ("attn.qkv_proj",)


def _quantized_engine_ok() -> str | None:
    """None when PyTorch's x86 quantized kernels (fbgemm) are here, else why not."""
    engines = torch.backends.quantized.supported_engines
    if "fbgemm" not in engines and "x86" not in engines:
        return f"this torch has no fbgemm quantized engine (it has {engines})"
    engine = torch.backends.quantized.engine
    if engine not in ("fbgemm", "x86"):
        return (
            f"the quantized engine is {engine!r}; dynamic int8 needs 'x86' or 'fbgemm' "
            "(torch.backends.quantized.engine)"
        )
    return None


class DynamicInt8Linear(nn.Module):
    """``x W^T + b`` with int8 weights and 8-bit activations, for inference on the CPU.

    Weights: symmetric, one scale per output row, ``w ~ q * scale`` with |q| <= 63 (7 bits),
    packed once for fbgemm (``torch.ops.quantized.linear_prepack``). Activations: quantized
    on the fly to 256 levels spanning each token's own [min, max]. fbgemm's dynamic linear
    quantizes its whole input with one asymmetric scale, so each row of ``x`` is first
    centred and scaled to exactly [-1, 1] (centre c, half-range r) and the product is put
    back after: y = r * (Q(x') Q(W)^T) + c * rowsum(Q(W)) + b, x' = (x - c) / r. The int8
    products are summed exactly in int32.

    Chosen by measurement on this AVX2 CPU (all-MiniLM-L6-v2, 1,024 Shakespeare lines, the
    smallest cosine to the float32 embeddings, q/k/v kept in float32 as in
    :data:`DYNAMIC_INT8_SKIP`): fbgemm multiplies uint8 activations by int8 weights with
    VPMADDUBSW, whose 16-bit pair sums saturate unless 2 * 255 * max|q| <= 32767, so weights
    get 7 bits and activations keep 8 (8-bit weights with 7-bit activations, fbgemm's
    ``reduce_range``: 0.985; per-token asymmetric activations as here: 0.994; symmetric
    ones: 0.990). ``torch._int_mm`` and ``torch._weight_int8pack_mm`` took 30-90x longer
    than float32 for these shapes.

    Inputs of any floating dtype are computed in float32 and returned in their dtype. No
    autograd (the quantized product has no backward).

    Raises:
        RuntimeError: this torch has no x86/fbgemm quantized engine, or another one is set.
        ValueError: the linear's weight is not on the CPU.

    Examples:
        >>> DynamicInt8Linear(nn.Linear(384, 1536))(torch.randn(2, 16, 384)).shape  # (2, 16, 1536)
    """

    QMAX = 63  # weight levels: 2 * 255 * 63 = 32130 fits VPMADDUBSW's int16 pair sums

    bias: torch.Tensor  # zeros for a linear without bias
    weight_int8: torch.Tensor
    weight_scale: torch.Tensor
    weight_rowsum: torch.Tensor

    def __init__(self, linear: nn.Linear):
        super().__init__()
        reason = _quantized_engine_ok()
        if reason is not None:
            raise RuntimeError(f"DynamicInt8Linear: {reason}")
        if linear.weight.device.type != "cpu":
            raise ValueError(
                f"DynamicInt8Linear runs on the CPU; the linear's weight is on "
                f"{linear.weight.device}"
            )
        w = linear.weight.detach().float()  # (N, K)
        scale = w.abs().amax(dim=1).clamp(min=1e-12) / self.QMAX  # (N,)
        codes = torch.round(w / scale[:, None]).clamp_(-self.QMAX, self.QMAX)  # (N, K)
        zero = torch.zeros(w.shape[0], dtype=torch.long)
        with warnings.catch_warnings():  # quantized tensors are marked for later removal
            warnings.simplefilter("ignore", UserWarning)
            q = torch._make_per_channel_quantized_tensor(
                codes.to(torch.int8), scale.double(), zero, 0
            )
            self._packed = torch.ops.quantized.linear_prepack(q, None)
        self.in_features, self.out_features = w.shape[1], w.shape[0]
        dequantized = codes * scale[:, None]  # (N, K): the weight the product uses
        self.register_buffer("weight_int8", codes.to(torch.int8), persistent=False)
        self.register_buffer("weight_scale", scale, persistent=False)
        self.register_buffer("weight_rowsum", dequantized.sum(dim=1)[None, :], persistent=False)
        bias = linear.bias
        self.register_buffer(
            "bias",
            torch.zeros(self.out_features) if bias is None else bias.detach().float().clone(),
            persistent=False,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., in_features) -> x W^T + b (..., out_features), in x's dtype.

        Examples:
            >>> layer(torch.randn(2, 16, 384)).shape  # (2, 16, out_features)
        """
        x2 = x.reshape(-1, self.in_features)  # (M, K)
        if x2.dtype != torch.float32:
            x2 = x2.float()
        # (amax and amin apart, and one addcmul: torch.aminmax along rows and (x - c) / r took
        # 5 ms and 8 ms for a (768, 1536) input here, against 0.2 and 0.85)
        lo, hi = x2.amin(dim=1, keepdim=True), x2.amax(dim=1, keepdim=True)  # (M, 1) each
        c = (hi + lo) * 0.5  # each row's centre
        inv = 2.0 / (hi - lo).clamp_(min=1e-30)  # and 1 / half-range
        xs = torch.addcmul(-c * inv, x2, inv)  # (M, K): (x - c) / r, in [-1, 1]
        y = torch.ops.quantized.linear_dynamic(xs, self._packed, False)  # (M, N)
        # b + c * rowsum as a broadcast addcmul: addmm's rank-1 product copied the bias first
        y = torch.addcmul(self.bias, c, self.weight_rowsum).addcmul_(y, inv.reciprocal_())
        if y.dtype != x.dtype:
            y = y.to(x.dtype)
        return y.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        """Sizes and the quantization, shown inside ``repr(layer)``.

        Examples:
            >>> print(DynamicInt8Linear(nn.Linear(8, 4)))
        """
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            "int8 weights (per row) x 8-bit activations (per token)"
        )


def quantize_dynamic_int8(model: nn.Module, skip: Sequence[str] = DYNAMIC_INT8_SKIP) -> nn.Module:
    """Replace, in place, the ``nn.Linear`` layers of ``model``'s blocks (``blocks.*``) by
    :class:`DynamicInt8Linear`, except those whose name ends with one of ``skip`` (default
    :data:`DYNAMIC_INT8_SKIP`, the fused q/k/v projections, chosen by measurement); returns
    ``model``. Embeddings, norms, attention and the heads stay float32. CPU only.

    Raises:
        TypeError: ``skip`` is not a sequence of strings (a single string is refused too).
        RuntimeError: no x86/fbgemm quantized engine.
        ValueError: ``model`` has no ``nn.Linear`` in ``blocks.*`` left to quantize.

    Examples:
        >>> model = quantize_dynamic_int8(attnkit.load("minilm"), skip=())  # every linear
    """
    if isinstance(skip, str) or not all(isinstance(s, str) for s in skip):
        raise TypeError(f"skip must be a sequence of layer-name suffixes, got {skip!r}")
    reason = _quantized_engine_ok()
    if reason is not None:
        raise RuntimeError(f"dynamic int8 is not available: {reason}")
    targets = [
        (name, mod)
        for name, mod in model.named_modules()
        if type(mod) is nn.Linear
        and name.startswith("blocks.")
        and not any(name.endswith(s) for s in skip)
    ]
    if not targets:
        raise ValueError(
            f"{type(model).__name__} has no nn.Linear in blocks.* left to quantize "
            f"(skip={tuple(skip)!r})"
        )
    for name, mod in targets:
        model.set_submodule(name, DynamicInt8Linear(mod))
    return model
