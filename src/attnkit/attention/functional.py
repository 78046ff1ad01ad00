"""`attention(q, k, v, ...)`: the single entry point for exact attention in attnkit.

It validates its inputs (errors name the bad value and what was expected), describes the mask
once as a `MaskSpec`, asks `attnkit.attention.planner` for a backend and calls it. `explain(...)`
takes the same arguments and says which backend `backend="auto"` would pick, and why.

Hot path: the validation and the plan are remembered by call signature (shapes, dtypes, devices,
flags and the types of the scalar arguments; see `attnkit.attention.planner.signature`), so a call like one made before
(each layer of a decoding step, each step of a training loop) runs no checks beyond building that
signature, and planning it is a dict lookup. A new signature is validated in full before its plan
is stored, so an invalid call always raises. With ``ATTNKIT_DEBUG=1`` in the environment
(:func:`attnkit._util.env.debug`) every call is validated and planned afresh.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from attnkit._util.checks import choice, flag, int_at_least, positive_float, probability
from attnkit._util.env import debug
from attnkit.attention.backends._common import alibi_bias
from attnkit.attention.backends.flex import flex_attention_call
from attnkit.attention.backends.math import math_attention
from attnkit.attention.backends.sdpa import fused, sdpa_attention
from attnkit.attention.backends.windowed import windowed_attention
from attnkit.attention.masks import MaskSpec
from attnkit.attention.planner import DENSE_MASK_BUDGET, PLANS, Plan, Planned, planned, signature
from attnkit.positional import alibi_slopes

__all__ = ["attention", "explain", "Plan", "BACKENDS", "DENSE_MASK_BUDGET"]

BACKENDS = ("auto", "math", "sdpa", "flex", "windowed")
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _shape(t: Tensor) -> str:
    return str(tuple(t.shape))


def _broadcastable(shape, target) -> bool:
    if len(shape) > len(target):
        return False
    for s, t in zip(reversed(shape), reversed(target)):
        if s != 1 and s != t:
            return False
    return True


def check_qkv(q, k, v) -> None:
    """q, k, v are 4-D (B, H, T, D) floating tensors of one dtype on one device."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor):
            raise TypeError(
                f"{name} must be a torch.Tensor of shape (B, H, T, D), got {type(t).__name__}"
            )
        if t.dim() != 4:
            raise ValueError(
                f"{name} must be 4-D (it must have shape (B, H, T, D)), got shape {_shape(t)}"
            )
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


def check_bool_mask(name: str, t, meaning: str) -> None:
    """``t`` is a bool tensor; ``meaning`` says what True means, for the error."""
    if not isinstance(t, Tensor) or t.dtype != torch.bool:
        what = t.dtype if isinstance(t, Tensor) else type(t).__name__
        raise TypeError(f"{name} must be a bool tensor ({meaning}), got {what}")


def _validate(
    q, k, v, causal, mask, valid_key_mask, window, bias, document_ids, dropout_p, scale, backend
) -> None:
    """Every check of the arguments, each error naming the bad value and what was expected."""
    check_qkv(q, k, v)
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
    if Hq == 0 or D == 0 or v.shape[3] == 0:
        raise ValueError(
            f"heads and head dims must be >= 1: q {_shape(q)}, k {_shape(k)}, v {_shape(v)} "
            "(only B, Tq and Tk may be 0)"
        )
    if Hkv == 0 or Hq % Hkv != 0:
        raise ValueError(
            f"query heads ({Hq}) must be a multiple of key/value heads ({Hkv}) for grouped-query attention"
        )
    flag("causal", causal)
    if window is not None:
        int_at_least("window", window, 1, "a positive int (keys each query may see)")
    probability("dropout_p", dropout_p)
    if scale is not None:
        positive_float("scale", scale)
        if float(scale) > torch.finfo(q.dtype).max:
            raise ValueError(
                f"scale must be a finite number > 0 in {q.dtype} (at most "
                f"{torch.finfo(q.dtype).max:g}), got {scale!r}"
            )
    choice("backend", backend, BACKENDS)
    if mask is not None:
        check_bool_mask("mask", mask, "True = may attend")
        if not 2 <= mask.dim() <= 4 or not _broadcastable(tuple(mask.shape), (B, Hq, Tq, Tk)):
            raise ValueError(
                f"mask of shape {_shape(mask)} is not broadcastable to (B, Hq, Tq, Tk) = ({B}, {Hq}, {Tq}, {Tk}) "
                "with 2 to 4 dims"
            )
        if mask.device != q.device:
            raise ValueError(f"mask is on {mask.device} but q is on {q.device}")
    if valid_key_mask is not None:
        check_bool_mask("valid_key_mask", valid_key_mask, "True = real token")
        if tuple(valid_key_mask.shape) != (B, Tk):
            raise ValueError(
                f"valid_key_mask must have shape (B, Tk) = ({B}, {Tk}), got {_shape(valid_key_mask)}"
            )
        if valid_key_mask.device != q.device:
            raise ValueError(f"valid_key_mask is on {valid_key_mask.device} but q is on {q.device}")
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
            if not 2 <= bias.dim() <= 4 or not _broadcastable(tuple(bias.shape), (B, Hq, Tq, Tk)):
                raise ValueError(
                    f"bias of shape {_shape(bias)} is not broadcastable to (B, Hq, Tq, Tk) = ({B}, {Hq}, {Tq}, {Tk}) "
                    "with 2 to 4 dims"
                )
            if bias.device != q.device:
                raise ValueError(f"bias is on {bias.device} but q is on {q.device}")
        else:
            raise TypeError(f"bias must be 'alibi' or a float tensor, got {type(bias).__name__}")
    if debug():
        _check_finite(q, k, v, bias)
    positional = causal or window is not None or isinstance(bias, str) or document_ids is not None
    if Tq > Tk and positional:
        raise ValueError(
            f"queries ({Tq}) longer than keys ({Tk}): with causal/window/alibi/document_ids the queries "
            "must be the last Tq of the Tk positions"
        )


