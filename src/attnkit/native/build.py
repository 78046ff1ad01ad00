"""Build and load the native skinny-product kernel; :class:`SkinnyLinear` calls it.

Decoding a few tokens at a time multiplies a handful of rows by every weight matrix of the
model; the time goes into reading the weights from memory. BLAS libraries tune for large
products and stream a weight at well under the machine's memory bandwidth when the other side
has 2-16 rows. :func:`skinny_linear` is a small AVX2/FMA kernel (``skinny.c``) that reads each
weight once at close to full bandwidth.

The kernel is compiled on first use with the system C compiler (``$CC``, else ``cc``/``gcc``)
into ``<attnkit cache>/kernels`` and loaded with :mod:`ctypes`; it needs no PyTorch headers.
When it cannot be had (not Linux on x86-64, no AVX2/FMA, no compiler, a failed build, or
``ATTNKIT_NATIVE=0``) :func:`skinny_linear` returns ``None`` and callers use PyTorch's own
products; :func:`status` says why.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Any

import torch

__all__ = ["available", "status", "skinny_linear", "SkinnyLinear"]

_SOURCE = Path(__file__).with_name("skinny.c")
_FLAGS = ["-O3", "-mavx2", "-mfma", "-fopenmp", "-shared", "-fPIC"]
_lock = threading.Lock()
_lib = None
_status: str | None = None  # None until the first attempt


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _compiler() -> str | None:
    cc = os.environ.get("CC")
    if cc:
        return shutil.which(cc) or (cc if os.path.isfile(cc) else None)
    return shutil.which("cc") or shutil.which("gcc")


def _build(cc: str) -> Path:
    from attnkit._util.fs import cache_dir

    source = _SOURCE.read_bytes()
    key = hashlib.sha256(source + "\0".join([cc, *_FLAGS]).encode()).hexdigest()[:16]
    name = f"skinny-{key}.so"
    # the attnkit cache, or a private temporary directory where that is not writable
    for folder in (
        cache_dir() / "kernels",
        Path(tempfile.gettempdir()) / f"attnkit-kernels-{os.getuid()}",
    ):
        try:
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            st = folder.stat()
        except OSError:
            continue
        # a library is only loaded from a folder that nobody else could have written into
        if st.st_uid != os.getuid() or st.st_mode & 0o022 or not os.access(folder, os.W_OK):
            continue
        if (folder / name).exists():
            return folder / name
        break
    else:
        raise RuntimeError("no writable directory for the compiled kernel")
    out = folder / name
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
    os.close(fd)
    try:
        proc = subprocess.run(
            [cc, *_FLAGS, "-o", tmp, str(_SOURCE)], capture_output=True, text=True, timeout=300
        )
        if proc.returncode != 0:
            raise RuntimeError(f"{cc} exited with {proc.returncode}: {proc.stderr.strip()[:500]}")
        os.replace(tmp, out)  # atomic: a concurrent build or a kill leaves no half-written .so
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


def _load():
    global _lib, _status
    with _lock:
        if _status is not None:
            return _lib
        if os.environ.get("ATTNKIT_NATIVE", "1").strip().lower() in ("0", "false", "no", "off"):
            _status = "disabled by ATTNKIT_NATIVE=0"
            return None
        if platform.system() != "Linux" or platform.machine().lower() not in ("x86_64", "amd64"):
            _status = f"needs Linux on x86-64 (this is {platform.system()} on {platform.machine()})"
            return None
        missing = {"avx2", "fma"} - _cpu_flags()
        if missing:
            _status = f"this CPU lacks {', '.join(sorted(missing))}"
            return None
        cc = _compiler()
        if cc is None:
            _status = "no C compiler found ($CC, cc or gcc)"
            return None
        try:
            path = _build(cc)
            lib = ctypes.CDLL(str(path))
            fns = [getattr(lib, "attnkit_skinny_linear_" + t) for t in ("f32", "bf16", "i8")]
        except (OSError, AttributeError, RuntimeError, subprocess.SubprocessError) as e:
            _status = f"build failed: {e}"
            return None
        for fn in fns:
            fn.argtypes = [ctypes.c_void_p] * 5 + [ctypes.c_int] * 4
            fn.restype = None
        _lib = lib
        _status = f"ready ({path})"
        return _lib


def available() -> bool:
    """True when the native kernel is built and loaded (building it on first call)."""
    return _load() is not None


def status() -> str:
    """Why the native kernel is or is not in use."""
    _load()
    return str(_status)


_INT_MAX = 2**31 - 1
_SUFFIX = {torch.float32: "f32", torch.bfloat16: "bf16", torch.int8: "i8"}


class SkinnyLinear:
    """``(x @ weight.T) * scale + bias`` through the native kernel, with everything about the
    weight checked and converted once: calling it costs a few microseconds on top of the
    product, which matters when a decoding step makes 50 of them.

    weight: (M, K) contiguous CPU float32, bfloat16 or int8 (int8 needs ``scale``, one
    factor per output row); bias, scale: (M,) of any floating dtype. Build it with
    :meth:`create`, which returns ``None`` when the kernel or the weight is not supported. The
    object keeps references to the tensors it reads; it does not follow later in-place
    replacements of ``weight`` (build a new one). No autograd."""

    __slots__ = ("weight", "bias", "scale", "M", "K", "_fn", "_args")
    weight: torch.Tensor
    bias: torch.Tensor | None
    scale: torch.Tensor | None
    M: int
    K: int
    _fn: Any
    _args: tuple[int, int | None, int | None]

    @classmethod
    def create(
        cls,
        weight: torch.Tensor,
        bias: torch.Tensor | None = None,
        scale: torch.Tensor | None = None,
    ) -> SkinnyLinear | None:
        lib = _load()
        if (
            lib is None
            or weight.device.type != "cpu"
            or weight.dtype not in _SUFFIX
            or weight.dim() != 2
            or not weight.is_contiguous()
            or max(weight.shape) > _INT_MAX
            or (weight.dtype == torch.int8 and scale is None)
        ):
            return None
        M = weight.shape[0]
        extras = []
        for t in (scale, bias):
            if t is not None and (
                t.device.type != "cpu" or t.numel() != M or not t.is_floating_point()
            ):
                return None
            extras.append(
                None if t is None else t.detach().reshape(M).to(torch.float32).contiguous()
            )
        self = cls.__new__(cls)
        self.weight = weight.detach()
        self.scale, self.bias = extras
        self.M, self.K = M, weight.shape[1]
        self._fn = getattr(lib, "attnkit_skinny_linear_" + _SUFFIX[weight.dtype])
        self._args = (
            self.weight.data_ptr(),
            self.scale.data_ptr() if self.scale is not None else None,
            self.bias.data_ptr() if self.bias is not None else None,
        )
        return self

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, K) on the CPU, any floating dtype; returns float32 (N, M)."""
        if x.dim() != 2 or x.shape[1] != self.K or x.device.type != "cpu":
            raise ValueError(
                f"SkinnyLinear expects a (N, {self.K}) CPU tensor, got "
                f"{tuple(x.shape)} on {x.device}"
            )
        if x.dtype != torch.float32 or not x.is_contiguous():
            x = x.to(torch.float32).contiguous()
        N = x.shape[0]
        y = torch.empty(N, self.M, dtype=torch.float32)
        if N and self.M:
            w, s, b = self._args
            self._fn(
                x.data_ptr(), w, s, b, y.data_ptr(), N, self.M, self.K, torch.get_num_threads()
            )
        return y


def skinny_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    scale: torch.Tensor | None = None,
) -> torch.Tensor | None:
    """``(x @ weight.T) * scale + bias`` in float32 for a 2-D CPU ``x`` (N, K) with few rows,
    through the native kernel (a one-off :class:`SkinnyLinear`).

    weight: (M, K), contiguous, float32, bfloat16 or int8 (int8 needs ``scale``, one factor per
    output row). x, bias and scale may be any floating dtype; the products are summed in float32
    and the result is float32 (N, M). Returns ``None`` when the kernel or these inputs are not
    supported: the caller then computes the product itself. No autograd."""
    if (
        x.device.type != "cpu"
        or not x.is_floating_point()
        or x.dim() != 2
        or weight.dim() != 2
        or x.shape[1] != weight.shape[1]
        or x.numel() > _INT_MAX
    ):
        return None
    if torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, weight, bias, scale)
    ):
        return None
    plan = SkinnyLinear.create(weight, bias, scale)
    return None if plan is None else plan(x)
