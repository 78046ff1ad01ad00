"""Building and loading the native kernel safely (attnkit.native.build): every unsafe folder or
file, a missing or failing compiler and a CPU without AVX2 fall back to PyTorch, with
``status()`` saying why, and the fallback's products match float64.

Every test builds into its own temporary kernel folder (``ATTNKIT_KERNEL_DIR``), never the
user's cache; the process's own kernel state is restored after each test. Ownership: as root a
folder or file is really given to another uid with chown; as another user (who cannot give files
away) fstat reports another owner for that one inode.
"""

import os
import re
import shutil
import stat
import subprocess
import threading
import time
from pathlib import Path

import pytest
import torch
from test_native import needs_kernel

from attnkit import native as kernels
from attnkit._util.fs import cache_dir
from attnkit.native import build
from attnkit.native.int8 import Int8Linear
from attnkit.native.linear import DecodingLinear, decoding_linears

FOREIGN_UID = 4242


@pytest.fixture
def folder(tmp_path, monkeypatch):
    """The kernel folder of a first load from a clean state (not created yet)."""
    monkeypatch.setattr(build, "_state", None)
    monkeypatch.delenv("ATTNKIT_NATIVE", raising=False)
    path = tmp_path / "kernels"
    monkeypatch.setenv("ATTNKIT_KERNEL_DIR", str(path))
    return path


