"""Where mixed precision is decided: one autocast context for CPU and CUDA."""

from __future__ import annotations

import contextlib

import torch

from attnkit._util.devices import DTYPES, resolve_dtype

__all__ = ["DTYPES", "autocast", "check_dtype", "grad_scaler"]


def check_dtype(name: str, device: torch.device, field: str = "train.dtype") -> torch.dtype:
    """The torch dtype called ``name``, if ``device`` runs it (``field``: the setting's name
    in messages)."""
    return resolve_dtype(name, device, field)


def autocast(device: torch.device, dtype_name: str) -> contextlib.AbstractContextManager[None]:
    """``torch.autocast`` in ``dtype_name`` (bf16/fp16), or nothing for float32. Weights and
    optimizer state stay float32 either way."""
    dtype = check_dtype(dtype_name, device)
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def grad_scaler(device: torch.device, dtype_name: str) -> torch.amp.GradScaler | None:
    """A loss scaler for float16 on CUDA (bf16 needs none)."""
    if dtype_name == "float16":
        return torch.amp.GradScaler(device.type)
    return None
