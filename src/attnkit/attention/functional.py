"""`attention(q, k, v, ...)`: the single entry point for exact attention in attnkit.

It validates its inputs (errors name the bad value and what was expected), describes the
mask once as a `MaskSpec`, picks a backend and calls it.  `explain(...)` takes the same
arguments and says which backend `backend="auto"` would pick, and why.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from attnkit.attention import backends as _b
from attnkit.attention.masks import MaskSpec
from attnkit.positional import alibi_slopes

__all__ = ["attention", "explain", "Plan", "BACKENDS"]

BACKENDS = ("auto", "math", "sdpa", "flex", "windowed")
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

# auto: a dense mask/bias larger than this goes to FlexAttention when it can run there
DENSE_MASK_BUDGET = 256 * 2**20


@dataclass(frozen=True)
class Plan:
    """The backend `attention` will use for a call, and the reason."""

    backend: str
    reason: str

    def __str__(self) -> str:  # pragma: no cover - formatting only
        return f"{self.backend}: {self.reason}"


def _shape(t: Tensor) -> str:
    return str(tuple(t.shape))


def _broadcastable(shape, target) -> bool:
    if len(shape) > len(target):
        return False
    for s, t in zip(reversed(shape), reversed(target)):
        if s != 1 and s != t:
            return False
    return True


def _validate(
    q, k, v, causal, mask, key_padding_mask, window, bias, document_ids, dropout_p, scale, backend
):
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor):
            raise TypeError(
                f"{name} must be a torch.Tensor of shape (B, H, T, D), got {type(t).__name__}"
            )
        if t.dim() != 4:
            raise ValueError(f"{name} must be 4-D (B, H, T, D), got shape {_shape(t)}")
        if t.dtype not in _FLOAT_DTYPES:
            raise TypeError(
                f"{name} must be a floating tensor (float16/bfloat16/float32/float64), got {t.dtype}"
            )
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k, v must share a dtype, got q={q.dtype}, k={k.dtype}, v={v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(
            f"q, k, v must be on one device, got q={q.device}, k={k.device}, v={v.device}"
        )
    B, Hq, Tq, D = q.shape
    if k.shape[0] != B or v.shape[0] != B:
        raise ValueError(f"batch sizes differ: q {_shape(q)}, k {_shape(k)}, v {_shape(v)}")
    if k.shape[3] != D:
        raise ValueError(
            f"q and k head dims differ: q {_shape(q)} has D={D}, k {_shape(k)} has D={k.shape[3]}"
        )
    if k.shape[1] != v.shape[1] or k.shape[2] != v.shape[2]:
        raise ValueError(f"k {_shape(k)} and v {_shape(v)} must have the same heads and length")
    Hkv, Tk = k.shape[1], k.shape[2]
    if Hkv == 0 or Hq % Hkv != 0:
        raise ValueError(
            f"query heads ({Hq}) must be a multiple of key/value heads ({Hkv}) for grouped-query attention"
        )
    if not isinstance(causal, bool):
        raise TypeError(f"causal must be a bool, got {causal!r}")
    if window is not None:
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ValueError(
                f"window must be a positive int (keys each query may see), got {window!r}"
            )
    if (
        not isinstance(dropout_p, (int, float))
        or isinstance(dropout_p, bool)
        or not 0.0 <= dropout_p < 1.0
    ):
        raise ValueError(f"dropout_p must be a float in [0, 1), got {dropout_p!r}")
    if scale is not None and (
        isinstance(scale, bool)
        or not isinstance(scale, (int, float))
        or not math.isfinite(scale)
        or scale <= 0
    ):
        raise ValueError(f"scale must be a positive finite float or None, got {scale!r}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}; got {backend!r}")
    if mask is not None:
        if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
            what = mask.dtype if isinstance(mask, Tensor) else type(mask).__name__
            raise TypeError(f"mask must be a bool tensor (True = may attend), got {what}")
        if not _broadcastable(tuple(mask.shape), (B, Hq, Tq, Tk)):
            raise ValueError(
                f"mask of shape {_shape(mask)} is not broadcastable to (B, Hq, Tq, Tk) = ({B}, {Hq}, {Tq}, {Tk})"
            )
        if mask.device != q.device:
            raise ValueError(f"mask is on {mask.device} but q is on {q.device}")
    if key_padding_mask is not None:
        if not isinstance(key_padding_mask, Tensor) or key_padding_mask.dtype != torch.bool:
            what = (
                key_padding_mask.dtype
                if isinstance(key_padding_mask, Tensor)
                else type(key_padding_mask).__name__
            )
            raise TypeError(
                f"key_padding_mask must be a bool tensor (True = real token), got {what}"
            )
        if tuple(key_padding_mask.shape) != (B, Tk):
            raise ValueError(
                f"key_padding_mask must have shape (B, Tk) = ({B}, {Tk}), got {_shape(key_padding_mask)}"
            )
        if key_padding_mask.device != q.device:
            raise ValueError(
                f"key_padding_mask is on {key_padding_mask.device} but q is on {q.device}"
            )
    if document_ids is not None:
        if (
            not isinstance(document_ids, Tensor)
            or document_ids.dtype.is_floating_point
            or document_ids.dtype == torch.bool
        ):
            what = (
                document_ids.dtype
                if isinstance(document_ids, Tensor)
                else type(document_ids).__name__
            )
            raise TypeError(f"document_ids must be an integer tensor (B, Tk), got {what}")
        if tuple(document_ids.shape) != (B, Tk):
            raise ValueError(
                f"document_ids must have shape (B, Tk) = ({B}, {Tk}), got {_shape(document_ids)}"
            )
        if document_ids.device != q.device:
            raise ValueError(f"document_ids is on {document_ids.device} but q is on {q.device}")
    if bias is not None:
        if isinstance(bias, str):
            if bias != "alibi":
                raise ValueError(f"bias must be 'alibi' or a float tensor, got {bias!r}")
        elif isinstance(bias, Tensor):
            if not bias.dtype.is_floating_point:
                raise TypeError(f"bias tensor must be floating point, got {bias.dtype}")
            if not _broadcastable(tuple(bias.shape), (B, Hq, Tq, Tk)):
                raise ValueError(
                    f"bias of shape {_shape(bias)} is not broadcastable to (B, Hq, Tq, Tk) = ({B}, {Hq}, {Tq}, {Tk})"
                )
            if bias.device != q.device:
                raise ValueError(f"bias is on {bias.device} but q is on {q.device}")
        else:
            raise TypeError(f"bias must be 'alibi' or a float tensor, got {type(bias).__name__}")
    positional = causal or window is not None or isinstance(bias, str) or document_ids is not None
    if Tq > Tk and positional:
        raise ValueError(
            f"queries ({Tq}) longer than keys ({Tk}): with causal/window/alibi/document_ids the queries "
            "must be the last Tq of the Tk positions"
        )


def _needs_grad(*ts) -> bool:
    return torch.is_grad_enabled() and any(isinstance(t, Tensor) and t.requires_grad for t in ts)


def _flex_available(device: torch.device) -> bool:
    if device.type == "meta":
        return True
    try:
        import torch.nn.attention.flex_attention  # noqa: F401
    except Exception:  # pragma: no cover - old torch
        return False
    return device.type in ("cpu", "cuda")


def _plan(q, k, spec: MaskSpec, bias, dropout_p, return_weights, backend, grad: bool) -> Plan:
    Tq, Tk = spec.q_len, spec.k_len
    cpu_like = q.device.type in ("cpu", "meta")
    if backend != "auto":
        return _check_explicit(q, spec, bias, dropout_p, return_weights, backend, grad, cpu_like)
    if return_weights:
        return Plan(
            "math", "attention weights were requested; only the math backend materialises them"
        )
    tensor_bias = isinstance(bias, Tensor)
    if spec.window is not None and spec.mask is None and not tensor_bias and 2 * spec.window < Tk:
        return Plan(
            "windowed",
            f"sliding window {spec.window} << {Tk} keys: blocked band kernel, O(N*w) time and memory, "
            "with its own backward",
        )
    dense_bytes = 0
    if not spec.structural_only or spec.window is not None or (spec.causal and Tq != Tk):
        b = (
            q.shape[0]
            if (spec.key_padding_mask is not None or spec.document_ids is not None)
            else 1
        )
        dense_bytes += b * Tq * Tk
    if bias is not None:
        dense_bytes += q.shape[1] * Tq * Tk * 4
    if dense_bytes > DENSE_MASK_BUDGET and spec.mask is None and not tensor_bias:
        if dropout_p == 0 and (not grad or not cpu_like) and _flex_available(q.device):
            return Plan(
                "flex",
                f"a dense mask/bias would take {dense_bytes / 2**20:.0f} MiB; FlexAttention skips empty "
                "blocks and computes the mask per block",
            )
    if spec.is_empty and bias is None:
        return Plan("sdpa", "no mask: fused scaled_dot_product_attention")
    if spec.structural_only and spec.window is None and bias is None and Tq == Tk:
        return Plan("sdpa", "plain causal mask: fused scaled_dot_product_attention with is_causal")
    return Plan(
        "sdpa",
        f"fused scaled_dot_product_attention with a dense mask/bias ({max(dense_bytes, 1) / 2**20:.1f} MiB)",
    )


def _check_explicit(q, spec, bias, dropout_p, return_weights, backend, grad, cpu_like) -> Plan:
    if return_weights and backend != "math":
        raise ValueError(
            f"backend={backend!r} is a fused kernel and does not materialise attention weights; "
            "use backend='math' (or 'auto') with return_weights=True"
        )
    if backend == "flex":
        if dropout_p > 0:
            raise ValueError(
                f"backend='flex' does not support dropout_p={dropout_p}; use 'sdpa', 'math' or 'windowed'"
            )
        if grad and cpu_like:
            raise ValueError(
                "backend='flex' has no backward pass on CPU in this PyTorch; use backend='auto' "
                "(or 'windowed' for sliding windows, 'sdpa' otherwise) for training"
            )
        if not _flex_available(q.device):
            raise ValueError(f"backend='flex' is not available on device {q.device}")
    if backend == "windowed":
        if spec.window is None:
            raise ValueError("backend='windowed' needs window=<int>")
        if spec.mask is not None or isinstance(bias, Tensor):
            raise ValueError(
                "backend='windowed' supports causal/window/key_padding_mask/document_ids/alibi, not a dense mask or bias tensor"
            )
    return Plan(backend, "requested explicitly")


def _prepare(
    q,
    k,
    v,
    causal,
    mask,
    key_padding_mask,
    window,
    bias,
    document_ids,
    dropout_p,
    scale,
    backend,
    return_weights,
):
    _validate(
        q,
        k,
        v,
        causal,
        mask,
        key_padding_mask,
        window,
        bias,
        document_ids,
        dropout_p,
        scale,
        backend,
    )
    spec = MaskSpec(
        q_len=q.shape[2],
        k_len=k.shape[2],
        causal=causal,
        window=window,
        key_padding_mask=key_padding_mask,
        document_ids=document_ids,
        mask=mask,
    )
    grad = _needs_grad(q, k, v, bias)
    plan = _plan(q, k, spec, bias, dropout_p, return_weights, backend, grad)
    return spec, plan


def attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    causal: bool = False,
    mask: Tensor | None = None,
    key_padding_mask: Tensor | None = None,
    window: int | None = None,
    bias: None | str | Tensor = None,
    document_ids: Tensor | None = None,
    dropout_p: float = 0.0,
    scale: float | None = None,
    backend: str = "auto",
    return_weights: bool = False,
):
    """Exact scaled dot-product attention.

    Args:
        q: (B, Hq, Tq, D) queries; k: (B, Hkv, Tk, D) keys; v: (B, Hkv, Tk, Dv) values.
            Hq must be a multiple of Hkv (grouped-query / multi-query attention).  When
            Tq < Tk the queries are the last Tq positions (KV-cache decoding).
        causal: query at position p sees keys 0..p.
        mask: bool, broadcastable to (B, Hq, Tq, Tk); True = may attend.
        key_padding_mask: bool (B, Tk); True = real token, False = padding.
        window: sliding window: each query sees the `window` most recent keys, itself
            included; with causal=False the same reach on both sides (|p - j| < window).
        bias: "alibi" (per-head linear distance penalty) or a float tensor broadcastable to
            (B, Hq, Tq, Tk) added to the scores.
        document_ids: int (B, Tk); tokens attend only within their own document (packed
            sequences without padding).
        dropout_p: dropout on the attention weights (pass 0.0 at evaluation).
        scale: score scale, default 1/sqrt(D).
        backend: "auto", "math", "sdpa", "flex" or "windowed" (see `explain`).
        return_weights: also return the (B, Hq, Tq, Tk) weights (math backend).

    Returns:
        out (B, Hq, Tq, Dv), or (out, weights) with return_weights=True.  A query that may
        attend to nothing gets zeros (and zero gradients) in every backend.
    """
    spec, plan = _prepare(
        q,
        k,
        v,
        causal,
        mask,
        key_padding_mask,
        window,
        bias,
        document_ids,
        dropout_p,
        scale,
        backend,
        return_weights,
    )
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    slopes = alibi_slopes(q.shape[1]).to(q.device) if isinstance(bias, str) else None
    name = plan.backend
    if name == "windowed":
        return _b.windowed_attention(
            q, k, v, spec, alibi_slopes=slopes, scale=scale, dropout_p=dropout_p
        )
    if name == "flex":
        return _b.flex_attention_call(
            q,
            k,
            v,
            spec,
            alibi_slopes=slopes,
            bias=bias if isinstance(bias, Tensor) else None,
            scale=scale,
        )
    dense_bias = _b.alibi_bias(slopes, spec, q.device) if slopes is not None else bias
    if name == "sdpa":
        return _b.sdpa_attention(q, k, v, spec, bias=dense_bias, scale=scale, dropout_p=dropout_p)
    return _b.math_attention(
        q,
        k,
        v,
        spec,
        bias=dense_bias,
        scale=scale,
        dropout_p=dropout_p,
        return_weights=return_weights,
    )


def explain(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    causal: bool = False,
    mask: Tensor | None = None,
    key_padding_mask: Tensor | None = None,
    window: int | None = None,
    bias: None | str | Tensor = None,
    document_ids: Tensor | None = None,
    dropout_p: float = 0.0,
    scale: float | None = None,
    backend: str = "auto",
    return_weights: bool = False,
) -> Plan:
    """The backend `attention(...)` would use for these arguments, and why.

    Accepts the same arguments as `attention`; tensors may live on the "meta" device, so a
    plan can be asked for without allocating anything.
    """
    _, plan = _prepare(
        q,
        k,
        v,
        causal,
        mask,
        key_padding_mask,
        window,
        bias,
        document_ids,
        dropout_p,
        scale,
        backend,
        return_weights,
    )
    return plan
