"""The SDPA backend: ``torch.nn.functional.scaled_dot_product_attention`` (fused; O(N) memory for
causal or unmasked inputs). Every call of SDPA in attnkit goes through this module: the variants
that run SDPA on blocks of their own use :func:`fused`.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from attnkit.attention.backends._common import NEG_INF
from attnkit.attention.masks import MaskSpec


def fused(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    attn_mask: Tensor | None = None,
    is_causal: bool = False,
    dropout_p: float = 0.0,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> Tensor:
    """SDPA as torch defines it, for inputs already checked by the caller: q (..., Tq, D),
    k (..., Tk, D), v (..., Tk, Dv) -> (..., Tq, Dv); ``attn_mask`` bool (True = may attend)
    or float (added to the scores).

    Examples:
        >>> fused(q, k, v, is_causal=True)  # q (..., Tq, D), k, v (..., Tk, D)
    """
    # flags that come from shapes are symbolic while torch.compile traces dynamic lengths; an
    # `if` on them makes them plain bools (a guard on the relation, not on the sizes)
    is_causal = True if is_causal else False  # noqa: SIM210
    enable_gqa = True if enable_gqa else False  # noqa: SIM210
    return F.scaled_dot_product_attention(
        q,
        k,
        v,
        attn_mask=attn_mask,
        dropout_p=dropout_p,
        is_causal=is_causal,
        scale=scale,
        enable_gqa=enable_gqa,
    )


def needs_no_mask(spec: MaskSpec, bias: object) -> bool:
    """Whether SDPA runs a call with no mask tensor at all: no bias, no per-batch or user mask,
    no window, and causal only as ``is_causal`` (which aligns the queries with the first keys,
    so it serves only Tq == Tk).

    Examples:
        >>> needs_no_mask(MaskSpec(8, 8, causal=True), None)
    """
    return (
        bias is None
        and spec.structural_only
        and spec.window is None
        and (not spec.causal or spec.q_len == spec.k_len)
    )


def sdpa_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    spec: MaskSpec,
    *,
    bias: Tensor | None,
    scale: float,
    dropout_p: float,
) -> Tensor:
    """torch SDPA.  Causal self-attention without other masks takes the is_causal fast path.

    Examples:
        >>> out = sdpa_attention(q, k, v, MaskSpec(T, T, causal=True), bias=None, scale=D**-0.5, dropout_p=0.0)  # q (B, Hq, T, D), k, v (B, Hkv, T, D)
    """
    gqa = q.shape[1] != k.shape[1]
    if needs_no_mask(spec, bias):
        return fused(
            q, k, v, dropout_p=dropout_p, is_causal=spec.causal, scale=scale, enable_gqa=gqa
        )
    allowed = spec.dense(q.device)
    empty_rows = None
    if allowed is not None:
        # give rows with no key something finite to attend to, then zero them below (always:
        # asking whether there are any would be a host sync)
        empty_rows = ~allowed.any(dim=-1, keepdim=True)  # (B?, H?, Tq, 1)
        allowed = allowed | empty_rows
    attn_mask: Tensor | None
    if bias is not None:
        attn_mask = bias.to(q.dtype)
        if allowed is not None:
            attn_mask = attn_mask.masked_fill(~allowed, NEG_INF)
    else:
        attn_mask = allowed
    out = fused(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, scale=scale, enable_gqa=gqa)
    if empty_rows is not None:
        out = out.masked_fill(empty_rows, 0.0)
    return out
