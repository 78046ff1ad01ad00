"""Where device and dtype are decided: :func:`resolve_device` and :func:`resolve_dtype`.

Every command's ``--device``/``--dtype``, the training config's ``train.device``/
``train.dtype``, fine-tuning and the benchmarks go through these two functions, so a name
means the same thing everywhere and an unavailable device is refused with the same message.

    >>> resolve_device("auto")           # cuda when present, else mps (macOS), else cpu
    >>> resolve_device("cuda:1")         # ValueError when there is no second GPU
    >>> resolve_dtype("float16", torch.device("cpu"))   # ValueError: needs CUDA or MPS

``auto`` picks CUDA when ``torch.cuda.is_available()``, else Apple's MPS when
``torch.backends.mps.is_available()``, else the CPU. A name that is not a device, or a device
this machine lacks, is a ValueError naming the value given and the devices that are here.
"""

from __future__ import annotations

import torch

__all__ = [
    "DEVICE_NAMES",
    "DTYPES",
    "available_devices",
    "resolve_device",
    "resolve_dtype",
]

# what a device setting may say (cuda also as cuda:N)
DEVICE_NAMES = ("auto", "cpu", "cuda", "mps")

# dtype names a setting may give -> the torch dtype
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def available_devices() -> list[str]:
    """The devices this process can use: ``cpu``, then ``cuda:0`` ... and ``mps`` when here."""
    out = ["cpu"]
    if torch.cuda.is_available():
        out += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if _mps_available():
        out.append("mps")
    return out


def _expected() -> str:
    return "'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'"


def resolve_device(spec: str | torch.device | None = "auto", field: str = "device") -> torch.device:
    """The torch device that ``spec`` names (``field``: the setting's name in messages).

    ``None`` and ``"auto"``: CUDA when present, else MPS, else CPU. ``"cuda"`` is the current
    CUDA device; ``"cuda:N"`` must be below the device count. A ``torch.device`` is checked the
    same way. ValueError names ``spec`` and the devices available here."""
    if spec is None or (isinstance(spec, str) and spec.strip().lower() == "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if isinstance(spec, torch.device):
        dev = spec
    elif isinstance(spec, str):
        text = spec.strip().lower()
        kind, sep, index = text.partition(":")
        if kind not in DEVICE_NAMES[1:] or (sep and (kind != "cuda" or not index.isdigit())):
            raise ValueError(f"{field} must be {_expected()}, got {spec!r}")
        dev = torch.device(text)
    else:
        raise TypeError(f"{field} must be a device name such as {_expected()}, got {spec!r}")
    here = available_devices()
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"{field} {str(spec)!r} needs CUDA, which is not available here; "
                f"available: {', '.join(here)} (or 'auto')"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(
                f"{field} {str(spec)!r}: there is no CUDA device {dev.index}; "
                f"available: {', '.join(here)}"
            )
        return dev
    if dev.type == "mps":
        if not _mps_available():
            raise ValueError(
                f"{field} {str(spec)!r} needs Apple's MPS, which is not available here; "
                f"available: {', '.join(here)} (or 'auto')"
            )
        return dev
    if dev.type == "cpu":
        return torch.device("cpu")
    raise ValueError(f"{field} must be {_expected()}, got {spec!r}")


def resolve_dtype(
    name: str | torch.dtype, device: torch.device, field: str = "dtype"
) -> torch.dtype:
    """The torch dtype that ``name`` names ("float32", "bfloat16" or "float16", or one of
    those torch dtypes), if ``device`` runs it: float16 needs CUDA or MPS (the CPU has no
    float16 kernels for most of a model). bfloat16 runs everywhere; on a CPU without native
    bf16 (AVX-512 BF16 / AMX) it is emulated and slower than float32."""
    if isinstance(name, torch.dtype):
        by_dtype = {v: k for k, v in DTYPES.items()}
        if name not in by_dtype:
            raise ValueError(f"{field} must be one of {list(DTYPES)}, got {name!r}")
        name = by_dtype[name]
    if not isinstance(name, str) or name not in DTYPES:
        raise ValueError(f"{field} must be one of {list(DTYPES)}, got {name!r}")
    if name == "float16" and device.type not in ("cuda", "mps"):
        raise ValueError(
            f"{field} 'float16' needs CUDA or MPS, and the device is {str(device)!r}; "
            f"expected 'bfloat16' or 'float32' on {device.type}"
        )
    return DTYPES[name]
