"""Under CI=true a parity, browser or native-kernel test that skips fails the run
(tests/conftest.py); other tests still skip, and without CI everything skips as before.

Each case runs pytest (in this process, through pytester) on a small tree of tests that uses
a copy of that conftest."""

from __future__ import annotations

import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

CONFTEST = Path(__file__).resolve().parents[1] / "conftest.py"

SKIPS = """
import pytest

def test_skips():
    pytest.skip("reference library missing")

@pytest.mark.skipif(True, reason="no compiler")
def test_skipif():
    pass

def test_passes():
    pass
"""

MARKED = """
import pytest

@pytest.mark.native
def test_native_marked():
    pytest.skip("no AVX2")

@pytest.mark.browser
def test_browser_marked():
    pytest.skip("no chromium")

@pytest.mark.xfail(reason="known")
def test_xfail_is_not_a_skip():
    assert False
"""

MODULE_SKIP = """
import pytest

pytest.importorskip("a_module_that_does_not_exist_anywhere")

def test_never_collected():
    pass
"""


@pytest.fixture
def tree(pytester) -> Path:
    root = pytester.path / "tests"
    for folder in ("parity", "browser", "unit", "integration"):
        (root / folder).mkdir(parents=True)
    shutil.copy(CONFTEST, root / "conftest.py")
    (root / "parity" / "test_p.py").write_text(SKIPS)
    (root / "browser" / "test_b.py").write_text(SKIPS)
    (root / "unit" / "test_native.py").write_text(SKIPS)
    (root / "unit" / "test_other.py").write_text(SKIPS)
    (root / "unit" / "test_marked.py").write_text(MARKED)
    (root / "integration" / "test_i.py").write_text(SKIPS)
    (root / "parity" / "test_module_skip.py").write_text(MODULE_SKIP)
    (root / "unit" / "test_module_skip_ok.py").write_text(MODULE_SKIP)
    return root


def run(pytester, monkeypatch, ci: str | None) -> tuple[dict[str, str], str]:
    """Outcome per "file::test" ("passed", "failed", "error", "skipped" or "xfail", from
    pytest's JUnit XML) and pytest's output, for the whole tree with CI set to ``ci``."""
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    xml = pytester.path / "report.xml"
    result = pytester.runpytest_subprocess(
        "-p",
        "no:cacheprovider",
        "-q",
        "--continue-on-collection-errors",
        "-W",
        "ignore::pytest.PytestUnknownMarkWarning",
        f"--junitxml={xml}",
        *(str(pytester.path / "tests" / p) for p in ALL),
    )
    outcomes = {}
    for case in ET.parse(xml).getroot().iter("testcase"):
        if case.get("classname"):
            module = case.get("classname", "").removeprefix("tests.").replace(".", "/")
            key = f"{module}.py::{case.get('name')}"
        else:  # a module that was not collected: named by its dotted path alone
            key = case.get("name", "").removeprefix("tests.").replace(".", "/") + ".py"
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error"):
                outcome = "failed" if child.tag == "failure" else "error"
            elif child.tag == "skipped":
                outcome = "xfail" if child.get("type") == "pytest.xfail" else "skipped"
        outcomes[key] = outcome
    return outcomes, str(result.stdout) + str(result.stderr)


ALL = (
    "parity/test_p.py",
    "browser/test_b.py",
    "unit/test_native.py",
    "unit/test_other.py",
    "unit/test_marked.py",
    "integration/test_i.py",
    "parity/test_module_skip.py",
    "unit/test_module_skip_ok.py",
)


@pytest.fixture
def without_ci(tree, pytester, monkeypatch) -> tuple[dict[str, str], str]:
    return run(pytester, monkeypatch, None)


def test_under_ci_must_run_skips_fail_and_other_skips_stay(tree, pytester, monkeypatch):
    """One run of the whole tree with CI=true (one run: each costs pytest's start-up)."""
    got, out = run(pytester, monkeypatch, "true")
    # 3 must-run files x 3 tests + 2 other files x 3 + 3 marked tests + 2 modules
    assert len(got) == 20, got
    # a skip inside a must-run test fails it; a skipif mark fails at set-up (an error)
    for f in ("parity/test_p.py", "browser/test_b.py", "unit/test_native.py"):
        assert got[f"{f}::test_skips"] == "failed", (f, got, out)
        assert got[f"{f}::test_skipif"] == "error", (f, got, out)
        assert got[f"{f}::test_passes"] == "passed", (f, got, out)
    assert (
        "CI=true: parity test tests/parity/test_p.py::test_skips skipped (reference library "
        "missing). Parity tests must run in CI" in out
    ), out
    assert (
        "CI=true: native-kernel test tests/unit/test_native.py::test_skipif skipped (no "
        "compiler)" in out
    ), out
    assert "browser test tests/browser/test_b.py::test_skips skipped" in out
    # marked tests anywhere are must-run; an expected failure is not a skip
    assert got["unit/test_marked.py::test_native_marked"] == "failed", (got, out)
    assert got["unit/test_marked.py::test_browser_marked"] == "failed", (got, out)
    assert got["unit/test_marked.py::test_xfail_is_not_a_skip"] == "xfail", (got, out)
    assert (
        "native-kernel test tests/unit/test_marked.py::test_native_marked skipped (no AVX2)" in out
    )
    # other tests still skip
    for f in ("unit/test_other.py", "integration/test_i.py"):
        assert got[f"{f}::test_skips"] == "skipped", (got, out)
        assert got[f"{f}::test_skipif"] == "skipped", (got, out)
        assert got[f"{f}::test_passes"] == "passed", (got, out)
    # a parity module skipped at import is a collection error; another module still skips
    assert (
        "CI=true: parity test tests/parity/test_module_skip.py skipped (could not import "
        "'a_module_that_does_not_exist_anywhere'" in out
    ), out
    assert got["parity/test_module_skip.py"] == "error", got
    assert got["unit/test_module_skip_ok.py"] == "skipped", got


def test_without_ci_everything_skips(without_ci):
    got, out = without_ci
    for f in ("parity/test_p.py", "browser/test_b.py", "unit/test_native.py", "unit/test_other.py"):
        assert got[f"{f}::test_skips"] == "skipped", (got, out)
        assert got[f"{f}::test_skipif"] == "skipped", (got, out)
    assert got["unit/test_marked.py::test_native_marked"] == "skipped", (got, out)
    assert got["parity/test_module_skip.py"] == "skipped", (got, out)
    assert not any(v in ("failed", "error") for v in got.values()), (got, out)
    assert "CI=true" not in out


def test_ci_values(monkeypatch):
    import importlib.util

    spec = importlib.util.spec_from_file_location("tests_conftest", CONFTEST)
    assert spec is not None and spec.loader is not None
    conftest = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conftest)
    cases = {
        "true": True,
        "1": True,
        " Yes ": True,
        "ON": True,
        "false": False,
        "0": False,
        "": False,
    }
    for value, expected in cases.items():
        monkeypatch.setenv("CI", value)
        assert conftest.in_ci() is expected, value
    monkeypatch.delenv("CI")
    assert conftest.in_ci() is False