@pytest.fixture
def x86_linux(monkeypatch):
    """This machine as the kernel needs it, whatever it is: Linux, x86-64, AVX2 and FMA."""
    monkeypatch.setattr(build.platform, "system", lambda: "Linux")
    monkeypatch.setattr(build.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(build, "cpu_flags", lambda: frozenset({"avx2", "fma", "sse2"}))


@pytest.fixture(scope="module")
def library(tmp_path_factory) -> Path:
    """A library compiled once from skinny.c into a temporary folder (tests copy it)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ATTNKIT_KERNEL_DIR", str(tmp_path_factory.mktemp("built") / "kernels"))
        mp.delenv("ATTNKIT_NATIVE", raising=False)
        mp.setattr(build, "_state", None)
        st = build.status()
    assert st.available and st.library is not None, st.reason
    return st.library


def _private_dir(path: Path) -> Path:
    path.mkdir(mode=0o700)
    os.chmod(path, 0o700)  # whatever the umask
    return path


def _seed(folder: Path, library: Path) -> Path:
    """A private folder holding a good copy of the library under the name it is looked up by."""
    if not folder.exists():
        _private_dir(folder)
    copy = folder / library.name
    shutil.copyfile(library, copy)
    os.chmod(copy, 0o500)
    return copy


def _give_away(path: Path, monkeypatch) -> None:
    """Make ``path`` belong to uid FOREIGN_UID (see the module docstring)."""
    if os.getuid() == 0:
        os.chown(path, FOREIGN_UID, FOREIGN_UID, follow_symlinks=False)
        return
    target = os.lstat(path)
    real_fstat = os.fstat

    def fstat(fd):
        st = real_fstat(fd)
        if (st.st_dev, st.st_ino) != (target.st_dev, target.st_ino):
            return st
        fields = list(st[:10])
        fields[4] = FOREIGN_UID
        return os.stat_result(fields)

    monkeypatch.setattr(os, "fstat", fstat)


def _product_tol(x, w) -> float:
    """float32 sums of K products: the error grows like sqrt(K) * eps * |terms|."""
    terms = x.detach().double().abs() @ w.detach().double().abs().T
    return 2e-6 * x.shape[-1] ** 0.5 * float(terms.max())


def _assert_falls_back(pattern: str) -> None:
    """The kernel is not used, status() says why (``pattern``), and a decoding linear still
    computes the float64 product through PyTorch."""
    st = kernels.status()
    assert re.search(pattern, st.reason), st.reason
    assert st.available is False and st.library is None and str(st) == st.reason
    assert not kernels.available()
    x, w = torch.randn(3, 16), torch.randn(8, 16)
    assert kernels.skinny_linear(x, w) is None and kernels.SkinnyLinear.create(w) is None
    lin = torch.nn.Linear(16, 8)
    layer = DecodingLinear(lin)
    assert layer.native is None
    with torch.no_grad():
        got = layer(x)
    ref = x.double() @ lin.weight.double().T + lin.bias.double()
    assert (got.double() - ref).abs().max().item() <= _product_tol(x, lin.weight)


def _assert_kernel_runs() -> None:
    """status() is ready and the loaded kernel's product matches float64."""
    st = kernels.status()
    assert st.available, st.reason
    x, w = torch.randn(5, 96), torch.randn(33, 96)
    got = kernels.skinny_linear(x, w)
    assert got is not None
    assert (got.double() - x.double() @ w.double().T).abs().max().item() <= _product_tol(x, w)


def test_kernel_dir_is_the_variable_else_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ATTNKIT_KERNEL_DIR", str(tmp_path / "k"))
    assert kernels.kernel_dir() == tmp_path / "k"
    monkeypatch.delenv("ATTNKIT_KERNEL_DIR")
    monkeypatch.setenv("ATTNKIT_CACHE", str(tmp_path / "cache"))
    assert kernels.kernel_dir() == tmp_path / "cache" / "kernels"


def test_the_test_run_never_builds_into_the_users_cache(monkeypatch):
    session_dir = Path(os.environ["ATTNKIT_KERNEL_DIR"])  # set for the whole run by conftest
    monkeypatch.delenv("ATTNKIT_KERNEL_DIR")
    assert not session_dir.resolve().is_relative_to(cache_dir().resolve())


@needs_kernel
def test_first_use_builds_into_a_private_folder_then_reuses_it(folder, monkeypatch):
    _assert_kernel_runs()
    st = kernels.status()
    assert st.library is not None and st.library.parent == folder
    assert st.reason == f"ready ({st.library})"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE(st.library.stat().st_mode) == 0o500
    assert os.listdir(folder) == [st.library.name]  # the temporary file was renamed
    # a second process-wide first load takes the cached library, compiling nothing
    monkeypatch.setattr(build, "_state", None)
    monkeypatch.setattr(build.subprocess, "run", lambda *a, **k: pytest.fail("compiled again"))
    _assert_kernel_runs()
    assert kernels.status().library == st.library


@needs_kernel
def test_foreign_owned_cache_folder_is_refused(folder, library, monkeypatch):
    _seed(folder, library)
    _give_away(folder, monkeypatch)
    _assert_falls_back(
        rf"^kernel folder {re.escape(str(folder))} is owned by uid {FOREIGN_UID}, "
        rf"not by this user \(uid {os.getuid()}\)"
    )


@needs_kernel
@pytest.mark.parametrize(
    "mode,who", [(0o777, "group and others"), (0o770, "group"), (0o703, "others")]
)
def test_group_or_world_writable_cache_folder_is_refused(folder, library, mode, who):
    _seed(folder, library)
    os.chmod(folder, mode)
    _assert_falls_back(
        rf"^kernel folder {re.escape(str(folder))} has mode {mode:04o}, writable by {who}; "
        "expected no group or world write permission"
    )


@needs_kernel
def test_symlinked_cache_folder_is_refused(folder, library, tmp_path):
    _seed(tmp_path / "elsewhere", library)
    folder.symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    _assert_falls_back(rf"^kernel folder {re.escape(str(folder))} is a symlink")


@needs_kernel
def test_symlinked_library_is_refused(folder, library, tmp_path):
    good = _seed(tmp_path / "elsewhere", library)
    (_private_dir(folder) / library.name).symlink_to(good)
    _assert_falls_back(
        rf"^kernel library {re.escape(str(folder / library.name))} is a symlink; "
        r"expected a regular file \(remove it to rebuild\)"
    )


@needs_kernel
def test_foreign_owned_library_is_refused(folder, library, monkeypatch):
    _give_away(_seed(folder, library), monkeypatch)
    _assert_falls_back(
        rf"^kernel library {re.escape(str(folder / library.name))} is owned by uid "
        rf"{FOREIGN_UID}, not by this user .*\(remove it to rebuild\)$"
    )


@needs_kernel
@pytest.mark.parametrize("mode", [0o666, 0o720, 0o702])
def test_group_or_world_writable_library_is_refused(folder, library, mode):
    os.chmod(_seed(folder, library), mode)
    _assert_falls_back(
        rf"^kernel library {re.escape(str(folder / library.name))} has mode {mode:04o}"
    )


@needs_kernel
def test_a_fifo_in_place_of_the_library_is_refused_without_blocking(folder, library):
    os.mkfifo(_private_dir(folder) / library.name, 0o600)
    _assert_falls_back(r"is not a regular file \(remove it to rebuild\)$")


@needs_kernel
def test_a_name_swapped_between_check_and_load_loads_the_checked_file(folder, library, monkeypatch):
    """The library's name is swapped for a file that is no library right after its descriptor
    passed the checks: loading through the descriptor still loads the checked file (a load by
    name would fail on the swapped-in one)."""
    path = _seed(folder, library)
    junk = folder / "junk"
    junk.write_bytes(b"\x7fELF but not a library")
    real_check = build._check
    swaps = []

    def check_then_swap(fd, where, what, *rest):
        real_check(fd, where, what, *rest)
        if what == "kernel library":
            os.replace(junk, path)
            swaps.append(where)

    monkeypatch.setattr(build, "_check", check_then_swap)
    _assert_kernel_runs()
    assert swaps == [path] and kernels.status().library == path
    assert path.read_bytes() == b"\x7fELF but not a library"


@needs_kernel
def test_a_library_swapped_after_compile_is_refused_and_rebuilt_once_removed(
    folder, library, monkeypatch
):
    path = _seed(folder, library)
    swapped = folder / "swapped"
    swapped.write_bytes(b"not a shared object")
    os.chmod(swapped, 0o500)
    os.replace(swapped, path)
    _assert_falls_back(
        rf"^kernel library {re.escape(str(path))} could not be loaded: .*\(remove it to rebuild\)$"
    )
    path.unlink()
    monkeypatch.setattr(build, "_state", None)
    _assert_kernel_runs()
    assert kernels.status().library == path and path.read_bytes() == library.read_bytes()


@needs_kernel
def test_a_library_without_the_kernels_symbols_is_refused(folder, library, tmp_path):
    source = tmp_path / "other.c"
    source.write_text("int attnkit_something_else(void) { return 1; }\n")
    path = _private_dir(folder) / library.name
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(path), str(source)], check=True)
    os.chmod(path, 0o500)
    _assert_falls_back(
        rf"^kernel library {re.escape(str(path))} could not be loaded: .*"
        r"undefined symbol: attnkit_skinny_linear_f32 \(remove it to rebuild\)$"
    )


