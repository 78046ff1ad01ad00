"""The checks of `attention()`'s arguments, each error naming the bad value and what was
expected; `attnkit.attention.functional` runs them once per call signature (every call with
``ATTNKIT_DEBUG=1``, which also refuses non-finite q, k and v)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from attnkit._util.checks import choice, flag, int_at_least, positive_float, probability
from attnkit._util.env import debug

__all__ = ["BACKENDS", "check_bool_mask", "check_qkv", "validate"]

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
    """Check that q, k and v are 4-D floating tensors of one dtype on one device.

    Only the rank, dtype and device are checked here; how the shapes must agree with each
    other is checked by :func:`validate`.

    Args:
        q: queries, (B, Hq, Tq, D).
        k: keys, (B, Hkv, Tk, D).
        v: values, (B, Hkv, Tk, Dv).

    Raises:
        TypeError: if one is not a tensor, is not float16/bfloat16/float32/float64, or the
            three dtypes differ.
        ValueError: if one is not 4-D, or they are on different devices.

    Examples:
        >>> check_qkv(torch.randn(2, 4, 8, 16), torch.randn(2, 4, 8, 16), torch.randn(2, 4, 8, 16))
    """
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
    """Check that ``t`` is a bool tensor (any shape; the shape is the caller's to check).

    Args:
        name: the argument's name, for the error.
        t: the mask to check, a bool tensor such as (B, Tk).
        meaning: what True means (e.g. "True = real token"), for the error.

    Raises:
        TypeError: if ``t`` is not a tensor of dtype ``torch.bool``.

    Examples:
        >>> check_bool_mask("valid_key_mask", torch.ones(2, 8, dtype=torch.bool), "True = real")
    """
    if not isinstance(t, Tensor) or t.dtype != torch.bool:
        what = t.dtype if isinstance(t, Tensor) else type(t).__name__
        raise TypeError(f"{name} must be a bool tensor ({meaning}), got {what}")


def validate(
    q, k, v, causal, mask, valid_key_mask, window, bias, document_ids, dropout_p, scale, backend
) -> None:
    """Run every check of :func:`attnkit.attention.functional.attention`'s arguments.

    Each error names the bad value and what was expected. With ``ATTNKIT_DEBUG=1`` it also
    refuses NaN or inf in q, k and v (and NaN or +inf in a bias tensor).

    Args:
        q: queries, (B, Hq, Tq, D); Hq a multiple of Hkv.
        k: keys, (B, Hkv, Tk, D).
        v: values, (B, Hkv, Tk, Dv).
        causal: a bool.
        mask: None or a bool tensor broadcastable to (B, Hq, Tq, Tk), 2 to 4 dims.
        valid_key_mask: None or a bool (B, Tk) tensor.
        window: None or an int >= 1.
        bias: None, "alibi" or a float tensor broadcastable to (B, Hq, Tq, Tk).
        document_ids: None or an integer (B, Tk) tensor.
        dropout_p: a float in [0, 1).
        scale: None or a finite float > 0.
        backend: one of :data:`BACKENDS`.

    Raises:
        TypeError: for an argument of the wrong type or dtype.
        ValueError: for a bad shape, device or value; also when Tq > Tk with causal, window,
            alibi or document_ids (the queries must then be the last Tq positions).

    Examples:
        >>> q = torch.randn(2, 4, 8, 16)
        >>> validate(q, q, q, True, None, None, None, None, None, 0.0, None, "auto")  # None
    """
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
