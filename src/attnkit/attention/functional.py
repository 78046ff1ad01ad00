"""`attention(q, k, v, ...)`: the single entry point for exact attention in attnkit.

It validates its inputs (`attnkit.attention.arguments`: errors name the bad value and what was
expected), describes the mask once as a `MaskSpec`, asks `attnkit.attention.planner` for a
backend and calls it. `explain(...)` takes the same arguments and says which backend
`backend="auto"` would pick, and why. Empty inputs (B, Tq or Tk = 0) get the planner's "empty"
plan: an empty or all-zero output, no kernel.

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

from attnkit._util.env import debug
from attnkit.attention.arguments import BACKENDS, check_bool_mask, check_qkv, validate
from attnkit.attention.backends._common import alibi_bias
from attnkit.attention.backends.flex import flex_attention_call
from attnkit.attention.backends.math import math_attention
from attnkit.attention.backends.sdpa import fused, sdpa_attention
from attnkit.attention.backends.windowed import windowed_attention
from attnkit.attention.masks import MaskSpec
from attnkit.attention.planner import DENSE_MASK_BUDGET, PLANS, Plan, Planned, planned, signature
from attnkit.positional import alibi_slopes

# check_qkv and check_bool_mask (from attnkit.attention.arguments) serve the variants too
__all__ = [
    "attention",
    "explain",
    "Plan",
    "BACKENDS",
    "DENSE_MASK_BUDGET",
    "check_bool_mask",
    "check_qkv",
]


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
    validate(
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

    Examples:
        >>> out = attention(torch.randn(2, 4, 128, 32), torch.randn(2, 4, 128, 32), torch.randn(2, 4, 128, 32), causal=True)  # (2, 4, 128, 32)
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

    Examples:
        >>> explain(*(torch.empty(1, 8, 16384, 64, device="meta"),) * 3, causal=True, window=512)
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
