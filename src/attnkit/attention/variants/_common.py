"""Pieces shared by the attention variants: the base class (a kernel) and input checks."""

from __future__ import annotations

import math
from typing import ClassVar

from torch import Tensor

from attnkit._util.checks import flag
from attnkit.attention.functional import check_bool_mask, check_qkv
from attnkit.attention.kernel import AttentionKernel


def check_inputs(q: Tensor, k: Tensor, v: Tensor, valid_key_mask: Tensor | None) -> Tensor | None:
    """Validate (B, H, T, D) inputs; return the key mask as a (B, T) bool tensor on q's device.

    q and k must have the same shape, v the same (B, H, T) with its own last dim. The mask is
    True for real tokens and False for padding.
    """
    check_qkv(q, k, v)
    if k.shape != q.shape:
        raise ValueError(f"k must have the shape of q {tuple(q.shape)}, got {tuple(k.shape)}")
    if v.shape[:3] != q.shape[:3]:
        raise ValueError(
            f"v must have shape (B, H, T, Dv) = {tuple(q.shape[:3])} + (Dv,), got {tuple(v.shape)}"
        )
    if q.shape[-1] == 0 or v.shape[-1] == 0:
        raise ValueError(f"head dims must be >= 1, got D={q.shape[-1]}, Dv={v.shape[-1]}")
    if valid_key_mask is None:
        return None
    check_bool_mask("valid_key_mask", valid_key_mask, "True = real token")
    B, _, T, _ = q.shape
    if tuple(valid_key_mask.shape) != (B, T):
        raise ValueError(
            f"valid_key_mask must have shape (B, T) = {(B, T)}, got {tuple(valid_key_mask.shape)}"
        )
    return valid_key_mask.to(q.device)