@needs_kernel
def test_a_build_output_replaced_by_a_symlink_is_refused(folder, library, monkeypatch):
    def compile_then_swap(argv, **kwargs):
        out = Path(argv[argv.index("-o") + 1])
        out.unlink()
        out.symlink_to(library)
        return subprocess.CompletedProcess(argv, 0, "", "")

    monkeypatch.setattr(build.subprocess, "run", compile_then_swap)
    _assert_falls_back(r"^build failed \(.*\): cannot open its output: .*symbolic links")
    assert os.listdir(folder) == []


def test_cc_false_is_a_failed_build_that_leaves_nothing_behind(folder, x86_linux, monkeypatch):
    monkeypatch.setenv("CC", "/bin/false")
    _assert_falls_back(r"^build failed: /bin/false exited with status 1: no output$")
    assert os.listdir(folder) == []


def test_a_build_removes_the_temporary_files_of_killed_builds(folder, x86_linux, monkeypatch):
    monkeypatch.setenv("CC", "/bin/false")
    _private_dir(folder)
    old, recent, other = (
        folder / n for n in (".skinny-a.so.1.tmp", ".skinny-b.so.2.tmp", ".x.tmp")
    )
    for path in (old, recent, other):
        path.write_bytes(b"partial")
    two_hours_ago = time.time() - 7200
    for path in (old, other):
        os.utime(path, (two_hours_ago, two_hours_ago))
    _assert_falls_back(r"^build failed: /bin/false")
    assert sorted(os.listdir(folder)) == [recent.name, other.name]  # a build may be running


