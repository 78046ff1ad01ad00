"""Attention surgery: put an attention variant into a trained model and measure what it changes.

    >>> model = attnkit.load("minilm")
    >>> lsh = swap_attention(model, "lsh", n_hashes=4)      # a copy; ``model`` is untouched
    >>> report = compare(model, lsh, texts)                  # speed and output drift
    >>> print(report.format())

:mod:`attnkit.surgery.swap` parses variant parameters and swaps kernels (recording each swap in
``model.meta.swaps``); :mod:`attnkit.surgery.compare` measures a swap (:func:`compare`) and
records what attention sees (:func:`capture_qkv`).
"""

from attnkit.attention.recording import attention_layers
from attnkit.models.meta import SwapRecord
from attnkit.surgery.compare import (
    LayerDrift,
    LayerQKV,
    SwapReport,
    capture_qkv,
    compare,
    default_max_length,
    sentence_pooling,
)
from attnkit.surgery.swap import (
    EXACT,
    check_layers,
    parse_layers,
    parse_params,
    parse_value,
    resolve_params,
    swap_attention,
    swapped,
    variant_names,
)

__all__ = [
    "EXACT",
    "LayerDrift",
    "LayerQKV",
    "SwapRecord",
    "SwapReport",
    "attention_layers",
    "capture_qkv",
    "check_layers",
    "compare",
    "default_max_length",
    "parse_layers",
    "parse_params",
    "parse_value",
    "resolve_params",
    "sentence_pooling",
    "swap_attention",
    "swapped",
    "variant_names",
]
