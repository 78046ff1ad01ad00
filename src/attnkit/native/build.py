"""Build and load the native skinny-product kernel, safely (:mod:`attnkit.native.skinny` calls it).

Decoding a few tokens at a time multiplies a handful of rows by every weight matrix of the
model; the time goes into reading the weights from memory. BLAS libraries tune for large
products and stream a weight at well under the machine's memory bandwidth when the other side
has 2-16 rows. :func:`skinny_linear` is a small AVX2/FMA kernel (``skinny.c``) that reads each
weight once at close to full bandwidth (:func:`attnkit.native.skinny.skinny_linear`).

The kernel is compiled on first use with the system C compiler (``$CC``, else ``cc``/``gcc``)
into :func:`kernel_dir` and loaded with :mod:`ctypes`; it needs no PyTorch headers. Loading a
library runs its code, so every step is checked:

* The folder is created with mode 0o700, opened without following a symlink, and its
  descriptor checked with ``fstat``: a directory owned by this user that neither group nor
  others may write. Everything after that is done relative to that descriptor, so renaming
  the folder away afterwards changes nothing.
* The compiler writes a temporary file in that folder; it is checked and loaded, then renamed
  over the final name atomically: a killed or concurrent build leaves no half-written library
  and a failed build leaves nothing behind (a killed build's temporary file is removed by a
  later build, an hour on).
* A cached library is opened with ``O_NOFOLLOW`` (a symlink is refused), its descriptor checked
  with ``fstat`` (a regular file owned by this user that neither group nor others may write),
  and loaded through that descriptor (``/proc/self/fd/N``), so the file checked is the file
  loaded even if the name is swapped in between. Where ``/proc/self/fd`` is missing the
  library is not loaded at all: a load by name could not be tied to the checked file.

When the kernel cannot be had (not Linux on x86-64, no AVX2/FMA, no compiler, a failed build,
an unsafe folder or file, or ``ATTNKIT_NATIVE=0``) :func:`library` returns ``None``, and
callers use PyTorch's own products; :func:`status` says why.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import logging
import os
import platform
import secrets
import shlex
import shutil
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from attnkit._util.env import cpu_flags
from attnkit._util.fs import cache_dir

__all__ = ["NativeStatus", "available", "kernel_dir", "library", "status"]

log = logging.getLogger(__name__)

_SOURCE = Path(__file__).with_name("skinny.c")
_FLAGS = ["-O3", "-mavx2", "-mfma", "-fopenmp", "-shared", "-fPIC"]
_SYMBOLS = tuple("attnkit_skinny_linear_" + t for t in ("f32", "bf16", "i8"))
# POSIX flags (Linux, the one platform the kernel is loaded on, has them all; the names are
# looked up softly so that importing this module works everywhere). O_NONBLOCK: a FIFO in the
# library's place cannot hang the open (the fstat check then refuses it).
_NOFOLLOW, _NONBLOCK, _DIRECTORY, _CLOEXEC = (
    getattr(os, f"O_{flag}", 0) for flag in ("NOFOLLOW", "NONBLOCK", "DIRECTORY", "CLOEXEC")
)
_OPEN_FILE = os.O_RDONLY | _NOFOLLOW | _NONBLOCK | _CLOEXEC
_OPEN_DIR = os.O_RDONLY | _NOFOLLOW | _DIRECTORY | _CLOEXEC
_lock = threading.Lock()
_state: tuple[Any, NativeStatus] | None = None  # (library or None, status); None until tried


@dataclass(frozen=True)
class NativeStatus:
    """Whether the native kernel is in use, and why or why not; ``str()`` gives the reason.

    available: the kernel is built and loaded. reason: ``"ready (<library path>)"``, or what
    stopped it (the check that failed, naming the file or folder and what was expected).
    library: the loaded library's path, else ``None``.

    Examples:
        >>> str(NativeStatus(False, "disabled by ATTNKIT_NATIVE=0"))
        'disabled by ATTNKIT_NATIVE=0'
    """

    available: bool
    reason: str
    library: Path | None = None

    def __str__(self) -> str:
        return self.reason


class _Refused(Exception):
    """The kernel cannot be used here; the message says why."""


class _NoProc(_Refused):
    """No ``/proc/self/fd`` to load a checked descriptor through."""


def kernel_dir() -> Path:
    """The folder for the compiled kernel: ``$ATTNKIT_KERNEL_DIR``, else ``<attnkit
    cache>/kernels`` (:func:`attnkit._util.fs.cache_dir`).

    Nothing is created here; the folder is made, with mode 0o700, on the first build.

    Examples:
        >>> kernel_dir()  # e.g. PosixPath('/home/me/.cache/attnkit/kernels')
    """
    return Path(os.environ.get("ATTNKIT_KERNEL_DIR") or cache_dir() / "kernels")


def _compiler() -> list[str]:
    """The compiler's command line: ``$CC`` (which may carry arguments), else cc or gcc."""
    cc = os.environ.get("CC", "").strip()
    if cc:
        try:
            argv = shlex.split(cc)
        except ValueError as e:
            raise _Refused(f"no C compiler: CC={cc!r} cannot be split into words: {e}") from None
        exe = shutil.which(argv[0])
        if exe is None:
            raise _Refused(f"no C compiler: CC={cc!r} is not an executable file or on PATH")
        return [exe, *argv[1:]]
    exe = shutil.which("cc") or shutil.which("gcc")
    if exe is None:
        raise _Refused("no C compiler: $CC is not set and neither cc nor gcc is on PATH")
    return [exe]


