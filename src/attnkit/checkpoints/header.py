"""The header of a safetensors file, read and checked before any tensor is.

A safetensors file is an 8-byte little-endian header length ``N``, ``N`` bytes of JSON (an
object: ``"__metadata__"`` maps strings to strings; every other key is a tensor with
``dtype``, ``shape`` and ``data_offsets`` ``[begin, end]`` into the data section that follows)
and the data section. :func:`read_header` parses the header itself and refuses, with a
:class:`~attnkit.checkpoints.format.CheckpointError` naming the file and the problem, anything
the bytes cannot back: a file too short for its header (truncated), an absurd header length,
a header that is not UTF-8 JSON or not an object, an unknown dtype, a shape that is not a list
of ints >= 0, offsets outside the data section, overlapping or leaving a gap, a byte range
whose size is not ``prod(shape) * itemsize`` of its dtype, and data left over after the last
tensor. Only a file that passes is handed to the ``safetensors`` library to be read, so no
tensor is materialised from a file whose layout is wrong.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

__all__ = ["DTYPES", "MAX_HEADER_BYTES", "Header", "TensorInfo", "read_header"]

# the safetensors library refuses headers above 100 MB; so do we, before reading one
MAX_HEADER_BYTES = 100_000_000

# safetensors dtype name -> torch dtype (itemsize from torch)
DTYPES: dict[str, torch.dtype] = {
    "BOOL": torch.bool,
    "U8": torch.uint8,
    "I8": torch.int8,
    "I16": torch.int16,
    "U16": torch.uint16,
    "I32": torch.int32,
    "U32": torch.uint32,
    "I64": torch.int64,
    "U64": torch.uint64,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F32": torch.float32,
    "F64": torch.float64,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}


class HeaderError(ValueError):
    """A bad header; the message says what is wrong, and
    :func:`attnkit.checkpoints.format.read_header` puts the file's name in front."""


@dataclass(frozen=True)
class TensorInfo:
    """One tensor of the header: its dtype, shape and byte range ``begin``..``end`` in the
    data section.

    Examples:
        >>> TensorInfo(torch.float32, (2, 3), 0, 24).shape  # (2, 3)
    """

    dtype: torch.dtype
    shape: tuple[int, ...]
    begin: int
    end: int


@dataclass(frozen=True)
class Header:
    """A checked safetensors header: ``tensors`` (key -> :class:`TensorInfo`, with each
    tensor's dtype and shape) in file order, ``metadata`` (str -> str), and ``data_start``,
    where the data section begins in the file.

    Examples:
        >>> read_header("runs/char/model.safetensors").tensors["embed.tok.weight"].shape
    """

    path: Path
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]
    data_start: int  # 8 + header length: where the data section begins in the file


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise HeaderError(f"key {k!r} appears twice in the header")
        out[k] = v
    return out


def _tensor_info(key: str, info: Any) -> TensorInfo:
    if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
        got = sorted(info) if isinstance(info, dict) else type(info).__name__
        raise HeaderError(
            f"key {key!r} has header entry {got}; expected an object with exactly "
            f"'dtype', 'shape' and 'data_offsets'"
        )
    name, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if not isinstance(name, str) or name not in DTYPES:
        raise HeaderError(f"key {key!r} has dtype {name!r}; expected one of {list(DTYPES)}")
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        raise HeaderError(f"key {key!r} has shape {shape!r}; expected a list of ints >= 0")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(_is_int(o) for o in offsets)
        or not 0 <= offsets[0] <= offsets[1]
    ):
        raise HeaderError(
            f"key {key!r} has data_offsets {offsets!r}; expected [begin, end] with "
            f"0 <= begin <= end"
        )
    dtype = DTYPES[name]
    need = math.prod(shape) * dtype.itemsize
    if offsets[1] - offsets[0] != need:
        raise HeaderError(
            f"key {key!r}: shape {shape} of {name} needs {need} bytes but data_offsets "
            f"{offsets} span {offsets[1] - offsets[0]}"
        )
    return TensorInfo(dtype, tuple(shape), offsets[0], offsets[1])


def _check_ranges(tensors: dict[str, TensorInfo], data: int) -> None:
    """The byte ranges tile the data section exactly: in range, no overlap, no gap."""
    at, previous = 0, None
    for key, t in sorted(tensors.items(), key=lambda kv: (kv[1].begin, kv[1].end)):
        if t.end > data:
            raise HeaderError(
                f"truncated safetensors file: key {key!r} needs bytes {t.begin}..{t.end} of the data section "
                f"but it holds only {data} bytes"
            )
        if t.begin < at:
            raise HeaderError(
                f"key {key!r} (data bytes {t.begin}..{t.end}) overlaps key {previous!r} "
                f"(which ends at {at})"
            )
        if t.begin > at:
            after = f"after key {previous!r} " if previous is not None else ""
            raise HeaderError(
                f"key {key!r} starts at data byte {t.begin}, leaving bytes {at}..{t.begin} "
                f"{after}unused; expected the tensors to follow one another"
            )
        at, previous = t.end, key
    if at != data:
        raise HeaderError(
            f"the data section holds {data} bytes but its tensors account for {at} "
            f"(bytes appended, or a header that lost tensors)"
        )


def _parse(raw: bytes) -> dict[str, Any]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise HeaderError(f"not UTF-8 text: {e}") from None
    try:
        header = json.loads(text, object_pairs_hook=_no_duplicates)
    except json.JSONDecodeError as e:
        raise HeaderError(f"not valid JSON: {e}") from None
    if not isinstance(header, dict):
        raise HeaderError(f"a JSON {type(header).__name__}; expected an object")
    return header


def read_header(path: str | Path) -> Header:
    """The checked header of the safetensors file ``path``; raises HeaderError (a ValueError)
    whose message says what is wrong (the caller adds the file's name).

    Examples:
        >>> read_header(Path("runs/char/model.safetensors")).tensors
    """
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise HeaderError(
                f"truncated safetensors file: {size} bytes, fewer than the 8 that give the header's length"
            )
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER_BYTES:
            raise HeaderError(
                f"its length field says {n} bytes, an absurd header length (the file has "
                f"{size} bytes; expected at most {MAX_HEADER_BYTES})"
            )
        if n > size - 8:
            raise HeaderError(
                f"truncated safetensors file (or not one): its header length says {n} bytes "
                f"but only {size - 8} follow it"
            )
        header = _parse(f.read(n))
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise HeaderError(f"__metadata__ is {metadata!r}; expected an object of str -> str")
    tensors = {key: _tensor_info(key, info) for key, info in header.items()}
    _check_ranges(tensors, size - 8 - n)
    return Header(path, tensors, dict(metadata), 8 + n)
