"""Shared test set-up: every test starts from the same random state; the native kernel is
built into a temporary folder; under CI a skip of a test that must run (parity, browser,
native kernel) fails the run.

The number of torch threads is left as it is.
"""

import os
import random
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

SEED = 1234


def pytest_configure(config):
    """The native kernel compiles into a temporary folder for the run (subprocesses included),
    never into the user's cache, unless ``ATTNKIT_KERNEL_DIR`` already names one."""
    if not os.environ.get("ATTNKIT_KERNEL_DIR"):
        folder = tempfile.mkdtemp(prefix="attnkit-test-kernels-")
        os.environ["ATTNKIT_KERNEL_DIR"] = folder
        config.add_cleanup(lambda: shutil.rmtree(folder, ignore_errors=True))


# --------------------------------------------------------------------------------------------
# CI cannot pass by skipping
# --------------------------------------------------------------------------------------------
# With CI set (CI=true, as CI services and .ci/run set it), these tests must run: a skip of
# one (a missing reference library, Chromium, compiler or data file) is reported as a failure
# saying what was missing. Without CI, they skip as usual.
MUST_RUN_DIRS = {"parity": "parity test", "browser": "browser test"}
MUST_RUN_FILES = {"test_native.py": "native-kernel test", "test_kernels.py": "native-kernel test"}
MUST_RUN_MARKERS = {"browser": "browser test", "native": "native-kernel test"}


def in_ci() -> bool:
    """True when the CI environment variable says so (1, true, yes, on; any case)."""
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes", "on")


def must_run(path: Path, markers: frozenset[str] = frozenset()) -> str | None:
    """What kind of must-run test lives at ``path`` with ``markers`` ("parity test", ...),
    or None for a test that may skip."""
    for name in sorted(markers):
        if name in MUST_RUN_MARKERS:
            return MUST_RUN_MARKERS[name]
    parts = path.parts
    for i, part in enumerate(parts[:-1]):
        if part == "tests" and parts[i + 1] in MUST_RUN_DIRS:
            return MUST_RUN_DIRS[parts[i + 1]]
    return MUST_RUN_FILES.get(path.name)


def _skip_reason(longrepr: object) -> str:
    if isinstance(longrepr, tuple) and len(longrepr) == 3:  # (file, line, "Skipped: why")
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


HOW_TO_RUN = {
    "parity test": "pip install -c constraints.txt -e '.[test]' (the reference libraries) "
    "and ../shared/data (the test corpus)",
    "browser test": "apt-get install chromium, and the playwright package of the test extra",
    "native-kernel test": "a C compiler (cc) on an x86-64 CPU with AVX2/FMA, ATTNKIT_NATIVE not 0",
}


def _ci_failure(kind: str, where: str, reason: str) -> str:
    return (
        f"CI=true: {kind} {where} skipped ({reason}). {kind.capitalize()}s must run in CI; "
        f"they need {HOW_TO_RUN[kind]}. Without CI set the skip is allowed."
    )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if not (report.skipped and in_ci()) or hasattr(report, "wasxfail"):
        return
    kind = must_run(Path(str(item.path)), frozenset(m.name for m in item.iter_markers()))
    if kind is not None:
        report.outcome = "failed"
        report.longrepr = _ci_failure(kind, item.nodeid, _skip_reason(report.longrepr))


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    """A whole module skipped at import (``pytest.importorskip`` at its top) fails too."""
    outcome = yield
    report = outcome.get_result()
    if not (report.skipped and in_ci()):
        return
    kind = must_run(Path(str(collector.path)))
    if kind is not None:
        report.outcome = "failed"
        report.longrepr = _ci_failure(kind, collector.nodeid, _skip_reason(report.longrepr))


@pytest.fixture(autouse=True)
def seed() -> int:
    """Seed python, torch (and numpy, when installed) before each test; returns the seed."""
    random.seed(SEED)
    torch.manual_seed(SEED)
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy is a core dependency
        pass
    else:
        np.random.seed(SEED)
    return SEED


@pytest.fixture(scope="session")
def browser():
    """Headless Chromium (Debian's ``chromium`` on PATH) driven by playwright, one per session.

    Tests that use it are marked ``browser``; they skip, saying why, when Chromium or the
    playwright package is missing. ``playwright install`` is never used.
    """
    import shutil

    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("browser test: no `chromium` on PATH (Debian: apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip(
            "browser test: the playwright package is not installed (pip install playwright)"
        )
    with sync_playwright() as pw:
        b = pw.chromium.launch(
            executable_path=chromium, args=["--headless", "--no-sandbox", "--disable-gpu"]
        )
        try:
            yield b
        finally:
            b.close()
