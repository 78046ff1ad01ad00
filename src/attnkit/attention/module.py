"""MultiHeadAttention: the layer around the attention kernel.

The layer owns the projections (one fused QKV linear and an output linear), grouped-query
heads, positions (RoPE rotation of q/k, or ALiBi, which the kernel adds as a score bias),
dropout and the KV cache. The score -> softmax -> values step is one kernel object,
``layer.kernel`` (see :mod:`attnkit.attention.kernel`): exact attention through
``attnkit.attention.functional.attention`` by default, or an approximate variant from
``attnkit.attention.variants``; so masks, backends and weight capture behave the same in every
model. ``set_kernel`` is the only way to replace it (attention surgery swaps it, capture wraps it).

Fused QKV weight layout (rows of ``qkv_proj.weight``, shape ((Hq + 2 Hkv) * D, C)):
``[q heads 0..Hq-1 | k heads 0..Hkv-1 | v heads 0..Hkv-1]``, each head D consecutive rows.
Query head h reads key/value head ``h // (Hq // Hkv)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from attnkit._util.checks import choice, fail, flag, positive_int, probability
from attnkit.attention.kernel import AttentionKernel, ExactKernel
from attnkit.attention.kv_cache import KVCache
from attnkit.attention.unpad import TokenIndex
from attnkit.positional import ROPE_LAYOUTS, RotaryEmbedding

POSITIONAL_KINDS = (None, "rope", "alibi")


def _variant_kernel(variant: str, params: Mapping[str, Any] | None) -> AttentionKernel:
    """The registered variant ``variant`` built with ``params``."""
    from attnkit.attention import variants  # imported here: building one needs the registry

    return variants.get(variant, **dict(params or {}))


class MultiHeadAttention(nn.Module):
    """Multi-head self-attention with GQA/MQA, RoPE/ALiBi, dropout and a KV cache.

    Args:
        d_model: model width C.
        n_heads: query heads Hq.
        n_kv_heads: key/value heads Hkv (default Hq); Hq must be a multiple of Hkv.
            Hkv == 1 is multi-query attention.
        causal: each query sees only keys at its position or earlier.
        window: sliding window (see ``attnkit.attention.masks``), None for full attention.
        positional: None, ``"rope"`` (rotate q and k) or ``"alibi"`` (distance bias).
        dropout: probability for dropout on the attention weights and on the output.
        bias: bias terms in the projections.
        backend: passed to ``attention`` (``"auto"``, ``"math"``, ``"sdpa"``, ...).
        rope_base: RoPE base.
        rope_layout: RoPE channel layout (``"half"`` or ``"interleaved"``).
        head_dim: per-head width D (default d_model // n_heads).
        variant: name of an approximate attention from ``attnkit.attention.variants``
            (resolved through its registry): the kernel.
        variant_params: keyword arguments of that variant.
        kernel: the kernel object itself (an ``AttentionKernel``); default
            ``ExactKernel(backend)``. Give ``kernel`` or ``variant``, not both.

    ``forward(x)`` maps (B, T, C) -> (B, T, C).

    Examples:
        >>> MultiHeadAttention(64, 4, causal=True)(torch.randn(2, 10, 64)).shape  # (B, T, C)
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        n_kv_heads: int | None = None,
        causal: bool = False,
        window: int | None = None,
        positional: str | None = None,
        dropout: float = 0.0,
        bias: bool = True,
        backend: str = "auto",
        rope_base: float = 10000.0,
        rope_layout: str = "half",
        head_dim: int | None = None,
        variant: str | None = None,
        variant_params: Mapping[str, Any] | None = None,
        kernel: AttentionKernel | None = None,
    ):
        super().__init__()
        positive_int("d_model", d_model)
        positive_int("n_heads", n_heads)
        if n_kv_heads is None:
            n_kv_heads = n_heads
        positive_int("n_kv_heads", n_kv_heads)
        if n_heads % n_kv_heads:
            raise ValueError(
                f"n_heads must be a multiple of n_kv_heads, got n_heads={n_heads}"
                f", n_kv_heads={n_kv_heads}"
            )
        if head_dim is None:
            if d_model % n_heads:
                raise ValueError(
                    f"d_model must be divisible by n_heads when head_dim is not "
                    f"given, got d_model={d_model}, n_heads={n_heads}"
                )
            head_dim = d_model // n_heads
        positive_int("head_dim", head_dim)
        if window is not None:
            positive_int("window", window)
        choice("positional", positional, POSITIONAL_KINDS)
        probability("dropout", dropout)
        flag("causal", causal)
        if not isinstance(backend, str):
            fail("backend", backend, "a str", wrong_type=True)
        if positional == "rope":
            choice("rope_layout", rope_layout, ROPE_LAYOUTS)

        self.d_model = d_model
        self.n_heads = n_heads
        self.n_kv_heads = n_kv_heads
        self.head_dim = head_dim
        self.causal = causal
        self.window = window
        self.positional = positional
        self.dropout = float(dropout)
        self.backend = backend

        q_dim, kv_dim = n_heads * head_dim, n_kv_heads * head_dim
        self.qkv_proj = nn.Linear(d_model, q_dim + 2 * kv_dim, bias=bias)
        self.out_proj = nn.Linear(q_dim, d_model, bias=bias)
        self.out_dropout = nn.Dropout(self.dropout)
        self.rotary = (
            RotaryEmbedding(head_dim, base=rope_base, layout=rope_layout)
            if positional == "rope"
            else None
        )

        if variant is not None:
            if kernel is not None:
                raise ValueError(
                    f"give kernel= or variant=, not both; got kernel={type(kernel).__name__} "
                    f"and variant={variant!r}"
                )
            kernel = _variant_kernel(variant, variant_params)
        elif variant_params:
            raise ValueError(f"variant_params given without a variant: {variant_params!r}")
        chosen = ExactKernel(backend) if kernel is None else kernel
        self._check_kernel(chosen)
        self.kernel: AttentionKernel = chosen
        self.register_load_state_dict_pre_hook(_rename_variant_keys)

    def set_kernel(self, kernel: AttentionKernel) -> AttentionKernel:
        """Make ``kernel`` this layer's attention kernel; returns the one it replaces.

        ValueError if the kernel cannot serve this layer (a variant with a sliding window or
        ALiBi), TypeError if it is not an ``AttentionKernel``.

        Examples:
            >>> old = layer.set_kernel(ExactKernel("math"))
        """
        self._check_kernel(kernel)
        previous = self.kernel
        self.kernel = kernel
        return previous

    def _check_kernel(self, kernel: AttentionKernel) -> None:
        if not isinstance(kernel, AttentionKernel):
            raise TypeError(
                f"kernel must be an attnkit.attention.kernel.AttentionKernel, "
                f"got {type(kernel).__name__}"
            )
        kernel.check_layer(window=self.window, alibi=self.positional == "alibi")

    # ----------------------------------------------------------------------------------------
    def forward(
        self,
        x: torch.Tensor,
        *,
        valid_key_mask: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        document_ids: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
        cache: KVCache | None = None,
        return_weights: bool = False,
        tokens: TokenIndex | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """x (B, T, C) -> (B, T, C), or (out, weights (B, Hq, T, Tk)) with return_weights.

        valid_key_mask (B, Tk) bool, True = real token (attend to it; the opposite polarity of
        torch.nn.MultiheadAttention's key_padding_mask); mask bool broadcastable to
        (B, Hq, T, Tk), True = may attend; document_ids (B, Tk) int for packed sequences;
        positions (T,) or (B, T) int positions for RoPE (default: cache.length + 0..T-1).
        With a cache, Tk = cache.length + T and the masks must cover all Tk keys.

        tokens: x holds only the real tokens of a padded batch, packed as (N, C) (see
        :class:`~attnkit.attention.unpad.TokenIndex`); the projections run on those N rows,
        attention on them padded back to (B, T) with ``tokens.valid_key_mask``, and the
        result is (N, C) (and weights (B, Hq, T, T)). Not with a cache.

        Examples:
            >>> out, weights = layer(torch.randn(2, 10, 64), return_weights=True)
        """
        if not isinstance(x, torch.Tensor) or not x.dtype.is_floating_point:
            what = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
            raise TypeError(
                f"x must be a floating tensor (B, T, d_model={self.d_model}), got {what}"
            )
        if tokens is not None:
            if x.dim() != 2 or x.shape != (tokens.count, self.d_model):
                raise ValueError(
                    f"with tokens, x must be the packed real tokens (N={tokens.count}, "
                    f"d_model={self.d_model}), got shape {tuple(x.shape)}"
                )
            if cache is not None:
                raise ValueError("tokens (a packed batch) cannot be used with a KV cache")
            if valid_key_mask is None:
                valid_key_mask = tokens.valid_key_mask
        elif x.dim() != 3 or x.shape[-1] != self.d_model:
            raise ValueError(
                f"x must be (B, T, d_model={self.d_model}), got shape {tuple(x.shape)}"
            )
        if positions is not None and self.rotary is None:
            raise ValueError(
                f"positions are only used with positional='rope', this layer has "
                f"positional={self.positional!r}"
            )
        if cache is not None and not isinstance(cache, KVCache):
            raise TypeError(f"cache must be a KVCache, got {type(cache).__name__}")
        kernel = self.kernel
        kernel.check_call(
            cache=cache is not None,
            mask=mask is not None,
            document_ids=document_ids is not None,
            return_weights=return_weights,
        )

        H, Hkv, D = self.n_heads, self.n_kv_heads, self.head_dim
        qkv = self.qkv_proj(x)  # (B, T, (H + 2 Hkv) * D), or (N, ...) with tokens
        if tokens is not None:
            qkv = tokens.unpack(qkv, reuse=True)  # (B, T, (H + 2 Hkv) * D), zeros at padding
        B, T, _ = qkv.shape
        q, k, v = qkv.split([H * D, Hkv * D, Hkv * D], dim=-1)
        q = q.view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)
        k = k.view(B, T, Hkv, D).transpose(1, 2)  # (B, Hkv, T, D)
        v = v.view(B, T, Hkv, D).transpose(1, 2)  # (B, Hkv, T, D)

        if self.rotary is not None:
            offset = cache.length if (cache is not None and positions is None) else 0
            q, k = self.rotary(q, k, offset=offset, positions=positions)
        if cache is not None:
            tk = cache.length + T
            for name, t in (("valid_key_mask", valid_key_mask), ("document_ids", document_ids)):
                if t is not None and (t.dim() != 2 or t.shape[-1] != tk):
                    raise ValueError(
                        f"with a KV cache, {name} must cover all keys: shape (B, {tk}) = "
                        f"(B, cache.length={cache.length} + T={T}), got {tuple(t.shape)}"
                    )
            k, v = cache.update(k, v)  # (B, Hkv, Tk, D) each, Tk = old length + T

        if k.dtype != q.dtype:  # a cache stored in another dtype: attention runs in that one
            q = q.to(k.dtype)
        res = kernel(
            q,
            k,
            v,
            causal=self.causal,
            window=self.window,
            alibi=self.positional == "alibi",
            valid_key_mask=valid_key_mask,
            mask=mask,
            document_ids=document_ids,
            dropout_p=self.dropout if self.training else 0.0,
            return_weights=return_weights,
        )
        if isinstance(res, tuple):
            y, weights = res  # (B, H, T, D), (B, H, T, Tk)
        else:
            y, weights = res, None  # (B, H, T, D)

        y = y.transpose(1, 2).reshape(B, T, H * D).to(x.dtype)  # (B, T, H * D)
        if tokens is not None:
            y = tokens.pack(y)  # (N, H * D)
        out = self.out_dropout(self.out_proj(y))  # (B, T, C)
        if not return_weights:
            return out
        if weights is None:
            raise ValueError(
                f"kernel {kernel.name!r} returned no attention weights for return_weights=True; "
                f"expected (out, weights)"
            )
        return out, weights

    def extra_repr(self) -> str:
        """The layer's sizes and options, shown inside ``repr(layer)``.

        Examples:
            >>> print(MultiHeadAttention(64, 4))
        """
        parts = [f"d_model={self.d_model}", f"n_heads={self.n_heads}"]
        if self.n_kv_heads != self.n_heads:
            parts.append(f"n_kv_heads={self.n_kv_heads}")
        parts += [f"head_dim={self.head_dim}", f"causal={self.causal}"]
        if self.window is not None:
            parts.append(f"window={self.window}")
        if self.positional is not None:
            parts.append(f"positional={self.positional!r}")
        if self.dropout:
            parts.append(f"dropout={self.dropout:g}")
        parts.append(f"bias={self.qkv_proj.bias is not None}")
        parts.append(f"backend={self.backend!r}")
        return ", ".join(parts)


def _rename_variant_keys(
    module: nn.Module, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any
) -> None:
    """Checkpoints written before the kernel seam keep a variant's buffers under
    ``<layer>.variant_attn.``; they live under ``<layer>.kernel.`` now."""
    old = prefix + "variant_attn."
    for key in [k for k in state_dict if k.startswith(old)]:
        state_dict[prefix + "kernel." + key[len(old) :]] = state_dict.pop(key)
