"""Where mixed precision is decided: one autocast context for CPU and CUDA."""

from __future__ import annotations

import contextlib

import torch

from attnkit._util.devices import DTYPES, resolve_dtype

__all__ = ["DTYPES", "autocast", "check_dtype", "grad_scaler"]


def check_dtype(name: str, device: torch.device, field: str = "train.dtype") -> torch.dtype:
    """The torch dtype called ``name``, if ``device`` runs it (``field``: the setting's name
    in messages).

    Args:
        name: "float32", "bfloat16" or "float16".
        device: the device that will run it (float16 needs CUDA or MPS).
        field: the setting's name in error messages.

    Returns:
        The ``torch.dtype``.

    Raises:
        ValueError: an unknown name, or float16 on a device without it.

    Examples:
        >>> check_dtype("bfloat16", torch.device("cpu"))
        torch.bfloat16
    """
    return resolve_dtype(name, device, field)


def autocast(device: torch.device, dtype_name: str) -> contextlib.AbstractContextManager[None]:
    """``torch.autocast`` in ``dtype_name`` (bf16/fp16), or nothing for float32. Weights and
    optimizer state stay float32 either way.

    Args:
        device: the device the forward pass runs on.
        dtype_name: "float32", "bfloat16" or "float16" (checked by :func:`check_dtype`).

    Returns:
        A context manager.

    Raises:
        ValueError: ``dtype_name`` is unknown or ``device`` cannot run it.

    Examples:
        >>> with autocast(torch.device("cpu"), "bfloat16"): logits = model(x).logits
    """
    dtype = check_dtype(dtype_name, device)
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def grad_scaler(device: torch.device, dtype_name: str) -> torch.amp.GradScaler | None:
    """A loss scaler for float16 (on CUDA or MPS, the devices that run it); None for float32
    and bfloat16, which need none.

    Args:
        device: the training device.
        dtype_name: "float32", "bfloat16" or "float16".

    Returns:
        A ``torch.amp.GradScaler``, or None.

    Examples:
        >>> grad_scaler(torch.device("cpu"), "bfloat16") is None
        True
    """
    if dtype_name == "float16":
        return torch.amp.GradScaler(device.type)
    return None
