"""Which backend runs an attention call, and why: `Plan`, chosen once per call signature.

`plan(...)` decides from shapes and flags (never from tensor contents, so it costs no host
sync). `PlanCache` remembers the decision by call signature (shapes, dtypes, devices, flags),
so that a repeated call (every layer of a decoding step, every step of a training loop) is a
dict lookup: `attnkit.attention.functional` validates and plans only on a miss.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from attnkit.attention.backends.sdpa import needs_no_mask
from attnkit.attention.masks import MaskSpec

__all__ = [
    "Plan",
    "Planned",
    "PlanCache",
    "plan",
    "planned",
    "signature",
    "PLANS",
    "DENSE_MASK_BUDGET",
]

# auto: a dense mask/bias larger than this goes to FlexAttention when it can run there
DENSE_MASK_BUDGET = 256 * 2**20


@dataclass(frozen=True)
class Plan:
    """The backend `attention` will use for a call, and the reason.

    Examples:
        >>> explain(q, k, v, causal=True)  # Plan(backend='sdpa', reason='...')
    """

    backend: str
    reason: str

    def __str__(self) -> str:  # pragma: no cover - formatting only
        return f"{self.backend}: {self.reason}"


@dataclass(frozen=True)
class Planned:
    """A plan as the cache keeps it: the `Plan`, and for a call that is one plain fused SDPA
    call (no mask tensor, no bias) its arguments ``(is_causal, scale, enable_gqa)``, so that
    running it needs no `MaskSpec`.

    Examples:
        >>> Planned(Plan("math", "weights requested"))
    """

    plan: Plan
    fused: tuple[bool, float, bool] | None = None


class PlanCache:
    """Plans by call signature, at most ``max_size`` of them (the oldest go first).

    Examples:
        >>> cache = PlanCache(max_size=128); cache.get(key)  # None until put
    """

    def __init__(self, max_size: int = 4096):
        self.max_size = max_size
        self._plans: dict[Hashable, Planned] = {}

    def get(self, key: Hashable) -> Planned | None:
        """The plan stored under ``key``, or None.

        Examples:
            >>> cache.get(signature(q, k, v, True, None, None, None, None, None, 0.0, None, "auto", False, False))
        """
        return self._plans.get(key)

    def put(self, key: Hashable, value: Planned) -> None:
        # no lock: each dict operation is atomic, and two threads evicting at once only
        # evict one entry more (a lock would also break torch.compile's graph here)
        """Store ``value`` under ``key``, dropping the oldest plan when full.

        Examples:
            >>> cache.put(key, Planned(Plan("sdpa", "dense causal")))
        """
        if len(self._plans) >= self.max_size:
            try:
                self._plans.pop(next(iter(self._plans)))
            except (KeyError, RuntimeError, StopIteration):
                pass
        self._plans[key] = value

    def clear(self) -> None:
        """Forget every plan.

        Examples:
            >>> cache.clear()
        """
        self._plans.clear()

    def __len__(self) -> int:
        return len(self._plans)


# the plans of this process's attention calls
PLANS = PlanCache()


def _tensor_sig(t: Any) -> Hashable:
    return None if t is None else (t.shape, t.dtype, t.device)


def signature(
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
) -> Hashable:
    """What validation and planning depend on: equal signatures get equal answers. Scalars go in
    with their types (``True == 1``, but ``window=True`` is an error and ``window=1`` is not);
    AttributeError when an argument is not even tensor-like.

    Examples:
        >>> signature(q, k, v, True, None, None, None, None, None, 0.0, None, "auto", False, False)
    """
    return (
        q.shape,
        q.dtype,
        q.device,
        k.shape,
        k.dtype,
        k.device,
        v.shape,
        v.dtype,
        v.device,
        causal,
        type(causal),
        window,
        type(window),
        dropout_p,
        type(dropout_p),
        scale,
        type(scale),
        backend,
        bool(return_weights),
        grad,
        _tensor_sig(mask),
        _tensor_sig(valid_key_mask),
        _tensor_sig(document_ids),
        bias if bias is None or isinstance(bias, str) else ("tensor", _tensor_sig(bias)),
    )


def _flex_available(device: torch.device) -> bool:
    if device.type == "meta":
        return True
    try:
        import torch.nn.attention.flex_attention  # noqa: F401
    except Exception:  # pragma: no cover - old torch
        return False
    return device.type in ("cpu", "cuda")


def plan(
    q: Tensor,
    spec: MaskSpec,
    bias: None | str | Tensor,
    dropout_p: float,
    return_weights: bool,
    backend: str,
    grad: bool,
) -> Plan:
    """The backend for validated inputs: ``backend`` itself when it is not ``"auto"`` (after
    checking that it can run the call), else the cheapest one that can.

    Examples:
        >>> plan(q, spec, None, 0.0, False, "auto", False)  # q (B, H, Tq, D) -> Plan
    """
    Tq, Tk = spec.q_len, spec.k_len
    cpu_like = q.device.type in ("cpu", "meta")
    if backend != "auto":
        chosen = _check_explicit(q, spec, bias, dropout_p, return_weights, backend, grad, cpu_like)
        return _EMPTY if _is_empty(q, spec) else chosen
    if _is_empty(q, spec):
        return _EMPTY
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
        b = q.shape[0] if (spec.valid_key_mask is not None or spec.document_ids is not None) else 1
        dense_bytes += b * Tq * Tk
    if bias is not None:
        dense_bytes += q.shape[1] * Tq * Tk * 4
    if dense_bytes > DENSE_MASK_BUDGET and spec.mask is None and not tensor_bias:
        if (
            dropout_p == 0
            and (not grad or not cpu_like)
            and _flex_available(q.device)
            and not (cpu_like and q.dtype == torch.float64)
        ):
            return Plan(
                "flex",
                f"a dense mask/bias would take {_mib(dense_bytes, 0)} MiB; FlexAttention skips empty "
                "blocks and computes the mask per block",
            )
    if spec.is_empty and bias is None:
        return Plan("sdpa", "no mask: fused scaled_dot_product_attention")
    if spec.structural_only and spec.window is None and bias is None and Tq == Tk:
        return Plan("sdpa", "plain causal mask: fused scaled_dot_product_attention with is_causal")
    return Plan(
        "sdpa",
        f"fused scaled_dot_product_attention with a dense mask/bias ({_mib(dense_bytes, 1)} MiB)",
    )


def _mib(nbytes: Any, digits: int) -> str:
    """``nbytes`` in MiB for a plan's reason; while torch.compile traces (where a dynamic
    shape's count is symbolic and cannot be formatted) the number is left out."""
    if torch.compiler.is_compiling():
        return "some"
    return f"{max(nbytes, 1) / 2**20:.{digits}f}"


