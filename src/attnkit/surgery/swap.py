"""Attention surgery, the swap: put an attention variant into a trained model.

    >>> model = attnkit.load("minilm")
    >>> lsh = swap_attention(model, "lsh", n_hashes=4)      # a copy; ``model`` is untouched

Every attention layer of a model is a :class:`~attnkit.attention.module.MultiHeadAttention`
holding one kernel (:mod:`attnkit.attention.kernel`). Swapping replaces the kernel of each
chosen layer through ``MultiHeadAttention.set_kernel`` (a fresh variant kernel per layer, from
the registry of :mod:`attnkit.attention.variants`), keeping the projections, positions and
weights as they are; ``"exact"`` puts exact attention back. What was swapped is recorded in
the swapped model's ``model.meta.swaps`` (a :class:`~attnkit.models.meta.SwapRecord` each).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from attnkit.attention import variants
from attnkit.attention.kernel import AttentionKernel, ExactKernel
from attnkit.attention.module import MultiHeadAttention
from attnkit.attention.recording import attention_layers
from attnkit.models.common import ModelBase
from attnkit.models.encdec_config import EncDecConfig
from attnkit.models.meta import SwapRecord

__all__ = [
    "EXACT",
    "attention_layers",
    "check_layers",
    "check_swappable",
    "parse_layers",
    "parse_params",
    "parse_value",
    "resolve_params",
    "swap_attention",
    "swapped",
    "variant_names",
]

EXACT = "exact"


# --------------------------------------------------------------------------------------------
# variant names, parameters and layers
# --------------------------------------------------------------------------------------------
def variant_names() -> list[str]:
    """Everything :func:`swap_attention` accepts: ``"exact"`` and the registered variants.

    Examples:
        >>> variant_names()  # ['exact', 'bigbird', ...]
    """
    return [EXACT, *variants.names()]


def parse_value(text: str) -> Any:
    """A parameter value from text: ``none`` -> None, ``true``/``false`` -> bool, then int,
    then float; anything else stays a string.

    Examples:
        >>> parse_value("true")  # True
    """
    low = text.strip().lower()
    if low in ("none", "null"):
        return None
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(text.strip())
        except ValueError:
            pass
    return text


def parse_params(items: Sequence[str]) -> dict[str, Any]:
    """``["n_hashes=4", "seed=1"]`` -> ``{"n_hashes": 4, "seed": 1}`` (values typed by
    :func:`parse_value`); a malformed or repeated item is a ValueError naming it.

    Examples:
        >>> parse_params(["n_hashes=4", "seed=1"])
    """
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = str(item).partition("=")
        key = key.strip()
        if not sep or not key.isidentifier() or not value.strip():
            raise ValueError(
                f"a variant parameter must look like NAME=VALUE (e.g. n_hashes=4), got {item!r}"
            )
        if key in out:
            raise ValueError(
                f"variant parameter {key!r} given twice ({key}={out[key]!r} and {item!r}); "
                f"expected each parameter once"
            )
        out[key] = parse_value(value)
    return out


def resolve_params(variant: str, params: dict[str, Any]) -> dict[str, Any]:
    """Check ``variant`` and ``params`` and return every parameter with its value (the defaults
    filled in). Errors are ValueErrors naming the bad name or value and the valid ones.

    Examples:
        >>> resolve_params("lsh", {"n_hashes": 4})
    """
    if variant not in variant_names():
        raise ValueError(
            f"unknown attention variant {variant!r}; expected one of {variant_names()}"
        )
    if variant == EXACT:
        if params:
            raise ValueError(f"exact attention takes no parameters, got {sorted(params)}")
        return {}
    valid = variants.params(variant)
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise ValueError(
            f"unknown parameter(s) {unknown} for attention variant {variant!r}; "
            f"valid parameters: {sorted(valid)}"
        )
    _build(variant, params)  # a bad value fails here, before any model is touched
    return {**valid, **params}


def _build(variant: str, params: dict[str, Any]) -> AttentionKernel:
    try:
        return variants.get(variant, **params)
    except TypeError as e:  # a value of the wrong type: report it like any bad value
        raise ValueError(f"attention variant {variant!r}: {e}") from None


def check_layers(layers: Sequence[int] | None, n_layer: int) -> list[int]:
    """Sorted distinct layer indices, each in [0, n_layer) (negative ones count from the end);
    None means every layer.

    Examples:
        >>> check_layers([2, 0, -1], n_layer=6)  # [0, 2, 5]
    """
    if layers is None:
        return list(range(n_layer))
    out = set()
    for i in layers:
        if isinstance(i, bool) or not isinstance(i, int) or not -n_layer <= i < n_layer:
            raise ValueError(
                f"layer {i!r} does not exist; expected indices in 0..{n_layer - 1} "
                f"(this model has {n_layer} layers)"
            )
        out.add(i % n_layer)
    if not out:
        raise ValueError(f"layers is empty; expected indices in 0..{n_layer - 1}, or None for all")
    return sorted(out)


def parse_layers(text: str, n_layer: int) -> list[int]:
    """``"0,2,4-5"`` -> ``[0, 2, 4, 5]``, checked against ``n_layer``.

    Examples:
        >>> parse_layers("0,2,4-5", n_layer=6)
    """
    picked: list[int] = []
    for part in str(text).split(","):
        part = part.strip()
        lo, dash, hi = part.partition("-")
        try:
            picked += list(range(int(lo), int(hi) + 1)) if dash and lo else [int(part)]
        except ValueError:
            raise ValueError(
                f"bad layer {part!r} in {text!r}; expected indices or ranges such as "
                f"0,2,4-5 within 0..{n_layer - 1}"
            ) from None
    return check_layers(picked, n_layer)


def check_swappable(layers: Sequence[MultiHeadAttention], chosen: Sequence[int]) -> None:
    """ValueError if a chosen layer uses ALiBi or a sliding window (variants take neither), or
    if its kernel carries a score bias or scale of its own (T5's relative position bias and
    unscaled scores), which neither a variant nor plain exact attention would keep.

    Examples:
        >>> check_swappable(attention_layers(model), [0, 1])
    """
    for i in chosen:
        a = layers[i]
        kernel = a.kernel
        if not isinstance(kernel, ExactKernel) and kernel.name not in variants.names():
            raise ValueError(
                f"layer {i} has kernel {kernel.name!r} ({type(kernel).__name__}), which adds "
                f"its own score bias or scale (T5's relative positions); swapping it would drop "
                f"them; expected a layer with exact attention or a variant kernel"
            )
        if a.positional == "alibi" or a.window is not None:
            what = "positional='alibi'" if a.positional == "alibi" else f"window={a.window}"
            raise ValueError(
                f"layer {i} uses {what}, which attention variants cannot take; "
                f"expected a layer without a score bias or sliding window"
            )


# --------------------------------------------------------------------------------------------
# swapping
# --------------------------------------------------------------------------------------------
def _install(
    model: ModelBase, layers: list[int], make: Callable[[MultiHeadAttention], AttentionKernel]
) -> list[AttentionKernel]:
    """Give each chosen layer the kernel ``make(layer)``; returns the kernels it replaced."""
    attns = attention_layers(model)
    device = next(model.parameters()).device
    return [attns[i].set_kernel(make(attns[i]).to(device)) for i in layers]


def _undo(model: ModelBase, layers: list[int], before: list[AttentionKernel]) -> None:
    attns = attention_layers(model)
    for i, kernel in zip(layers, before):
        attns[i].set_kernel(kernel)


def _maker(variant: str, params: dict[str, Any]) -> Callable[[MultiHeadAttention], AttentionKernel]:
    if variant == EXACT:
        return lambda layer: ExactKernel(layer.backend)
    return lambda layer: _build(variant, params)


def _record(model: ModelBase, record: SwapRecord) -> None:
    """Keep the model truthful: ``model.meta.swaps`` gains the record, and with every layer
    swapped, ``config.attention`` names the variant (a saved model then reloads with it);
    otherwise the config is left alone and the per-layer choice lives only in the record."""
    cfg = model.config
    if isinstance(cfg, EncDecConfig):
        # The config can only say "the encoder uses variant X"; any other choice of layers
        # (decoder layers among them) lives in the record alone.
        if record.layers == tuple(range(cfg.n_encoder_layers)):
            model.config = cfg.replace(
                encoder_attention=record.variant,
                encoder_attention_params={} if record.variant == EXACT else dict(record.params),
            )
    elif len(record.layers) == cfg.n_layer:
        model.config = cfg.replace(attention=record.variant, attention_params=dict(record.params))
    model.meta = model.meta.replace(swaps=(*model.meta.swaps, record))


def _checked(
    model: ModelBase, variant: str, layers: Sequence[int] | None, params: dict[str, Any]
) -> tuple[dict[str, Any], list[int]]:
    """Every parameter of the swap (defaults filled in) and the chosen layers, all checked
    before the model is touched."""
    full = resolve_params(variant, params)
    attns = attention_layers(model)
    chosen = check_layers(layers, len(attns))
    if variant != EXACT:
        check_swappable(attns, chosen)
    return full, chosen


def swap_attention(
    model: ModelBase,
    variant: str,
    *,
    layers: Sequence[int] | None = None,
    in_place: bool = False,
    **params: Any,
) -> ModelBase:
    """A model whose attention in ``layers`` (default all) is ``variant`` with ``params``.

    ``variant`` is a name from :func:`variant_names` (``"exact"`` restores exact attention).
    By default the model is copied (weights included) and the original is not modified; with
    ``in_place=True`` the given model is changed and returned. Each swapped layer gets its own
    variant kernel. Unknown names, unknown parameters and bad values raise ValueError naming
    them and the valid ones.

    Examples:
        >>> fast = swap_attention(attnkit.load("minilm"), "lsh", layers=[0, 1], n_hashes=4)
    """
    full, chosen = _checked(model, variant, layers, params)
    target = model if in_place else _copy(model)
    _install(target, chosen, _maker(variant, params))
    _record(target, SwapRecord(variant, full, tuple(chosen)))
    return target


def _copy(model: ModelBase) -> ModelBase:
    """A deep copy sharing only the metadata (the tokenizer holds no weights and is never
    modified; the metadata is frozen)."""
    memo: dict[int, Any] = {id(model.meta): model.meta}
    tok = model.meta.tokenizer
    if tok is not None:
        memo[id(tok)] = tok
    return copy.deepcopy(model, memo)


@contextlib.contextmanager
def swapped(
    model: ModelBase, variant: str, *, layers: Sequence[int] | None = None, **params: Any
) -> Iterator[ModelBase]:
    """Swap ``model``'s attention in place for the ``with`` block, then put it back (the
    config and the metadata too); no copy is made.

        >>> with swapped(model, "performer", nb_features=128) as m:
        ...     h = m.hidden_states(ids)
    """
    full, chosen = _checked(model, variant, layers, params)
    config, meta = model.config, model.meta
    before = _install(model, chosen, _maker(variant, params))
    try:
        _record(model, SwapRecord(variant, full, tuple(chosen)))
        yield model
    finally:
        _undo(model, chosen, before)
        model.config = config
        model.meta = meta
