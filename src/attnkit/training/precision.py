"""Where mixed precision is decided: one autocast context for CPU and CUDA."""

from __future__ import annotations

import contextlib

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def check_dtype(name: str, device: torch.device) -> torch.dtype:
    if name not in DTYPES:
        raise ValueError(f"train.dtype must be one of {list(DTYPES)}, got {name!r}")
    if name == "float16" and device.type != "cuda":
        raise ValueError(
            "train.dtype 'float16' needs CUDA; expected 'bfloat16' or 'float32' on CPU"
        )
    return DTYPES[name]


def autocast(device: torch.device, dtype_name: str):
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
