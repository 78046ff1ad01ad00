"""Shared test set-up: every test starts from the same random state; the native kernel is
built into a temporary folder.

The number of torch threads is left as it is.
"""

import os
import random
import shutil
import tempfile

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
