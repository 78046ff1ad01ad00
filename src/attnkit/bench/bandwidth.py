"""The memory-bandwidth bound of decoding: how fast this machine reads memory, how many bytes a
decoding step reads, and the tokens/s that allows.

Decoding one token at batch 1 multiplies one row by every weight matrix of the model, so each
step reads every weight once from memory (the weights are far larger than the caches) and
does little arithmetic per byte: the step cannot take less than (bytes read) / (read
bandwidth). :func:`measure_read_bandwidth` measures the bandwidth, :func:`decode_weight_bytes`
and :func:`kv_cache_bytes` count the bytes, :func:`limit_tokens_per_s` and
:func:`fraction_of_limit` turn them into the bound and a measured rate's share of it.

How the bandwidth is measured: a float32 buffer of ``max(1 GiB, 2 x last-level cache)`` (from
``/sys/devices/system/cpu/cpu0/cache``; 1 GiB where that is not readable; at most a quarter of
the available memory) is filled once, so
every page is mapped, and then read in full by each of three torch read kernels with the
threads torch has now (``torch.get_num_threads()``): ``sum`` (``torch.sum``), ``dot``
(``torch.dot`` of its two halves) and ``mv`` (``torch.mv`` of the buffer as a (rows, 4096)
matrix with a vector of ones, the product a decoding step makes). Each kernel runs once
untimed, then ``passes`` times, round-robin with the others
(:func:`~attnkit.bench.harness.interleaved_samples`); its bandwidth is the buffer's bytes over the median time. The fastest
kernel's figure is the result: the highest read rate torch reaches on this machine, so a
decoding step measured against it is held to the best the memory delivers, not to a slow
kernel. On the 2-core development machine, with 2 threads while another job ran: ``mv``
14.9 GB/s, ``dot`` 14.9, ``sum`` 12.3; with ``mv``, buffers from 256 MiB to 2 GiB read at the
same rate and 64 MiB faster (partly cached), though sysfs reports a 480 MiB L3.
"""

from __future__ import annotations

import math
import os
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from attnkit.bench.harness import GiB, MiB, available_memory_bytes, interleaved_samples

__all__ = [
    "KERNELS",
    "ReadBandwidth",
    "decode_weight_bytes",
    "default_buffer_bytes",
    "fraction_of_limit",
    "kv_cache_bytes",
    "last_level_cache_bytes",
    "limit_tokens_per_s",
    "mean_context",
    "measure_read_bandwidth",
    "tensor_bytes",
]

KERNELS = ("sum", "dot", "mv")
MV_WIDTH = 4096  # the columns of the buffer seen as a matrix by the "mv" kernel
MIN_BUFFER_BYTES = 2 * MV_WIDTH * 4  # two rows: both halves of "dot" and a matrix for "mv"
METHOD = (
    "a float32 buffer read in full by torch.sum, torch.dot (its two halves) and torch.mv "
    "(a (rows, 4096) view times a vector of ones) in turns; per kernel the buffer's bytes over "
    "the median pass; the fastest kernel counts"
)


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return value


def _check_positive(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)


# --------------------------------------------------------------------------------------------
# the read bandwidth
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReadBandwidth:
    """One measurement of the memory read bandwidth.

    Attributes:
        bytes_per_s: the fastest kernel's rate (bytes of the buffer / median seconds a pass).
        kernel: which kernel that was (one of :data:`KERNELS`).
        buffer_bytes: the size of the buffer read.
        threads: torch's CPU threads during the measurement.
        passes: timed passes per kernel.
        kernels: every kernel's rate, bytes/s.
        method: how it was measured, in words.

    Examples:
        >>> bw = measure_read_bandwidth(64 * 1024**2, passes=3)
        >>> round(bw.gb_per_s)  # e.g. 15
    """

    bytes_per_s: float
    kernel: str
    buffer_bytes: int
    threads: int
    passes: int
    kernels: dict[str, float] = field(default_factory=dict)
    method: str = METHOD

    @property
    def gb_per_s(self) -> float:
        """The rate in GB/s (10^9 bytes a second).

        Examples:
            >>> ReadBandwidth(15e9, "mv", 2**30, 2, 7).gb_per_s
            15.0
        """
        return self.bytes_per_s / 1e9

    def to_json(self) -> dict[str, Any]:
        """The measurement as a JSON-ready dict (rates in GB/s).

        Examples:
            >>> ReadBandwidth(15e9, "mv", 2**30, 2, 7).to_json()["gb_per_s"]
            15.0
        """
        return {
            "gb_per_s": self.gb_per_s,
            "kernel": self.kernel,
            "kernels_gb_per_s": {k: v / 1e9 for k, v in self.kernels.items()},
            "buffer_bytes": self.buffer_bytes,
            "threads": self.threads,
            "passes": self.passes,
            "method": self.method,
        }


