"""Two attention viewers in one notebook page, in headless Chromium: each renders inside its
own iframe, and changing one leaves the other as it was; the page loads nothing remote."""

from __future__ import annotations

import re

import pytest
import torch

from attnkit.inspect.capture import AttentionMaps

pytestmark = pytest.mark.browser


def _maps(seed: int, tokens: list[str]) -> AttentionMaps:
    g = torch.Generator().manual_seed(seed)
    t = len(tokens)
    w = [torch.softmax(3 * torch.randn(1, 2, t, t, generator=g), -1) for _ in range(2)]
    return AttentionMaps(layers=[0, 4], heads=[0, 1], tokens=tokens, weights=w)


def _notebook_page(tmp_path) -> tuple:
    """Execute a two-cell notebook showing two maps; the page is the cells' text/html outputs
    in one document, as a notebook front-end puts them."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    setup = (
        "import torch\nfrom attnkit.inspect.capture import AttentionMaps\n"
        "def m(seed, toks):\n    g = torch.Generator().manual_seed(seed)\n    t = len(toks)\n"
        "    w = [torch.softmax(3 * torch.randn(1, 2, t, t, generator=g), -1) for _ in range(2)]\n"
        "    return AttentionMaps(layers=[0, 4], heads=[0, 1], tokens=toks, weights=w)\n"
    )
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell(setup),
        nbformat.v4.new_code_cell("m(1, ['the', 'cat', 'sat', 'down']).show(title='first')"),
        nbformat.v4.new_code_cell("m(2, ['a', 'bat', 'flew', 'out', 'tonight'])"),
    ]
    nbclient.NotebookClient(nb, timeout=120, kernel_name="python3").execute()
    frags = [
        o["data"]["text/html"]
        for c in nb.cells
        for o in c.outputs
        if "text/html" in o.get("data", {})
    ]
    assert len(frags) == 2
    body = "\n".join(f'<div class="output_html"><div id="title">{f}</div></div>' for f in frags)
    page = tmp_path / "notebook.html"
    page.write_text(
        f'<!DOCTYPE html><html><head><meta charset="utf-8"><style>select, h1, #title {{ color: red; font-size: 40px }}</style></head><body>{body}</body></html>',
        encoding="utf-8",
    )
    names = [re.match(r'<iframe id="([^"]+)"', f).group(1) for f in frags]
    return page, names


def test_two_viewers_in_one_notebook_page_work_independently(browser, tmp_path):
    page_path, names = _notebook_page(tmp_path)
    assert len(set(names)) == 2
    context = browser.new_context(viewport={"width": 1200, "height": 1600})
    outside: list[str] = []
    errors: list[str] = []

    def route(r):
        if r.request.url.startswith(("file:", "about:", "data:")):
            r.continue_()
        else:
            outside.append(r.request.url)
            r.abort()

    context.route("**/*", route)
    p = context.new_page()
    p.on("pageerror", lambda e: errors.append(str(e)))
    p.goto(page_path.as_uri())
    frames = []
    for name in names:
        # the iframe element, then its frame: a loaded machine may attach the srcdoc frame
        # after the page's own load event
        f = p.wait_for_selector(f'iframe[name="{name}"]', timeout=20_000).content_frame()
        assert f is not None, name
        f.wait_for_selector("body[data-ready='1']", timeout=20_000)
        frames.append(f)
    tokens = [
        f.eval_on_selector_all("#left > *", "els => els.map(e => e.textContent)") for f in frames
    ]
    assert [t for t in tokens[0] if t.strip()] == ["the", "cat", "sat", "down"]
    assert [t for t in tokens[1] if t.strip()] == ["a", "bat", "flew", "out", "tonight"]
    for f in frames:  # the notebook page's CSS does not reach into the viewer
        assert f.eval_on_selector("#title", "e => getComputedStyle(e).color") != "rgb(255, 0, 0)"
    before = [f.eval_on_selector("#layer", "s => s.value") for f in frames]
    info_b = frames[1].inner_text("#head-info")
    frames[0].select_option("#layer", index=1)
    after = [f.eval_on_selector("#layer", "s => s.value") for f in frames]
    assert after[0] != before[0] and after[1] == before[1]
    assert frames[1].inner_text("#head-info") == info_b
    context.close()
    assert outside == [] and errors == []