def _check_finite(q, k, v, bias) -> None:
    """With ``ATTNKIT_DEBUG=1``: q, k and v hold no NaN or inf, a bias tensor no NaN or +inf
    (-inf is a mask). Off by default: it costs a host sync, and IEEE arithmetic already
    carries a non-finite input into the output."""
    if q.device.type == "meta":
        return
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.numel() and not bool(torch.isfinite(t).all()):
            raise ValueError(
                f"{name} holds NaN or inf (ATTNKIT_DEBUG=1 checks); expected finite values"
            )
    if isinstance(bias, Tensor) and bias.numel():
        if bool((torch.isnan(bias) | (bias == math.inf)).any()):
            raise ValueError(
                "bias holds NaN or +inf (ATTNKIT_DEBUG=1 checks); expected -inf or finite values"
            )


def _needs_grad(q, k, v, bias) -> bool:
    if not torch.is_grad_enabled():
        return False
    return bool(
        q.requires_grad
        or k.requires_grad
        or v.requires_grad
        or (isinstance(bias, Tensor) and bias.requires_grad)
    )


def _spec(q, k, causal, mask, valid_key_mask, window, document_ids) -> MaskSpec:
    if window is not None:  # a window of Tk keys or more restricts nothing more than Tk does
        window = min(window, max(k.shape[2], 1))
    return MaskSpec(
        q_len=q.shape[2],
        k_len=k.shape[2],
        causal=causal,
        window=window,
        valid_key_mask=valid_key_mask,
        document_ids=document_ids,
        mask=mask,
    )


def _lookup(
    q,
    k,
    v,
    causal,
    mask,
    valid_key_mask,
    window,
    bias,
    document_ids,
    dropout_p,
    scale,
    backend,
    return_weights,
) -> Planned:
    """The plan of this call: from the cache when its signature was seen before, else
    validated (raising for a bad argument), planned and stored."""
    key = None
    grad = False
    if not debug() and not torch.compiler.is_compiling():  # compiled: planned once, when traced
        try:
            grad = torch.is_grad_enabled() and _needs_grad(q, k, v, bias)
            key = signature(
                q,
                k,
                v,
                causal,
                mask,
                valid_key_mask,
                window,
                bias,
                document_ids,
                dropout_p,
                scale,
                backend,
                return_weights,
                grad,
            )
            found = PLANS.get(key)
        except (AttributeError, TypeError):  # not tensors, or unhashable: validation says why
            key = found = None
        if found is not None:
            return found
    else:
        try:
            grad = _needs_grad(q, k, v, bias)
        except AttributeError:
            grad = False
    _validate(
        q,
        k,
        v,
        causal,
        mask,
        valid_key_mask,
        window,
        bias,
        document_ids,
        dropout_p,
        scale,
        backend,
    )
    spec = _spec(q, k, causal, mask, valid_key_mask, window, document_ids)
    resolved = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    entry = planned(q, k, spec, bias, dropout_p, return_weights, backend, grad, resolved)
    if key is not None:
        PLANS.put(key, entry)
    return entry


def attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    causal: bool = False,
    mask: Tensor | None = None,
    valid_key_mask: Tensor | None = None,
    window: int | None = None,
    bias: None | str | Tensor = None,
    document_ids: Tensor | None = None,
    dropout_p: float = 0.0,
    scale: float | None = None,
    backend: str = "auto",
    return_weights: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Exact scaled dot-product attention.

    Args:
        q: (B, Hq, Tq, D) queries; k: (B, Hkv, Tk, D) keys; v: (B, Hkv, Tk, Dv) values.
            Hq must be a multiple of Hkv (grouped-query / multi-query attention).  When
            Tq < Tk the queries are the last Tq positions (KV-cache decoding).
        causal: query at position p sees keys 0..p.
        mask: bool, broadcastable to (B, Hq, Tq, Tk); True = may attend.
        valid_key_mask: bool (B, Tk); True = real token (attend to it), False = padding.
            (The opposite polarity of torch.nn.MultiheadAttention's ``key_padding_mask``.)
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

    Empty inputs: B, Tq and Tk may be 0 (an empty output; with Tk = 0 every query gets zeros);
    heads and head dims must be >= 1. A window larger than Tk is the same as Tk.

    Non-finite inputs follow IEEE arithmetic: NaN or inf in q, k or v gives NaN or inf in
    the outputs it reaches (checking would cost a host sync on every call), except that
    PyTorch's fused CPU kernel gives zeros for a query whose scores are all NaN, as for a
    fully masked one. With ``ATTNKIT_DEBUG=1`` such inputs are refused with a ValueError.
    The user-facing paths (``generate``, ``Encoder.encode``, the command line) refuse a
    non-finite result instead of returning it.
    """
    entry = _lookup(
        q,
        k,
        v,
        causal,
        mask,
        valid_key_mask,
        window,
        bias,
        document_ids,
        dropout_p,
        scale,
        backend,
        return_weights,
    )
    if entry.fused is not None:  # one plain SDPA call: no mask to describe
        is_causal, fused_scale, gqa = entry.fused
        return fused(
            q, k, v, is_causal=is_causal, dropout_p=dropout_p, scale=fused_scale, enable_gqa=gqa
        )
    name = entry.plan.backend
    if name == "empty":
        return _empty(q, k, v, bias, return_weights)
    spec = _spec(q, k, causal, mask, valid_key_mask, window, document_ids)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    slopes = alibi_slopes(q.shape[1]).to(q.device) if isinstance(bias, str) else None
    if name == "windowed":
        return windowed_attention(
            q, k, v, spec, alibi_slopes=slopes, scale=scale, dropout_p=dropout_p
        )
    if name == "flex":
        return flex_attention_call(
            q,
            k,
            v,
            spec,
            alibi_slopes=slopes,
            bias=bias if isinstance(bias, Tensor) else None,
            scale=scale,
        )
    dense_bias = (
        alibi_bias(slopes, spec, q.device)
        if slopes is not None
        else (bias if isinstance(bias, Tensor) else None)
    )
    if name == "sdpa":
        return sdpa_attention(q, k, v, spec, bias=dense_bias, scale=scale, dropout_p=dropout_p)
    return math_attention(
        q,
        k,
        v,
        spec,
        bias=dense_bias,
        scale=scale,
        dropout_p=dropout_p,
        return_weights=return_weights,
    )


def _empty(q, k, v, bias, return_weights) -> Tensor | tuple[Tensor, Tensor]:
    """No batch, no queries or no keys: an empty output, or zeros for queries that have no key
    to attend to (zero gradients too)."""
    B, Hq, Tq, _ = q.shape
    out = q.new_zeros(B, Hq, Tq, v.shape[-1])  # (B, Hq, Tq, Dv)
    if _needs_grad(q, k, v, bias):  # keep the graph: every input gets a zero gradient
        tie = q.sum() + k.sum() + v.sum()
        if isinstance(bias, Tensor):
            tie = tie + bias.sum()
        out = out + 0 * tie
    if return_weights:
        return out, q.new_zeros(B, Hq, Tq, k.shape[2])  # (B, Hq, Tq, Tk)
    return out


def explain(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    causal: bool = False,
    mask: Tensor | None = None,
    valid_key_mask: Tensor | None = None,
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
    return _lookup(
        q,
        k,
        v,
        causal,
        mask,
        valid_key_mask,
        window,
        bias,
        document_ids,
        dropout_p,
        scale,
        backend,
        return_weights,
    ).plan
