"""The HTML attention viewer in headless Chromium: it loads offline, its views respond to the
mouse as described, and token text never runs as code."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from attnkit.inspect.html import write_viewer

pytestmark = pytest.mark.browser

EVIL = [
    "</script><script>alert(1)</script>",
    "<img src=x onerror=alert(1)>",
    '<img src=x onerror="window.__ran=1">',
    "\"double\" 'single'",
    "a & b &amp; &lt;",
    "x\u2028y\u2029z",
    "<b>bold</b>",
    "{{DATA}}",
]
WORDS = ["The", " cat", " sat", " on", " the", " mat", ".", " It", " was", " warm", "."]
TOKENS = EVIL + WORDS  # 19 tokens
LAYERS, HEADS = [0, 3, 5], [0, 1, 2, 3]


def _maps() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    t = len(TOKENS)
    return [torch.softmax(2.5 * torch.randn(len(HEADS), t, t, generator=g), dim=-1) for _ in LAYERS]


@pytest.fixture(scope="module")
def viewer(tmp_path_factory):
    """(path, weights, stats, rollout) of a viewer page of TOKENS."""
    weights = _maps()
    stats = [
        {
            "layer": layer,
            "head": head,
            "entropy": float(1 + 0.1 * i),
            "distance": float(10 - i),
            "labels": ["<img src=x onerror=alert(2)>"] if i == 0 else (["sink"] if i % 2 else []),
        }
        for i, (layer, head) in enumerate((layer, head) for layer in LAYERS for head in HEADS)
    ]
    roll = torch.softmax(3 * torch.randn(len(TOKENS), len(TOKENS)), -1)
    path = write_viewer(
        tmp_path_factory.mktemp("viewer") / "viewer.html",
        TOKENS,
        weights,
        LAYERS,
        HEADS,
        stats=stats,
        rollout=roll,
        title="</title><script>alert(3)</script> & title",
    )
    return path, weights, stats, roll


class Watch:
    """Everything a page does that a test must see: requests leaving the file, dialogs, errors."""

    def __init__(self) -> None:
        self.outside: list[str] = []
        self.dialogs: list[str] = []
        self.errors: list[str] = []


@pytest.fixture
def page(browser):
    """A fresh page whose every request is routed: file: goes through, anything else is aborted
    and recorded. The test fails if anything left the file, a dialog opened or a script raised."""
    context = browser.new_context(viewport={"width": 1200, "height": 700})
    watch = Watch()

    def route(r):
        if r.request.url.startswith("file:"):
            r.continue_()
        else:
            watch.outside.append(r.request.url)
            r.abort()

    context.route("**/*", route)
    p = context.new_page()
    p.on("dialog", lambda d: (watch.dialogs.append(d.message), d.dismiss()))
    p.on("pageerror", lambda e: watch.errors.append(str(e)))
    p.on("console", lambda m: watch.errors.append(m.text) if m.type == "error" else None)
    p.watch = watch
    yield p
    context.close()
    assert watch.dialogs == [], "a dialog was raised"
    assert watch.errors == [], "the page logged errors"
    assert watch.outside == [], "requests left the file"


def open_viewer(page, path) -> None:
    page.goto(path.as_uri())
    page.wait_for_selector("body[data-ready='1']", timeout=20_000)


def lines(page) -> list[tuple[int, int, float]]:
    """The highlighted lines of the head view: (from token, to token, weight)."""
    return page.eval_on_selector_all(
        "#overlay line.hl", "ls => ls.map(l => [+l.dataset.from, +l.dataset.to, +l.dataset.weight])"
    )


def kept_row(row: torch.Tensor, mass: float = 0.99, slack: float = 0.0) -> dict[int, float]:
    """What the page keeps of one row: its largest weights until they hold ``mass`` of it, less
    those under half a step of 1/255 of the row's largest (they round to nothing).

    ``slack`` widens (> 0) or narrows (< 0) that rounding cut, for weights right at it."""
    vals, idx = torch.sort(row.double(), descending=True)
    before = torch.cumsum(vals, 0) - vals
    keep = (before < mass * row.double().sum()) & (vals >= vals[0] / 510 * (1 - slack))
    return {int(j): float(v) for j, v in zip(idx[keep], vals[keep])}


def assert_row(got: list[tuple[int, int, float]], row: torch.Tensor, i: int) -> None:
    must, may = kept_row(row, slack=-1e-3), kept_row(row, slack=1e-3)
    assert {f for f, _, _ in got} == {i}
    shown = {t: w for _, t, w in got}
    assert must.keys() <= shown.keys() <= may.keys()
    top = float(row.max())
    for t, w in shown.items():
        assert abs(w - may[t]) <= top / 510 + 2e-5


# ------------------------------------------------------------------------------------ loading


def test_the_route_guard_sees_remote_requests(page):
    """The guard the other tests rely on: a remote load is caught (and aborted)."""
    page.set_content('<img src="http://example.invalid/pixel.png">')
    page.wait_for_timeout(200)
    assert page.watch.outside == ["http://example.invalid/pixel.png"]
    page.watch.outside.clear()
    page.watch.errors.clear()  # the aborted image logs a load error


def test_page_loads_offline_and_draws_the_first_head(page, viewer):
    path, weights, _, _ = viewer
    open_viewer(page, path)
    assert page.eval_on_selector("#head-view", "e => [e.dataset.layer, e.dataset.head]") == [
        "0",
        "0",
    ]
    assert page.get_attribute("#lines", "data-drawn") == "0:0"
    assert page.text_content("#note").startswith(f"{len(TOKENS)} tokens, 3 layers x 4 heads.")
    # the canvas has lines on it
    painted = page.evaluate("""() => { const c = document.getElementById("lines");
        const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
        let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++; return n; }""")
    assert painted > 1000
    # the policy is in force: a remote image added by script is refused before any request
    violated = page.evaluate("""() => new Promise(resolve => {
        document.addEventListener("securitypolicyviolation", e => resolve(e.violatedDirective));
        const img = document.createElement("img"); img.src = "https://example.com/x.png"; document.body.appendChild(img);
        setTimeout(() => resolve(null), 2000); })""")
    assert violated == "img-src"
    page.wait_for_timeout(100)
    page.watch.errors.clear()  # the refused load is logged as an error
    assert page.watch.outside == []


def test_untrusted_text_shows_as_text_and_never_runs(page, viewer):
    path, _, _, _ = viewer
    open_viewer(page, path)
    for col in ("#left .tok", "#right .tok"):
        assert page.eval_on_selector_all(col, "ts => ts.map(t => t.textContent)") == TOKENS
    assert page.text_content("#title") == "</title><script>alert(3)</script> & title"
    assert page.title() == "</title><script>alert(3)</script> & title"
    page.click("#tab-rollout")
    assert (
        page.eval_on_selector_all("#rollout-tokens .rt", "ts => ts.map(t => t.textContent)")
        == TOKENS
    )
    page.click("#tab-stats")
    assert (
        page.text_content("#stats-table tbody tr:first-child .chip")
        == "<img src=x onerror=alert(2)>"
    )
    page.click("#tab-head")
    page.hover("#left .tok >> nth=1")
    page.wait_for_timeout(100)
    assert page.evaluate("window.__ran") is None
    assert page.evaluate("document.querySelectorAll('img, b, iframe').length") == 0
    assert page.evaluate("document.scripts.length") == 2  # the data block and the viewer code
    assert page.watch.dialogs == []


# ----------------------------------------------------------------------------------- head view


def test_hovering_a_token_highlights_its_row(page, viewer):
    path, weights, _, _ = viewer
    open_viewer(page, path)
    assert lines(page) == []
    i = 10
    page.hover(f"#left .tok >> nth={i}")
    got = lines(page)
    assert_row(got, weights[0][0, i], i)
    assert page.eval_on_selector(f"#left .tok >> nth={i}", "e => e.classList.contains('active')")
    shaded = page.eval_on_selector_all(
        "#right .tok", "ts => ts.map(t => t.style.backgroundColor !== '')"
    )
    assert {j for j, s in enumerate(shaded) if s} == {t for _, t, _ in got}
    # another token, another row
    page.hover("#left .tok >> nth=3")
    assert_row(lines(page), weights[0][0, 3], 3)
    # a token on the right: every line ends at it, one from each row that keeps it
    j = 12
    page.hover(f"#right .tok >> nth={j}")
    got = lines(page)
    assert {t for _, t, _ in got} == {j}
    rows = {f for f, _, _ in got}
    assert {r for r in range(len(TOKENS)) if j in kept_row(weights[0][0, r], slack=-1e-3)} <= rows
    assert rows <= {r for r in range(len(TOKENS)) if j in kept_row(weights[0][0, r], slack=1e-3)}
    page.mouse.move(1190, 5)  # away from the tokens
    assert lines(page) == []


def test_clicking_a_head_changes_the_highlighted_lines(page, viewer):
    path, weights, _, _ = viewer
    open_viewer(page, path)
    i = 14
    page.click(f"#left .tok >> nth={i}")  # pin the row, so it stays when the mouse leaves
    page.mouse.move(1190, 5)
    first = lines(page)
    assert_row(first, weights[0][0, i], i)
    canvas0 = page.evaluate("document.getElementById('lines').toDataURL()")
    page.click("#heads button >> nth=2")
    second = lines(page)
    assert second != first
    assert_row(second, weights[0][2, i], i)
    assert page.get_attribute("#heads button >> nth=2", "aria-pressed") == "true"
    assert page.get_attribute("#heads button >> nth=0", "aria-pressed") == "false"
    assert page.get_attribute("#lines", "data-drawn") == "0:2"
    assert page.evaluate("document.getElementById('lines').toDataURL()") != canvas0
    # a new layer keeps the head and the pinned row
    page.select_option("#layer", "2")
    assert page.eval_on_selector("#head-view", "e => [e.dataset.layer, e.dataset.head]") == [
        "5",
        "2",
    ]
    assert_row(lines(page), weights[2][2, i], i)
    assert "Layer 5, head 2" in page.text_content("#head-info")
    page.keyboard.press("Escape")  # unpin
    assert lines(page) == []


def test_a_long_input_redraws_lines_as_the_page_scrolls(page, tmp_path):
    t = 300
    w = [torch.softmax(2 * torch.randn(2, t, t), -1)]
    path = write_viewer(tmp_path / "long.html", [f"w{i}" for i in range(t)], w, [0], [0, 1])
    open_viewer(page, path)
    assert page.get_attribute("#lines", "data-top") == "0"
    page.mouse.wheel(0, 3000)
    page.wait_for_function("() => +document.getElementById('lines').dataset.top > 1000")
    page.hover("#left .tok >> nth=250")
    assert_row(lines(page), w[0][0, 250], 250)


# --------------------------------------------------------------------------- the other views


def test_model_view_opens_a_head(page, viewer):
    path, weights, _, _ = viewer
    open_viewer(page, path)
    page.click("#tab-model")
    assert page.is_hidden("#sec-head")
    page.wait_for_function("() => document.getElementById('model-grid').dataset.drawn === '12'")
    thumbs = page.eval_on_selector_all(
        ".thumb", "ts => ts.map(t => t.dataset.layer + ':' + t.dataset.head)"
    )
    assert thumbs == [f"{layer}:{head}" for layer in LAYERS for head in HEADS]
    # each thumbnail shows its own map
    pictures = page.eval_on_selector_all(".thumb", "ts => ts.map(t => t.toDataURL())")
    assert len(set(pictures)) == 12
    page.click(".thumb[data-layer='3'][data-head='1']")
    assert page.is_visible("#sec-head") and page.is_hidden("#sec-model")
    assert page.eval_on_selector("#head-view", "e => [e.dataset.layer, e.dataset.head]") == [
        "3",
        "1",
    ]
    assert page.input_value("#layer") == "1"
    assert page.get_attribute("#heads button >> nth=1", "aria-pressed") == "true"
    page.hover("#left .tok >> nth=9")
    assert_row(lines(page), weights[1][1, 9], 9)


def test_statistics_table_sorts_and_opens_a_head(page, viewer):
    path, _, stats, _ = viewer
    open_viewer(page, path)
    page.click("#tab-stats")
    headers = page.eval_on_selector_all("#stats-table th", "ts => ts.map(t => t.textContent)")
    assert headers == ["layer", "head", "entropy", "distance", "labels"]
    rows = page.eval_on_selector_all(
        "#stats-table tbody tr", "rs => rs.map(r => [...r.cells].map(c => c.textContent))"
    )
    assert (
        len(rows) == 12
        and rows[0][:4] == ["0", "0", "1", "10"]
        and rows[1][:4] == ["0", "1", "1.10", "9"]
    )
    page.click("#stats-table th[data-col='distance']")
    col = page.eval_on_selector_all(
        "#stats-table tbody tr", "rs => rs.map(r => +r.cells[3].textContent)"
    )
    assert col == sorted(s["distance"] for s in stats)
    page.click("#stats-table th[data-col='distance']")  # again: descending
    col = page.eval_on_selector_all(
        "#stats-table tbody tr", "rs => rs.map(r => +r.cells[3].textContent)"
    )
    assert col == sorted((s["distance"] for s in stats), reverse=True)
    page.click("#stats-table tbody tr >> nth=0")  # largest distance: layer 0 head 0
    assert page.eval_on_selector("#head-view", "e => [e.dataset.layer, e.dataset.head]") == [
        "0",
        "0",
    ]
    assert page.is_visible("#sec-head")


def test_rollout_shades_tokens_by_the_hovered_row(page, viewer):
    path, _, _, roll = viewer
    open_viewer(page, path)
    page.click("#tab-rollout")

    def alphas() -> np.ndarray:
        colours = page.eval_on_selector_all(
            "#rollout-tokens .rt", "ts => ts.map(t => t.style.backgroundColor)"
        )
        return np.array(
            [float(c.rstrip(")").split(",")[3]) if c.count(",") == 3 else 1.0 for c in colours]
        )

    mean = roll.mean(0).numpy()
    np.testing.assert_allclose(alphas(), 0.85 * mean / mean.max(), atol=0.01)
    page.hover("#rollout-tokens .rt >> nth=11")
    row = roll[11].numpy()
    np.testing.assert_allclose(alphas(), 0.85 * row / row.max(), atol=0.01)
    assert page.get_attribute("#rollout-tokens", "data-token") == "11"


# ------------------------------------------------------------------------------------- bench


def test_bench_viewer_quick_run(browser, tmp_path, capsys):
    from attnkit.bench import viewer as bench_viewer

    settings = bench_viewer.ViewerSettings(quick=True, out=tmp_path)
    report = bench_viewer.run(settings, browser=browser)  # this session's Chromium
    printed = report.text
    for row in (
        "file size",
        "first head view drawn",
        "head switch, new map (median)",
        "< 100 ms",
        "< 2 s",
    ):
        assert row in printed
    data = json.loads((tmp_path / "viewer.json").read_text())
    assert data["size_bytes"] == (tmp_path / "viewer.html").stat().st_size
    b = data["browser"]
    assert len(b["switch_times_cold"]) == 5 and all(x > 0 for x in b["switch_times_cold"])
    assert len(set(b["switched_to"])) == 5  # five different maps shown
    assert b["head_view_ms"] > 0 and b["thumbnails"] == 8
    assert set(data["met"]) == {"size", "head_view", "switch"}
