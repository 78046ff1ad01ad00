"""What this machine and process offer, read once: CPU flags and model name, and whether
``ATTNKIT_DEBUG`` asks for the deep checks.

    >>> "avx2" in cpu_flags()
    >>> cpu_has_native_bf16()          # AVX-512 BF16 or AMX-BF16: bf16 arithmetic in hardware
    >>> debug()                        # ATTNKIT_DEBUG set and not "0"

Linux reads ``/proc/cpuinfo``; elsewhere the flags are empty and the model is what
``platform.processor()`` says. ``ATTNKIT_DEBUG`` is read once, when this module is imported;
:func:`refresh_debug` reads it again (the command line does, once per command; tests do after
changing it). Nothing here changes process state.
"""

from __future__ import annotations

import functools
import os
import platform

__all__ = ["cpu_flags", "cpu_has_native_bf16", "cpu_model", "debug", "refresh_debug"]

_CPUINFO = "/proc/cpuinfo"


def _cpuinfo_field(name: str) -> str | None:
    """The value of the first ``name`` line of /proc/cpuinfo, or None."""
    try:
        with open(_CPUINFO, encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith(name):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (``avx2``, ``fma``, ``avx512_bf16``, ...); empty if unknown."""
    value = _cpuinfo_field("flags")
    return frozenset(value.split()) if value else frozenset()


def cpu_has_native_bf16() -> bool:
    """True when this CPU has bf16 arithmetic (AVX-512 BF16 or AMX-BF16; Linux only)."""
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


@functools.lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU's model name, or ``platform.processor()``, or "unknown"."""
    return _cpuinfo_field("model name") or platform.processor() or "unknown"


def _read_debug() -> bool:
    return os.environ.get("ATTNKIT_DEBUG", "") not in ("", "0")


_DEBUG = _read_debug()


def debug() -> bool:
    """``ATTNKIT_DEBUG`` is set and not ``"0"``: forward passes run the checks that sync with
    the device, every attention call is validated and planned afresh, and the command line
    shows tracebacks. The value read at import (or by the last :func:`refresh_debug`); a
    plain global read, so compiled code guards on it instead of tracing the environment."""
    return _DEBUG


def refresh_debug() -> bool:
    """Read ``ATTNKIT_DEBUG`` again and return the new :func:`debug`."""
    global _DEBUG
    _DEBUG = _read_debug()
    return _DEBUG