@needs_kernel
def test_concurrent_first_builds_leave_one_library(folder):
    """Two builds at once (the in-process lock bypassed, as for two processes): both load,
    and the folder holds one library and no temporary file."""
    start = threading.Barrier(2)
    results = []

    def first_load():
        start.wait()
        results.append(build._find_or_build())

    threads = [threading.Thread(target=first_load) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 2 and results[0][1] == results[1][1]
    path = results[0][1]
    assert os.listdir(folder) == [path.name]
    for lib, _ in results:
        x, w = torch.randn(2, 8), torch.randn(3, 8)
        y = torch.empty(2, 3)
        lib.attnkit_skinny_linear_f32(
            x.data_ptr(), w.data_ptr(), None, None, y.data_ptr(), 2, 3, 8, 1
        )
        assert (y.double() - x.double() @ w.double().T).abs().max().item() <= _product_tol(x, w)


def test_a_compiler_that_makes_no_library_leaves_nothing_behind(folder, x86_linux, monkeypatch):
    monkeypatch.setenv("CC", "/bin/true")
    _assert_falls_back(
        r"^build failed \(/bin/true\): kernel library .*\.tmp could not be loaded: .*too short"
    )
    assert os.listdir(folder) == []


def test_cc_naming_a_missing_file_means_no_compiler(folder, x86_linux, monkeypatch, tmp_path):
    missing = tmp_path / "bin" / "cc"
    monkeypatch.setenv("CC", str(missing))
    _assert_falls_back(rf"^no C compiler: CC='{re.escape(str(missing))}' is not an executable")
    assert not folder.exists()


def test_cc_that_cannot_be_split_means_no_compiler(folder, x86_linux, monkeypatch):
    monkeypatch.setenv("CC", "gcc '-O2")
    _assert_falls_back(r"^no C compiler: CC=\"gcc '-O2\" cannot be split into words")


def test_no_compiler_on_path_means_no_compiler(folder, x86_linux, monkeypatch, tmp_path):
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setenv("PATH", str(_private_dir(tmp_path / "empty-bin")))
    _assert_falls_back(r"^no C compiler: \$CC is not set and neither cc nor gcc is on PATH$")
    assert not folder.exists()


@pytest.mark.parametrize(
    "flags,missing", [({"fma", "sse2"}, "avx2"), ({"sse2"}, "avx2, fma"), ({"avx2"}, "fma")]
)
def test_a_cpu_without_avx2_or_fma_is_not_built_for(folder, x86_linux, monkeypatch, flags, missing):
    monkeypatch.setattr(build, "cpu_flags", lambda: frozenset(flags))
    _assert_falls_back(rf"^this CPU lacks {missing} \(needs AVX2 and FMA\)$")
    assert not folder.exists()


def test_other_platforms_are_not_built_for(folder, monkeypatch):
    monkeypatch.setattr(build.platform, "system", lambda: "Darwin")
    monkeypatch.setattr(build.platform, "machine", lambda: "arm64")
    _assert_falls_back(r"^needs Linux on x86-64 \(this is Darwin on arm64\)$")


@needs_kernel
def test_without_proc_self_fd_the_library_is_not_loaded(folder, library, monkeypatch):
    """Nothing ties a load by name to the checked file, so none is made."""
    path = _seed(folder, library)
    real_stat = os.stat

    def stat_without_proc(p, *args, **kwargs):
        if str(p).startswith("/proc/self/fd/"):
            raise FileNotFoundError(2, "No such file or directory", str(p))
        return real_stat(p, *args, **kwargs)

    monkeypatch.setattr(os, "stat", stat_without_proc)
    _assert_falls_back(
        rf"^cannot load {re.escape(str(path))} through its checked descriptor: "
        r"/proc/self/fd/\d+ does not lead to it \(is /proc mounted\?\)$"
    )


def test_a_kernel_folder_that_cannot_be_created_is_reported(folder, x86_linux, monkeypatch):
    blocker = folder.parent / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("ATTNKIT_KERNEL_DIR", str(blocker / "kernels"))
    _assert_falls_back(
        rf"^cannot create a folder for the compiled kernel \({re.escape(str(blocker))}/kernels: "
        rf"\[Errno 17\] File exists: '{re.escape(str(blocker))}'\)$"
    )


@needs_kernel
def test_a_cache_that_cannot_be_created_falls_back_to_a_private_temporary_folder(
    folder, library, monkeypatch, tmp_path
):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.delenv("ATTNKIT_KERNEL_DIR")
    monkeypatch.setenv("ATTNKIT_CACHE", str(blocker / "cache"))
    monkeypatch.setattr(build.tempfile, "tempdir", str(_private_dir(tmp_path / "tmp")))
    private = tmp_path / "tmp" / f"attnkit-kernels-{os.getuid()}"
    _seed(private, library)
    _assert_kernel_runs()
    assert kernels.status().library == private / library.name
    # a temporary folder someone else made first is refused, not used
    monkeypatch.setattr(build, "_state", None)
    os.chmod(private, 0o777)
    _assert_falls_back(rf"^kernel folder {re.escape(str(private))} has mode 0777")


def test_the_pytorch_fallback_matches_float64(folder, x86_linux, monkeypatch):
    """With the kernel refused, the decoding linears (float32 and bfloat16 weights, every row
    count, with and without packing) and Int8Linear compute their products through PyTorch,
    within the float rounding of the float64 product."""
    monkeypatch.setattr(build, "cpu_flags", lambda: frozenset({"sse2"}))
    assert not kernels.available()
    torch.manual_seed(0)
    K = 96
    f32 = torch.nn.Linear(K, 40)
    bf16 = torch.nn.Linear(K, 24).to(torch.bfloat16)
    int8 = Int8Linear(torch.nn.Linear(K, 32))
    assert int8._native() is None
    for pack in (False, True):
        model = torch.nn.Sequential(f32)
        with torch.no_grad(), decoding_linears(model, pack=pack):
            assert isinstance(model[0], DecodingLinear) and model[0].native is None
            for rows in (1, 3, 24, 40):
                x = torch.randn(rows, K)
                ref = x.double() @ f32.weight.double().T + f32.bias.double()
                err = (model(x).double() - ref).abs().max().item()
                assert err <= _product_tol(x, f32.weight), (pack, rows, err)
    with torch.no_grad(), decoding_linears(torch.nn.Sequential(bf16)) as model:
        for rows in (5, 130):
            x = torch.randn(1, rows, K).to(torch.bfloat16)
            got = model(x)
            assert got.dtype == torch.bfloat16 and got.shape == (1, rows, 24)
            ref = x.double() @ bf16.weight.double().T + bf16.bias.double()
            # float32 sums, then one rounding to bfloat16 (relative 2^-8)
            bound = 2**-8 * ref.abs() + _product_tol(x[0].float(), bf16.weight.float())
            assert ((got.double() - ref).abs() <= bound).all()
    with torch.no_grad():
        for rows in (3, 30):  # 3 rows would take the kernel if it were there
            x = torch.randn(rows, K)
            got = int8(x)
            # torch's path rounds activations and scales to bfloat16, sums in float32 and
            # rounds the product to bfloat16
            xb = x.to(torch.bfloat16).double()
            w = int8.weight.double() * int8.scale.double()[:, None]
            product = xb @ w.T
            ref = product + int8.bias.double()
            bound = 2**-8 * product.abs() + 2e-6 * K**0.5 * (xb.abs() @ w.abs().T) + 1e-6
            assert got.dtype == torch.float32 and ((got.double() - ref).abs() <= bound).all()