_EMPTY = Plan("empty", "no batch, no queries or no keys: an empty or all-zero output, no kernel")


def _is_empty(q: Tensor, spec: MaskSpec) -> bool:
    return q.shape[0] == 0 or spec.q_len == 0 or spec.k_len == 0


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
        if cpu_like and q.dtype == torch.float64:
            raise ValueError(
                "backend='flex' on CPU takes float32, float16 or bfloat16 inputs, got "
                "torch.float64; use backend='math' or 'sdpa' (or 'auto')"
            )
    if backend == "windowed":
        if spec.window is None:
            raise ValueError("backend='windowed' needs window=<int>")
        if spec.mask is not None or isinstance(bias, Tensor):
            raise ValueError(
                "backend='windowed' supports causal/window/valid_key_mask/document_ids/alibi, not a dense mask or bias tensor"
            )
    return Plan(backend, "requested explicitly")


def planned(
    q: Tensor,
    k: Tensor,
    spec: MaskSpec,
    bias: None | str | Tensor,
    dropout_p: float,
    return_weights: bool,
    backend: str,
    grad: bool,
    scale: float,
) -> Planned:
    """`plan` with the arguments of a plain fused SDPA call when the plan is one.

    Examples:
        >>> planned(q, k, spec, None, 0.0, False, "auto", False, D**-0.5)  # q (B, Hq, Tq, D), k (B, Hkv, Tk, D)
    """
    chosen = plan(q, spec, bias, dropout_p, return_weights, backend, grad)
    fused = None
    if chosen.backend == "sdpa" and needs_no_mask(spec, bias):
        fused = (spec.causal, scale, q.shape[1] != k.shape[1])
    return Planned(chosen, fused)
