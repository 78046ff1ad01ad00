"""The Jupyter display of attention maps: the viewer inside an <iframe srcdoc>, and the PNG
functions' Figures."""

from __future__ import annotations

import html
import re

import pytest
import torch

from attnkit.inspect.capture import AttentionMaps
from attnkit.inspect.display import viewer_iframe
from attnkit.inspect.html import render_viewer
from attnkit.inspect.stats import HeadStats, head_stats

TOKENS = ["he", " swung", " the", " bat", "<b>x</b>"]
LAYERS, HEADS = [0, 2], [0, 1, 3]


def _maps() -> AttentionMaps:
    g = torch.Generator().manual_seed(3)
    t = len(TOKENS)
    w = [torch.softmax(torch.randn(1, len(HEADS), t, t, generator=g), -1) for _ in LAYERS]
    return AttentionMaps(layers=LAYERS, heads=HEADS, tokens=TOKENS, weights=list(w))


def _srcdoc(fragment: str) -> str:
    m = re.fullmatch(r'<iframe id="([^"]+)" name="\1" [^>]*srcdoc="([^"]*)"></iframe>', fragment)
    assert m, fragment[:300]
    return html.unescape(m.group(2))


def test_repr_html_is_an_iframe_holding_the_viewer_with_its_csp():
    maps = _maps()
    frag = maps._repr_html_()
    assert frag.startswith("<iframe ") and frag.count("<iframe") == 1
    # the page is escaped: no raw tag of the viewer leaks into the notebook page
    assert "<script" not in frag and "<meta" not in frag
    page = _srcdoc(frag)
    rows = head_stats(maps.stacked(), TOKENS, LAYERS, HEADS)
    assert page == render_viewer(TOKENS, maps.stacked(), LAYERS, HEADS, stats=list(rows))
    assert re.search(r'<meta http-equiv="Content-Security-Policy" content="[^"]*script-src', page)
    assert "http://" not in page.replace("http://www.w3.org/2000/svg", "")
    assert "https://" not in page


def test_two_renders_have_distinct_ids():
    maps = _maps()
    ids = [re.match(r'<iframe id="([^"]+)"', maps._repr_html_()).group(1) for _ in range(3)]
    ids.append(re.match(r'<iframe id="([^"]+)"', viewer_iframe("<p>x</p>")).group(1))
    assert len(set(ids)) == 4


def test_head_stats_display_the_same_maps_with_their_table():
    maps = _maps()
    rows = head_stats(maps)
    assert isinstance(rows, HeadStats) and isinstance(rows, list)
    assert len(rows) == len(LAYERS) * len(HEADS) and rows[0]["layer"] == 0
    page = _srcdoc(rows._repr_html_())
    assert page == render_viewer(TOKENS, maps.stacked(), LAYERS, HEADS, stats=list(rows))
    with pytest.raises(ValueError, match="no maps"):
        HeadStats([{"layer": 0}]).viewer_page()


def test_show_displays_through_ipython(monkeypatch):
    pytest.importorskip("IPython")
    import IPython.display

    shown = []
    monkeypatch.setattr(IPython.display, "display", lambda obj: shown.append(obj))
    _maps().show(height=300)
    assert len(shown) == 1 and "height:300px" in shown[0].data
    assert _srcdoc(shown[0].data).startswith("<!DOCTYPE html>") or "<html" in _srcdoc(shown[0].data)


def test_viewer_iframe_refuses_bad_input():
    with pytest.raises(ValueError, match="page"):
        viewer_iframe("")
    with pytest.raises(ValueError, match="height"):
        viewer_iframe("<p>x</p>", height=10)


def test_png_functions_return_figures_and_still_write_files(tmp_path):
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    from attnkit.inspect import render

    w = _maps().stacked()[0]  # (H, T, T)
    fig = render.head_figure(w[1], TOKENS, title="h")
    assert isinstance(fig, Figure)
    im = fig.axes[0].images[0].get_array()
    assert torch.allclose(torch.as_tensor(im.data), w[1].float())
    lay = render.layer_figure(w, TOKENS, heads=HEADS)
    assert [a.get_title() for a in lay.axes] == [f"head {h}" for h in HEADS]
    assert isinstance(render.rollout_figure(w[0], TOKENS), Figure)
    p = render.plot_head(w[0], TOKENS, tmp_path / "h.png")
    assert p == tmp_path / "h.png" and p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
