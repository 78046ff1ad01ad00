"""What this machine offers, read once from the system: CPU flags and model name.

    >>> "avx2" in cpu_flags()
    >>> cpu_has_native_bf16()          # AVX-512 BF16 or AMX-BF16: bf16 arithmetic in hardware

Linux reads ``/proc/cpuinfo``; elsewhere the flags are empty and the model is what
``platform.processor()`` says. Nothing here changes process state.
"""

from __future__ import annotations

import functools
import platform

__all__ = ["cpu_flags", "cpu_has_native_bf16", "cpu_model"]

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