class VariantAttention(AttentionKernel):
    """Base class of the attention variants: each is an attention kernel (see
    :mod:`attnkit.attention.kernel`) under its registry ``name``.

    ``forward(q, k, v, *, causal=False, valid_key_mask=None)`` takes (B, H, T, D) tensors and
    returns (B, H, T, Dv); k and v may have fewer heads than q (grouped-query: query head h reads
    key/value head h // (H // Hkv)). ``valid_key_mask`` is (B, T) bool with True for real
    tokens. A query that has no key to attend to gets a zero output (never NaN), and no
    gradient; an empty batch or sequence (B or T = 0) gives an empty output. Variants take no
    sliding window, ALiBi, KV cache, user mask, packed documents or weight request (ValueError
    naming it), and apply no dropout to their attention.

    A subclass sets ``name``, ``description`` and ``exact`` and implements
    ``_attend(q, k, v, causal, key_valid)`` on checked inputs with as many key/value heads as
    query heads.

    Examples:
        >>> attn = LocalAttention(block_size=64)  # a VariantAttention
        >>> attn(q, k, v, causal=True).shape  # q, k, v (B, H, T, D) -> (B, H, T, D)
    """

    exact: ClassVar[bool] = False
    description: ClassVar[str] = ""

    def check_layer(self, *, window: int | None, alibi: bool) -> None:
        """Raise ValueError for a layer with a sliding window or ALiBi (variants take neither).

        Args:
            window: the layer's sliding window, or None.
            alibi: whether the layer uses ALiBi.

        Raises:
            ValueError: if ``alibi`` is True or ``window`` is not None.

        Examples:
            >>> LocalAttention().check_layer(window=None, alibi=False)  # None: it can
        """
        if alibi:
            raise ValueError(
                f"variant={self.name!r} cannot be combined with positional='alibi' "
                f"(variants take no score bias)"
            )
        if window is not None:
            raise ValueError(f"variant={self.name!r} cannot be combined with window={window}")

    def check_call(
        self,
        *,
        cache: bool = False,
        mask: bool = False,
        document_ids: bool = False,
        return_weights: bool = False,
    ) -> None:
        """Raise ValueError naming every option used that variants do not support (all four).

        Args:
            cache: the call uses a KV cache.
            mask: the call passes a user mask.
            document_ids: the call passes packed-document ids.
            return_weights: the call asks for the attention weights.

        Raises:
            ValueError: if any of them is True.

        Examples:
            >>> LocalAttention().check_call()  # None; check_call(cache=True) raises
        """
        bad = [
            name
            for name, used in (
                ("cache", cache),
                ("mask", mask),
                ("document_ids", document_ids),
                ("return_weights", return_weights),
            )
            if used
        ]
        if bad:
            raise ValueError(
                f"variant={self.name!r} does not support {', '.join(bad)}; "
                f"use the exact attention for those"
            )

    def forward(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        *,
        causal: bool = False,
        window: int | None = None,
        alibi: bool = False,
        valid_key_mask: Tensor | None = None,
        mask: Tensor | None = None,
        document_ids: Tensor | None = None,
        dropout_p: float = 0.0,
        return_weights: bool = False,
    ) -> Tensor:
        """Attention of q over k, v under this variant's pattern or approximation.

        k and v with fewer heads than q are repeated to q's heads (grouped-query).

        Args:
            q: queries, (B, H, T, D).
            k: keys, (B, Hkv, T, D), H a multiple of Hkv (with Hkv = H: q's shape).
            v: values, (B, Hkv, T, Dv).
            causal: query at position p sees no key after p.
            window: must be None (refused with ValueError otherwise).
            alibi: must be False.
            valid_key_mask: bool (B, T), True = real token; or None.
            mask: must be None.
            document_ids: must be None.
            dropout_p: ignored: variants apply no dropout.
            return_weights: must be False.

        Returns:
            (B, H, T, Dv); zeros for a query with no key to attend to.

        Raises:
            TypeError: for inputs that are not floating tensors of one dtype, or a non-bool mask.
            ValueError: for mismatched shapes or an unsupported option.

        Examples:
            >>> LocalAttention(block_size=4)(q, k, v, causal=True)  # q, k, v (B, H, T, D)
        """
        flag("causal", causal)
        if window is not None or alibi:
            self.check_layer(window=window, alibi=alibi)
        if mask is not None or document_ids is not None or return_weights:
            self.check_call(
                mask=mask is not None,
                document_ids=document_ids is not None,
                return_weights=return_weights,
            )
        if isinstance(k, Tensor) and isinstance(q, Tensor) and k.dim() == q.dim() == 4:
            hq, hkv = q.shape[1], k.shape[1]
            if hkv != hq and hkv > 0 and hq % hkv == 0:  # query head h reads kv head h // rep
                k = k.repeat_interleave(hq // hkv, dim=1)  # (B, H, T, D)
                v = v.repeat_interleave(hq // hkv, dim=1)  # (B, H, T, Dv)
        key_valid = check_inputs(q, k, v, valid_key_mask)
        if q.shape[0] == 0 or q.shape[2] == 0:  # no batch or no tokens: nothing to attend
            return q.new_zeros(*q.shape[:3], v.shape[-1])  # (B, H, T, Dv)
        return self._attend(q, k, v, causal, key_valid)

    def _attend(
        self, q: Tensor, k: Tensor, v: Tensor, causal: bool, key_valid: Tensor | None
    ) -> Tensor:
        raise NotImplementedError

    def extra_repr(self) -> str:
        """The constructor parameters and their values, shown inside ``repr(variant)``.

        Examples:
            >>> print(LocalAttention(block_size=64))  # LocalAttention(block_size=64)
        """
        names = [p for p in self._config_names() if hasattr(self, p)]
        return ", ".join(f"{p}={getattr(self, p)!r}" for p in names)

    def _config_names(self) -> list[str]:
        import inspect

        return [p for p in inspect.signature(type(self).__init__).parameters if p != "self"]


def default_scale(d: int) -> float:
    return 1.0 / math.sqrt(d)
