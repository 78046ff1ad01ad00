"""The rules of the house (DESIGN.md), checked by reading the package's source.

* the library knows no command line: no argparse or ``attnkit.cli`` import outside ``cli/``,
  no ``print(`` outside ``cli/``, no ``matplotlib.use(``;
* metadata is declared: no ``getattr(model, "tokenizer" | "extra_config" | "source", ...)``;
* one seam for attention: no ``scaled_dot_product_attention(`` outside ``attention/backends/``;
* imports are absolute;
* floors: a module imports only from its own package or from floors below it.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "attnkit"

# DESIGN rule 4: _util < attention, positional < models < checkpoints < text <
# training, generation, tasks, inspect, surgery < bench, evaluation, serve < cli; native
# sits on _util alone.
# One refinement: positional sits below attention, since the attention layer applies RoPE and
# ALiBi (it takes positions from positional, which imports nothing of attnkit's).
FLOORS = {
    "_util": 0,
    "native": 1,
    "positional": 1,
    "attention": 2,
    "models": 3,
    "checkpoints": 4,
    "text": 5,
    "training": 6,
    "generation": 6,
    "tasks": 6,
    "inspect": 6,
    "surgery": 6,
    "bench": 7,
    "evaluation": 7,  # scores of a trained model: on models, text, tasks and training
    "serve": 7,  # the HTTP server: on models, tasks, generation and text
    "experiments": 7,  # sweeps: on training, models, attention and bench's tables and probes
    "cli": 8,
}
# what a package on a floor may import besides the floors below it
ALSO_ALLOWED = {
    "native": set(),  # on _util alone (checked below)
    # fine-tuning runs on the training package's optimizer, schedule, precision and devices
    "tasks": {"training"},
    # an encoder-decoder run decodes held-out sources at each evaluation (BLEU, chrF)
    "training": {"generation"},
    # a sweep's tables and its peak-memory probe are bench's (one implementation per job)
    "experiments": {"bench"},
}
FACADE = {"__init__.py", "__main__.py"}  # attnkit/__init__.py (lazy public names), python -m


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def rel(path: Path) -> str:
    return path.relative_to(PACKAGE).as_posix()


def area(path: Path) -> str:
    """The top-level package (or module) of ``attnkit`` that ``path`` belongs to."""
    first = path.relative_to(PACKAGE).parts[0]
    return first[:-3] if first.endswith(".py") else first


def in_cli(path: Path) -> bool:
    return rel(path).startswith("cli/")


def source_lines(path: Path) -> Iterator[tuple[int, str]]:
    """Lines of code with comments and string contents blanked (so prose does not match)."""
    text = path.read_text(encoding="utf-8")
    tree = ast.parse(text)
    blank: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            end = node.end_lineno or node.lineno
            if end > node.lineno:  # a docstring or other multi-line string
                blank.update(range(node.lineno, end + 1))
    for n, line in enumerate(text.splitlines(), 1):
        if n in blank:
            continue
        code = re.sub(r"""("[^"]*"|'[^']*')""", '""', line.split("#", 1)[0])
        yield n, code