def _library_name(cc: list[str]) -> str:
    """The library's file name: a hash of the source, the compiler and the flags."""
    key = hashlib.sha256(_SOURCE.read_bytes() + "\0".join([*cc, *_FLAGS]).encode())
    return f"skinny-{key.hexdigest()[:16]}.so"


def _check(fd: int, path: Path, what: str, is_kind: Callable[[int], bool], kind: str) -> None:
    """Refuse unless the open descriptor ``fd`` is a ``kind`` owned by this user that neither
    group nor others may write."""
    st = os.fstat(fd)
    uid = os.getuid()
    if not is_kind(st.st_mode):
        raise _Refused(f"{what} {path} is not a {kind}")
    if st.st_uid != uid:
        raise _Refused(
            f"{what} {path} is owned by uid {st.st_uid}, not by this user (uid {uid}); "
            f"expected a {kind} of this user's"
        )
    if st.st_mode & 0o022:
        who = {0o020: "group", 0o002: "others", 0o022: "group and others"}[st.st_mode & 0o022]
        raise _Refused(
            f"{what} {path} has mode {stat.S_IMODE(st.st_mode):04o}, writable by {who}; "
            "expected no group or world write permission"
        )


def _open_folder(folder: Path) -> int:
    """``folder`` (created with mode 0o700 if missing), opened and checked; its descriptor.
    OSError when it cannot be created; _Refused when it is not safe to load from."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        os.mkdir(folder, 0o700)
    try:
        fd = os.open(folder, _OPEN_DIR)
    except OSError as e:
        if os.path.islink(folder):
            raise _Refused(f"kernel folder {folder} is a symlink; expected a directory") from None
        raise _Refused(f"cannot open kernel folder {folder}: {e.strerror}") from None
    try:
        _check(fd, folder, "kernel folder", stat.S_ISDIR, "directory")
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open_any_folder() -> tuple[int, Path]:
    """The kernel folder, or where it cannot be created (a read-only home) a private one in
    the temporary directory; a folder that exists but is unsafe is refused, not skipped."""
    folders = [kernel_dir()]
    if not os.environ.get("ATTNKIT_KERNEL_DIR"):
        folders.append(Path(tempfile.gettempdir()) / f"attnkit-kernels-{os.getuid()}")
    failures = []
    for folder in folders:
        try:
            return _open_folder(folder), folder
        except OSError as e:
            failures.append(f"{folder}: {e}")
    raise _Refused(f"cannot create a folder for the compiled kernel ({'; '.join(failures)})")


def _load_fd(fd: int, path: Path) -> Any:
    """Check the open library ``fd`` and load it through the descriptor. Once loaded, the
    descriptor stays open for the life of the process: the loader remembers libraries by name,
    and ``/proc/self/fd/N`` must never name another file while this one is loaded."""
    by_fd = f"/proc/self/fd/{fd}"
    try:
        _check(fd, path, "kernel library", stat.S_ISREG, "regular file")
        try:
            same = os.path.samestat(os.stat(by_fd), os.fstat(fd))
        except OSError:
            same = False
        if not same:
            raise _NoProc(
                f"cannot load {path} through its checked descriptor: {by_fd} does not lead "
                "to it (is /proc mounted?)"
            )
        lib = ctypes.CDLL(by_fd)
    except OSError as e:
        os.close(fd)
        raise _Refused(f"kernel library {path} could not be loaded: {e}") from None
    except BaseException:
        os.close(fd)
        raise
    try:
        fns = [getattr(lib, name) for name in _SYMBOLS]
    except AttributeError as e:
        raise _Refused(f"kernel library {path} could not be loaded: {e}") from None
    for fn in fns:
        fn.argtypes = [ctypes.c_void_p] * 5 + [ctypes.c_int] * 4
        fn.restype = None
    return lib


def _remove_stale(dir_fd: int, age_s: float = 3600.0) -> None:
    """Remove temporary files of builds that were killed (older than ``age_s``)."""
    now = time.time()
    with os.scandir(dir_fd) as entries:
        for entry in entries:
            if not (entry.name.startswith(".skinny-") and entry.name.endswith(".tmp")):
                continue
            with contextlib.suppress(OSError):
                st = entry.stat(follow_symlinks=False)
                if stat.S_ISREG(st.st_mode) and now - st.st_mtime > age_s:
                    os.unlink(entry.name, dir_fd=dir_fd)


def _build(cc: list[str], dir_fd: int, folder: Path, name: str) -> Any:
    """Compile into a temporary file in the folder, check and load it, then rename it to
    ``name``; returns the loaded library."""
    _remove_stale(dir_fd)
    tmp = f".{name}.{secrets.token_hex(8)}.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC
    try:
        os.close(os.open(tmp, flags, 0o600, dir_fd=dir_fd))
    except OSError as e:
        raise _Refused(f"cannot write into kernel folder {folder}: {e.strerror}") from None
    command = shlex.join(cc)
    try:
        try:
            proc = subprocess.run(
                [*cc, *_FLAGS, "-o", str(folder / tmp), str(_SOURCE)],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=300,
            )
        except (OSError, subprocess.SubprocessError) as e:
            raise _Refused(f"build failed: {command} could not be run: {e}") from None
        if proc.returncode != 0:
            detail = proc.stderr.strip()[-500:] or "no output"
            raise _Refused(
                f"build failed: {command} exited with status {proc.returncode}: {detail}"
            )
        try:
            fd = os.open(tmp, _OPEN_FILE, dir_fd=dir_fd)
        except OSError as e:
            raise _Refused(f"build failed ({command}): cannot open its output: {e}") from None
        try:
            os.fchmod(fd, 0o500)  # the linker may have made the file anew with the umask's mode
            os.fsync(fd)
        except OSError:
            os.close(fd)
            raise
        try:
            lib = _load_fd(fd, folder / tmp)
        except _Refused as e:
            raise _Refused(f"build failed ({command}): {e}") from None
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        return lib
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=dir_fd)


def _find_or_build() -> tuple[Any, Path]:
    if os.environ.get("ATTNKIT_NATIVE", "1").strip().lower() in ("0", "false", "no", "off"):
        raise _Refused("disabled by ATTNKIT_NATIVE=0")
    if platform.system() != "Linux" or platform.machine().lower() not in ("x86_64", "amd64"):
        raise _Refused(
            f"needs Linux on x86-64 (this is {platform.system()} on {platform.machine()})"
        )
    missing = {"avx2", "fma"} - cpu_flags()
    if missing:
        raise _Refused(f"this CPU lacks {', '.join(sorted(missing))} (needs AVX2 and FMA)")
    cc = _compiler()
    name = _library_name(cc)
    dir_fd, folder = _open_any_folder()
    path = folder / name
    try:
        try:
            fd = os.open(name, _OPEN_FILE, dir_fd=dir_fd)
        except FileNotFoundError:
            return _build(cc, dir_fd, folder, name), path
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.EMLINK):  # O_NOFOLLOW met a symlink
                raise _Refused(
                    f"kernel library {path} is a symlink; expected a regular file "
                    "(remove it to rebuild)"
                ) from None
            raise _Refused(f"cannot open kernel library {path}: {e.strerror}") from None
        try:
            return _load_fd(fd, path), path
        except _NoProc:
            raise
        except _Refused as e:  # the file is at fault
            raise _Refused(f"{e} (remove it to rebuild)") from None
    finally:
        os.close(dir_fd)


def _load() -> Any:
    """The loaded library, or None; the first call builds or loads it."""
    global _state
    with _lock:
        if _state is None:
            try:
                lib, path = _find_or_build()
            except (_Refused, OSError) as e:
                reason = str(e) if isinstance(e, _Refused) else f"cannot build or load it: {e}"
                log.info("native kernel not used: %s", reason)
                _state = (None, NativeStatus(False, reason))
            else:
                _state = (lib, NativeStatus(True, f"ready ({path})", path))
        return _state[0]


def available() -> bool:
    """True when the native kernel is built and loaded (building it on first call).

    The first call may run the C compiler; later calls return the remembered answer.

    Examples:
        >>> available()  # False where status() gives a reason, e.g. ATTNKIT_NATIVE=0
    """
    return _load() is not None


def status() -> NativeStatus:
    """Whether the native kernel is in use and why (building it on first call).

    Examples:
        >>> print(status())  # "ready (<library path>)", or why not
    """
    _load()
    with _lock:
        assert _state is not None
        return _state[1]


def library() -> Any:
    """The loaded kernel library (a :class:`ctypes.CDLL`), or ``None`` when it cannot be had
    (:func:`status` says why). Its entry points are ``attnkit_skinny_linear_f32``, ``_bf16``
    and ``_i8``; :class:`attnkit.native.skinny.SkinnyLinear` is the way to call them.

    Examples:
        >>> lib = library()  # None when available() is False
    """
    return _load()