def last_level_cache_bytes(
    root: str | os.PathLike[str] = "/sys/devices/system/cpu/cpu0/cache",
) -> int | None:
    """The size of CPU 0's largest (last-level) cache in bytes, from sysfs; None where sysfs
    does not say.

    Examples:
        >>> last_level_cache_bytes()  # e.g. 503316480 for a 480 MiB L3
    """
    best: tuple[int, int] | None = None  # (level, bytes)
    for index in sorted(Path(root).glob("index*")):
        try:
            level = int((index / "level").read_text().strip())
            text = (index / "size").read_text().strip().upper()
        except (OSError, ValueError):
            continue
        scale = {"K": 1024, "M": MiB, "G": GiB}.get(text[-1:], 1)
        digits = text[:-1] if text[-1:] in "KMG" else text
        if not digits.isdigit():
            continue
        size = int(digits) * scale
        if best is None or (level, size) > best:
            best = (level, size)
    return None if best is None else best[1]


def default_buffer_bytes() -> int:
    """The probe's buffer: ``max(1 GiB, 2 x last-level cache)``, at most a quarter of the
    memory available now (and never under 64 MiB).

    Examples:
        >>> default_buffer_bytes() // 1024**2  # MiB, e.g. 1024
    """
    llc = last_level_cache_bytes() or 0
    want = max(GiB, 2 * llc)
    return max(64 * MiB, min(want, available_memory_bytes("cpu") // 4))


def _read_kernels(buf: torch.Tensor) -> dict[str, Callable[[], Any]]:
    half = buf.numel() // 2
    a, b = buf[:half], buf[half : 2 * half]
    matrix = buf.view(-1, MV_WIDTH)  # (rows, 4096)
    ones = torch.ones(MV_WIDTH)
    return {
        "sum": lambda: torch.sum(buf),
        "dot": lambda: torch.dot(a, b),
        "mv": lambda: torch.mv(matrix, ones),
    }


def measure_read_bandwidth(
    buffer_bytes: int | None = None, passes: int = 7, kernels: Sequence[str] = KERNELS
) -> ReadBandwidth:
    """Measure how fast torch reads memory on this machine, with torch's current threads.

    Args:
        buffer_bytes: the size of the float32 buffer read (rounded down to whole rows of
            4096 floats); None: :func:`default_buffer_bytes`. Only a buffer far larger than
            the last-level cache measures the memory rather than the cache.
        passes: timed passes per kernel (the median counts).
        kernels: which of :data:`KERNELS` to run.

    Returns:
        The fastest kernel's rate, with every kernel's rate and how it was measured.

    Raises:
        TypeError: ``buffer_bytes`` or ``passes`` is not an int, ``kernels`` not a sequence
            of names.
        ValueError: ``buffer_bytes`` under 32 KiB, ``passes`` under 1, or an unknown kernel.

    Examples:
        >>> measure_read_bandwidth(2 * 1024**3, passes=5).gb_per_s  # e.g. 14.9
    """
    size = default_buffer_bytes() if buffer_bytes is None else buffer_bytes
    _check_int("buffer_bytes", size, MIN_BUFFER_BYTES)
    _check_int("passes", passes, 1)
    if isinstance(kernels, str) or not all(isinstance(k, str) for k in kernels):
        raise TypeError(f"kernels must be a sequence of kernel names, got {kernels!r}")
    bad = [k for k in kernels if k not in KERNELS]
    if bad or not kernels:
        raise ValueError(f"kernels must be a non-empty subset of {KERNELS}, got {list(kernels)!r}")
    rows = size // (4 * MV_WIDTH)
    rows -= rows % 2  # two equal halves for "dot"
    buf = torch.ones(rows * MV_WIDTH)  # (rows * 4096,) float32, every page written once
    nbytes = buf.numel() * buf.element_size()
    fns = {k: v for k, v in _read_kernels(buf).items() if k in kernels}
    with torch.inference_mode():
        taken = interleaved_samples(fns, warmup=1, repeat=passes)
    rates = {k: nbytes / statistics.median(s) for k, s in taken.items()}
    best = max(rates, key=lambda k: rates[k])
    return ReadBandwidth(
        bytes_per_s=rates[best],
        kernel=best,
        buffer_bytes=nbytes,
        threads=torch.get_num_threads(),
        passes=passes,
        kernels=rates,
    )


# --------------------------------------------------------------------------------------------
# bytes a decoding step reads
# --------------------------------------------------------------------------------------------


def tensor_bytes(t: torch.Tensor | None) -> int:
    """Bytes of a tensor's elements in its storage dtype; a torchao ``Int8Tensor`` counts what
    its weight-only product reads (int8 codes and scales, not its unused zero points), another
    wrapper subclass all its inner tensors. None counts 0.

    Examples:
        >>> tensor_bytes(torch.zeros(3, 4, dtype=torch.bfloat16))  # (3, 4) at 2 bytes
        24
    """
    if t is None:
        return 0
    flatten = getattr(type(t), "__tensor_flatten__", None)
    if flatten is None:
        return t.numel() * t.element_size()
    names, _meta = t.__tensor_flatten__()  # type: ignore[attr-defined]
    if type(t).__name__ == "Int8Tensor":  # torchao: the linear reads qdata and scale only
        names = [n for n in names if n in ("qdata", "scale")]
    return sum(tensor_bytes(getattr(t, n, None)) for n in names)


def _direct_tensors(module: nn.Module) -> list[torch.Tensor]:
    from attnkit.native.int8 import Int8Linear

    if isinstance(module, Int8Linear):  # decoding reads the float32 scales (native kernel)
        return [t for t in (module.weight, module.scale_f32, module.bias) if t is not None]
    found: list[torch.Tensor] = list(module.parameters(recurse=False))
    found += [b for b in module.buffers(recurse=False) if b is not None]
    return found


def decode_weight_bytes(model: nn.Module, batch: int = 1) -> int:
    """Bytes of parameters and buffers one decoding step of ``model`` reads, in their storage
    dtypes, for ``batch`` rows (one new token each).

    Counted: every tensor held by every module, once, except that an embedding
    (``nn.Embedding`` and subclasses: token and learned position tables) reads ``batch`` rows
    (one per row of the batch, fewer if the table is smaller), and attnkit's
    :class:`~attnkit.native.int8.Int8Linear` reads its int8 weight, float32 scales and bias.
    A tied LM head reads its whole matrix while the token embedding, the same tensor, reads
    its rows: both are counted. The KV cache is not a parameter; see :func:`kv_cache_bytes`.

    Args:
        model: an attnkit GPT or a ``transformers`` causal LM.
        batch: rows decoded together; the weights are read once for all of them.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``, or ``batch`` not an int.
        ValueError: ``batch`` under 1.

    Examples:
        >>> decode_weight_bytes(nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 10)))
        216
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    _check_int("batch", batch, 1)
    total = 0
    seen: set[int] = set()
    for module in model.modules():
        if isinstance(module, nn.Embedding):
            w = module.weight
            total += min(batch, w.shape[0]) * w.shape[1] * w.element_size()
            continue
        for t in _direct_tensors(module):
            if id(t) in seen:
                continue
            seen.add(id(t))
            total += tensor_bytes(t)
    return total


def mean_context(prompt_len: int, new_tokens: int) -> float:
    """The mean number of cached positions attention reads over the steps that make
    ``new_tokens`` tokens: the prompt pass (``prompt_len`` positions) makes the first, step
    j = 1..n-1 attends ``prompt_len + j``; the mean is ``prompt_len + (n - 1) / 2``.

    Examples:
        >>> mean_context(32, 256)
        159.5
    """
    _check_int("prompt_len", prompt_len, 1)
    _check_int("new_tokens", new_tokens, 1)
    return prompt_len + (new_tokens - 1) / 2


def kv_cache_bytes(n_layer: int, kv_width: int, batch: int, context: float, itemsize: int) -> float:
    """Bytes of keys and values one decoding step reads from the KV cache: every layer reads
    ``context`` cached positions of keys and of values, ``kv_width`` numbers each (heads x
    head width), for each of ``batch`` rows.

    Args:
        n_layer: attention layers.
        kv_width: key (= value) numbers per position: kv heads x head width (GPT-2: n_embd).
        batch: rows decoded together.
        context: cached positions read, e.g. :func:`mean_context`.
        itemsize: bytes per number of the cache's dtype.

    Examples:
        >>> kv_cache_bytes(12, 768, 1, 159.5, 4)  # GPT-2 124M, float32 cache, (12, 2, 159.5, 768)
        11759616.0
    """
    _check_int("n_layer", n_layer, 1)
    _check_int("kv_width", kv_width, 1)
    _check_int("batch", batch, 1)
    _check_int("itemsize", itemsize, 1)
    _check_positive("context", context)
    return float(n_layer * 2 * batch * context * kv_width * itemsize)


def limit_tokens_per_s(bytes_per_s: float, bytes_per_step: float, batch: int = 1) -> float:
    """The fastest decoding the read bandwidth allows: a step that makes ``batch`` tokens
    cannot take less than ``bytes_per_step / bytes_per_s`` seconds.

    Examples:
        >>> limit_tokens_per_s(15e9, 500e6)  # 500 MB a token at 15 GB/s
        30.0
    """
    _check_positive("bytes_per_s", bytes_per_s)
    _check_positive("bytes_per_step", bytes_per_step)
    _check_int("batch", batch, 1)
    return batch * bytes_per_s / bytes_per_step


def fraction_of_limit(tokens_per_s: float, limit: float) -> float:
    """A measured rate's share of the bandwidth limit (1.0: at the limit).

    Examples:
        >>> fraction_of_limit(24.0, 30.0)
        0.8
    """
    if isinstance(tokens_per_s, bool) or not isinstance(tokens_per_s, (int, float)):
        raise TypeError(f"tokens_per_s must be a number, got {tokens_per_s!r}")
    if not math.isfinite(tokens_per_s) or tokens_per_s < 0:
        raise ValueError(f"tokens_per_s must be a finite number >= 0, got {tokens_per_s!r}")
    return tokens_per_s / _check_positive("limit", limit)
