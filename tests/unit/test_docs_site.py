"""The docs site: every public name has a `:::` block in docs/reference/, every page is in the
nav, the getting-started Python runs as written, and `mkdocs build --strict` passes with no
warning (the same build `make test` runs)."""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
MKDOCS = Path(sys.executable).with_name("mkdocs")

# The public surface: the package root and each public subpackage's __all__.
PUBLIC_MODULES = [
    "attnkit",
    "attnkit.attention",
    "attnkit.attention.variants",
    "attnkit.models",
    "attnkit.checkpoints",
    "attnkit.text",
    "attnkit.training",
    "attnkit.generation",
    "attnkit.tasks.classification",
    "attnkit.inspect",
    "attnkit.surgery",
]
# Public names that are classes or functions but live in modules without an __all__.
EXTRA_NAMES = [("attnkit.tasks.sentence", "Encoder")]


def reference_identifiers() -> set[str]:
    """Every identifier named by a `::: identifier` line under docs/reference/."""
    ids: set[str] = set()
    for page in (DOCS / "reference").glob("*.md"):
        for line in page.read_text(encoding="utf-8").splitlines():
            match = re.match(r"^:::\s+([\w.]+)\s*$", line)
            if match:
                ids.add(match.group(1))
    return ids


def public_names() -> list[tuple[str, str]]:
    names = []
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        for name in module.__all__:
            if not (name.startswith("__") and name.endswith("__")):
                names.append((module_name, name))
    return names + EXTRA_NAMES


def covered(module_name: str, name: str, ids: set[str]) -> bool:
    """A name is documented by a block of its own (under the name it is exported as or where it
    is defined) or by a block of a module whose members (its __all__) include it."""
    if f"{module_name}.{name}" in ids:
        return True
    if module_name in ids and module_name != "attnkit":  # a module block renders its __all__
        return True
    obj = getattr(importlib.import_module(module_name), name)
    if isinstance(obj, type(sys)):  # a subpackage exported by name
        return obj.__name__ in ids
    home = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", name)
    return f"{home}.{qualname}" in ids or home in ids


def rendered(module_name: str, name: str, anchors: set[str]) -> bool:
    obj = getattr(importlib.import_module(module_name), name)
    if isinstance(obj, type(sys)):
        return obj.__name__ in anchors
    home = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", name)
    return bool({f"{module_name}.{name}", f"{home}.{qualname}"} & anchors)


def test_every_public_name_has_a_reference_block():
    ids = reference_identifiers()
    names = public_names()
    assert len(names) > 100  # the collection found the real surface, not an empty list
    missing = [f"{m}.{n}" for m, n in names if not covered(m, n, ids)]
    assert missing == [], f"public names with no ::: block in docs/reference/: {missing}"


def test_an_undocumented_name_is_caught():
    # The check itself fails on a name nobody documented, and on a name whose module block is
    # removed from the reference.
    ids = reference_identifiers()
    assert not covered("attnkit.models", "GPT", ids - {"attnkit.models", "attnkit.models.gpt.GPT"})
    assert covered("attnkit.models", "GPT", ids)
    assert not covered("attnkit", "Encoder", ids - {"attnkit.tasks.sentence.Encoder"})


def nav_pages(node: object) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, list):
        return [page for item in node for page in nav_pages(item)]
    if isinstance(node, dict):
        return [page for value in node.values() for page in nav_pages(value)]
    raise TypeError(f"unexpected nav entry {node!r}")


def test_nav_lists_every_page_and_only_existing_ones():
    import yaml

    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    listed = nav_pages(config["nav"])
    assert len(listed) == len(set(listed)), "a page is listed twice in the nav"
    on_disk = sorted(p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md"))
    assert sorted(listed) == on_disk
    required = {"index.md", "getting-started.md", "benchmarks.md", "learn/from-scratch.md"}
    assert required <= set(listed)


def test_howto_guides_include_their_example_scripts():
    for page in sorted((DOCS / "howto").glob("*.md")):
        text = page.read_text(encoding="utf-8")
        includes = re.findall(r'--8<-- "(examples/[\w/]+\.py)"', text)
        assert includes, f"{page.name} includes no example script"
        for path in includes:
            assert (ROOT / path).is_file(), f"{page.name} includes {path}, which does not exist"


def test_getting_started_python_runs_as_written(tmp_path, capsys):
    import attnkit
    from attnkit.text import build_tokenizer

    text = (DOCS / "getting-started.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) == 1
    code = blocks[0]
    assert len(code.strip().splitlines()) == 5
    # The page loads make demo's run directory; stand a tiny char GPT in for it.
    corpus = "ROMEO: But soft, what light through yonder window breaks?"
    tokenizer = build_tokenizer("char", corpus, "getting-started", None, None)
    config = attnkit.get_preset("tiny").replace(vocab_size=tokenizer.get_vocab_size())
    run = tmp_path / "gpt-shakespeare-char"
    attnkit.save(attnkit.build_model(config), run, tokenizer=tokenizer)
    assert '"runs/gpt-shakespeare-char"' in code
    namespace: dict[str, object] = {}
    exec(
        compile(code.replace('"runs/gpt-shakespeare-char"', repr(str(run))), "page", "exec"),
        namespace,
    )
    printed = capsys.readouterr().out
    assert printed.startswith("ROMEO:")
    assert len(namespace["ids"]) == len("ROMEO:") + 100  # type: ignore[arg-type]
    vectors = namespace["vectors"]
    assert vectors.shape == (2, 384)  # type: ignore[attr-defined]
    norms = (vectors**2).sum(axis=1) ** 0.5  # type: ignore[operator]
    assert abs(norms - 1).max() < 1e-5


def test_mkdocs_build_strict_has_no_warnings(tmp_path):
    start = time.perf_counter()
    result = subprocess.run(
        [str(MKDOCS), "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    seconds = time.perf_counter() - start
    output = result.stdout + result.stderr
    warnings = [line for line in output.splitlines() if "WARNING" in line]
    assert result.returncode == 0 and warnings == [], f"mkdocs build --strict:\n{output}"
    # Every public name was rendered (a block that renders nothing for a name, as for an
    # __all__ the docs tooling cannot read, leaves it out): its heading anchor is in the site.
    anchors: set[str] = set()
    for page in (tmp_path / "site" / "reference").rglob("*.html"):
        anchors |= set(re.findall(r'id="(attnkit[\w.]*)"', page.read_text(encoding="utf-8")))
    unrendered = [f"{m}.{n}" for m, n in public_names() if not rendered(m, n, anchors)]
    assert unrendered == [], f"public names missing from the built reference: {unrendered}"
    print(f"mkdocs build --strict: {seconds:.1f} s, 0 warnings")