def imports(path: Path) -> Iterator[tuple[int, str, int]]:
    """(line, module, level) of every import in ``path``, lazy ones included."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, 0
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            yield node.lineno, base, node.level
            if base in ("attnkit",):  # from attnkit import cli, models, ...
                for alias in node.names:
                    yield node.lineno, f"attnkit.{alias.name}", 0


def findings(check) -> list[str]:
    out = []
    for path in modules():
        out.extend(f"{rel(path)}:{line}: {what}" for line, what in check(path))
    return out


def assert_none(found: list[str], rule: str) -> None:
    assert not found, f"{rule}; found {len(found)}:\n" + "\n".join(found)


# ------------------------------------------------------------------------------------------


def test_the_package_is_there():
    assert (PACKAGE / "cli" / "__init__.py").is_file() and len(modules()) > 40


def test_no_argparse_or_cli_import_outside_cli():
    def check(path: Path):
        if in_cli(path) or rel(path) == "__main__.py":
            return
        for line, module, _ in imports(path):
            if module == "argparse" or module.startswith("argparse."):
                yield line, f"imports {module}"
            if module == "attnkit.cli" or module.startswith("attnkit.cli."):
                yield line, f"imports {module}"

    assert_none(findings(check), "the library imports neither argparse nor attnkit.cli")


def test_no_matplotlib_use():
    def check(path: Path):
        for line, code in source_lines(path):
            if re.search(r"\bmatplotlib\s*\.\s*use\s*\(", code) or "pyplot" in code:
                yield line, code.strip()

    assert_none(findings(check), "plots use matplotlib's Figure + Agg canvas, never use()/pyplot")


def test_no_getattr_for_model_metadata():
    pattern = re.compile(
        r"""getattr\(\s*[\w.]*model[\w.]*\s*,\s*["'](tokenizer|extra_config|source)["']"""
    )

    def check(path: Path):
        text = path.read_text(encoding="utf-8")
        for m in pattern.finditer(text):
            yield text.count("\n", 0, m.start()) + 1, m.group(0)

    assert_none(findings(check), "model metadata is model.meta, never getattr(model, ...)")


# The benchmarks time raw SDPA as the peer attnkit is compared with: calling it directly is
# their job, and no model, trainer or command runs attention through them.
SDPA_PEERS = ("bench/attention.py", "bench/variants.py")


def test_no_sdpa_call_outside_the_backends():
    def check(path: Path):
        if rel(path).startswith("attention/backends/") or rel(path) in SDPA_PEERS:
            return
        for line, code in source_lines(path):
            if "scaled_dot_product_attention(" in code:
                yield line, code.strip()

    assert_none(findings(check), "SDPA is called only in attention/backends/")


def test_no_print_in_the_library():
    def check(path: Path):
        if in_cli(path):
            return
        for line, code in source_lines(path):
            if re.search(r"(?<![\w.])print\s*\(", code):
                yield line, code.strip()

    assert_none(findings(check), "the library reports through logging and tqdm, never print")


def test_imports_are_absolute():
    def check(path: Path):
        for line, module, level in imports(path):
            if level:
                yield line, f"from {'.' * level}{module} import ..."

    assert_none(findings(check), "imports are absolute (from attnkit.x.y import z)")


def floor_violations(path: Path) -> Iterator[tuple[int, str]]:
    if rel(path) in FACADE:
        return
    mine = area(path)
    if mine not in FLOORS:
        yield 0, f"{mine!r} has no floor in DESIGN rule 4"
        return
    for line, module, _ in imports(path):
        parts = module.split(".")
        if parts[0] != "attnkit" or len(parts) < 2:
            continue
        theirs = parts[1]
        if theirs == mine or theirs == "__version__":
            continue
        if mine == "native":
            if theirs != "_util":
                yield line, f"native imports {module} (native sits on _util alone)"
            continue
        if theirs not in FLOORS:
            yield line, f"imports {module}, which has no floor"
        elif FLOORS[theirs] >= FLOORS[mine] and theirs not in ALSO_ALLOWED.get(mine, set()):
            yield line, (f"{mine} (floor {FLOORS[mine]}) imports {module} (floor {FLOORS[theirs]})")


def test_floors():
    assert_none(findings(floor_violations), "a module imports only from floors below it")


@pytest.mark.parametrize("name", sorted(FLOORS))
def test_every_floor_exists(name):
    assert (PACKAGE / name).is_dir() or (PACKAGE / f"{name}.py").is_file(), name


def test_the_public_names_are_all_listed():
    import attnkit

    assert set(attnkit.__all__) == {"__version__", *attnkit._LAZY}


def test_no_process_state_changed_outside_cli():
    pattern = re.compile(
        r"os\.environ\[[^\]]*\]\s*=(?!=)|os\.environ\.(setdefault|update|pop)\(|os\.putenv\(|"
        r"set_num_threads\(|set_num_interop_threads\(|mallopt\("
    )

    def check(path: Path):
        if in_cli(path):
            return
        for line, code in source_lines(path):
            if pattern.search(code):
                yield line, code.strip()

    assert_none(
        findings(check), "only cli/ sets environment variables, thread pools or malloc options"
    )
