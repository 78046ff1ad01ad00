"""Attention inspection: capture maps from any model, head statistics, rollout and flow,
PNG heatmaps, and (``attnkit.inspect.html``) a self-contained HTML viewer.

    >>> from attnkit import inspect
    >>> with inspect.capture(model, layers=[0, 3]) as maps:
    ...     model(input_ids)
    >>> rows = inspect.stats.head_stats(maps, tokens)

``capture`` is imported here, so the name is the function (importing the submodule of the
same name later does not rebind it); the statistics and rendering are resolved lazily.
"""

from __future__ import annotations

import importlib
from typing import Any

from attnkit.inspect.capture import capture, capture_overhead, unavailable_layers
from attnkit.inspect.maps import AttentionMaps

_LAZY = {
    "rollout": ("attnkit.inspect.stats", "rollout"),
    "attention_flow": ("attnkit.inspect.stats", "attention_flow"),
    "head_stats": ("attnkit.inspect.stats", "head_stats"),
}

__all__ = ["AttentionMaps", "capture", "capture_overhead", "unavailable_layers", *sorted(_LAZY)]


def __getattr__(name: str) -> Any:
    if name in ("stats", "render", "html"):
        return importlib.import_module(f"attnkit.inspect.{name}")
    try:
        module_name, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'attnkit.inspect' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module_name), attr)
    globals()[name] = value
    return value
