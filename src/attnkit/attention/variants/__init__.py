"""Approximate and efficient attention variants, by name.

    >>> from attnkit.attention import variants
    >>> attn = variants.get("lsh", n_hashes=4)
    >>> out = attn(q, k, v, causal=True)  # q, k, v: (B, H, T, D) -> (B, H, T, D)

Every variant is an attention kernel (``attnkit.attention.kernel.AttentionKernel``, so a
``MultiHeadAttention`` layer can hold it) with ``forward(q, k, v, *, causal=False,
valid_key_mask=None)``, a class attribute ``name`` (its registry name), a class attribute
``description`` and a class attribute ``exact``:
True when the output is exact softmax attention under a fixed, input-independent mask that the
module exposes as ``dense_mask(T, causal)`` (bigbird, local), False when it approximates the
softmax (lsh, performer, linear). A new variant is a new class plus an entry in ``_REGISTRY``.
"""

from __future__ import annotations

import inspect
from typing import Any

from attnkit.attention.variants._common import VariantAttention
from attnkit.attention.variants.bigbird import BigBirdAttention
from attnkit.attention.variants.linear import FeatureMapAttention, LinearAttention
from attnkit.attention.variants.local import LocalAttention
from attnkit.attention.variants.lsh import LSHAttention
from attnkit.attention.variants.performer import PerformerAttention

_REGISTRY: dict[str, type[VariantAttention]] = {
    "bigbird": BigBirdAttention,
    "linear": LinearAttention,
    "local": LocalAttention,
    "lsh": LSHAttention,
    "performer": PerformerAttention,
}


def names() -> list[str]:
    """Names of the registered variants, sorted.

    Examples:
        >>> names()  # ['bigbird', 'linear', 'local', 'lsh', 'performer']
    """
    return sorted(_REGISTRY)


def variant_class(name: str) -> type[VariantAttention]:
    """The class registered under ``name``; ValueError naming the known ones otherwise.

    Examples:
        >>> variant_class("lsh")
    """
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ValueError(f"unknown attention variant {name!r}; expected one of {names()}")
    return _REGISTRY[name]


def params(name: str) -> dict[str, Any]:
    """The constructor parameters of variant ``name`` with their defaults.

    Examples:
        >>> params("lsh")  # {'n_buckets': None, 'n_hashes': 2, 'chunk_size': 64, 'seed': 0}
    """
    sig = inspect.signature(variant_class(name).__init__)
    return {p.name: p.default for p in sig.parameters.values() if p.name != "self"}


def get(name: str, **kwargs: Any) -> VariantAttention:
    """Build variant ``name`` with the given parameters.

    Raises ValueError for an unknown name (listing the valid names), TypeError for an unknown
    parameter (listing the valid ones), and the variant's own ValueError/TypeError for a bad
    value.

    Examples:
        >>> get("performer", nb_features=128)
    """
    cls = variant_class(name)
    valid = params(name)
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        raise TypeError(
            f"unknown parameter(s) {unknown} for attention variant {name!r}; "
            f"valid parameters: {sorted(valid)}"
        )
    return cls(**kwargs)


def register(name: str, cls: type[VariantAttention]) -> None:
    """Add a variant class under ``name`` (a new name only).

    Examples:
        >>> register("mine", MyVariant)  # then MultiHeadAttention(..., variant="mine")
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"variant name must be a non-empty str, got {name!r}")
    if name in _REGISTRY:
        raise ValueError(
            f"attention variant {name!r} is already registered (as {_REGISTRY[name].__name__})"
        )
    if not (isinstance(cls, type) and issubclass(cls, VariantAttention)):
        raise TypeError(f"cls must be a VariantAttention subclass, got {cls!r}")
    _REGISTRY[name] = cls


__all__ = [
    "get",
    "names",
    "params",
    "register",
    "variant_class",
    "VariantAttention",
    "FeatureMapAttention",
    "BigBirdAttention",
    "LinearAttention",
    "LocalAttention",
    "LSHAttention",
    "PerformerAttention",
]
