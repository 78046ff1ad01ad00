"""Pickled PyTorch files (``pytorch_model.bin``, a training checkpoint's ``state.pt``), read
only with ``torch.load(weights_only=True)``.

That unpickler accepts tensors and plain values and nothing else, so a pickle whose
``__reduce__`` would run code is refused before anything in it runs; the refusal is a
:class:`~attnkit.checkpoints.errors.CheckpointError` naming the file, what the unpickler
refused (without torch's advice to load it with ``weights_only=False``) and what was expected.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from attnkit.checkpoints.errors import CheckpointError

__all__ = ["read_pickle", "read_state"]


def _pickle_reason(e: Exception) -> str:
    """The line of a ``torch.load(weights_only=True)`` error that says what it refused (its
    advice to load with ``weights_only=False`` is left out)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    for ln in lines:
        if "GLOBAL" in ln or "Unsupported" in ln:
            ln = ln.removeprefix("WeightsUnpickler error:").strip()
            return ln.split(" Please use ")[0].rstrip(".")  # not the advice to allow it
    first = lines[0] if lines else type(e).__name__
    return type(e).__name__ if first.startswith("Weights only load failed") else first


def read_pickle(path: str | Path, what: str) -> Any:
    """The object in the PyTorch file ``path`` (``what`` it should hold, for messages), read
    with ``torch.load(weights_only=True)``: tensors and plain values only, so a pickle that
    would run code (a ``__reduce__`` payload) is refused unrun, as a CheckpointError.

    Examples:
        >>> read_pickle("pytorch_model.bin", "a state dict")
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file; expected {what}")
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": the error says it
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(
            f"{path}: cannot be read as a PyTorch weights file: torch.load(weights_only=True), "
            f"which accepts only tensors and plain values, refused it ({_pickle_reason(e)}); "
            f"nothing in it was run. Expected {what}"
        ) from None


def read_state(path: str | Path, required: Mapping[str, type]) -> dict[str, Any]:
    """A training state dict (``state.pt``: optimizer, RNG states, step...) read as
    :func:`read_pickle` does, with each key of ``required`` present and of its type.

    Examples:
        >>> read_state("runs/char/state.pt", {"step": int})
    """
    path = Path(path)
    what = "a dict with " + ", ".join(f"{k!r} ({t.__name__})" for k, t in required.items())
    obj = read_pickle(path, what)
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}; expected {what}")
    missing = sorted(set(required) - set(obj))
    if missing:
        raise CheckpointError(f"{path}: missing key(s) {missing}; expected {what}")
    for key, kind in required.items():
        value = obj[key]
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            raise CheckpointError(
                f"{path}: key {key!r} is a {type(value).__name__}; expected {kind.__name__}"
            )
    return obj
