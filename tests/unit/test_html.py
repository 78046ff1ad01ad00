"""The HTML attention viewer page: escaping, Content-Security-Policy, map encoding, size, errors."""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re

import numpy as np
import pytest
import torch

from attnkit.inspect.html import render_viewer, write_viewer

EVIL = [
    "</script><script>alert(1)</script>",
    "<img src=x onerror=alert(1)>",
    "\"q\" & 'q'",
    "a\u2028b\u2029c",
    "<!--",
    "&lt;&amp;",
    "{{DATA}}",
]


def sharp_maps(t: int, layers: int, heads: int, scale: float = 3.0) -> list[torch.Tensor]:
    return [torch.softmax(scale * torch.randn(heads, t, t), dim=-1) for _ in range(layers)]


def page_data(page: str) -> dict:
    m = re.search(r'<script type="application/json" id="attnkit-data">(.*?)</script>', page, re.S)
    assert m is not None, "no data block"
    return json.loads(m.group(1))


def decode(data: dict, key: int) -> tuple[np.ndarray, np.ndarray]:
    """(T, T) weights decoded from the page's map ``key``, and the per-row kept counts."""
    t = len(data["tokens"])
    raw = base64.b64decode(data["maps"][key])
    n = data["nnz"][key]
    assert len(raw) == 3 * t + 3 * n
    rowmax = np.frombuffer(raw, "<u2", t, 0)
    idx = np.frombuffer(raw, "<u2", n, 2 * t)
    counts = np.frombuffer(raw, np.uint8, t, 2 * (t + n))
    q = np.frombuffer(raw, np.uint8, n, 3 * t + 2 * n)
    out = np.zeros((t, t))
    starts = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])
    assert starts[-1] == n
    for i in range(t):
        s = slice(starts[i], starts[i + 1])
        out[i, idx[s]] = q[s] / 255 * rowmax[i] / 65535
    return out, counts.astype(int)


# ------------------------------------------------------------------------------------- safety


def test_tokens_cannot_break_out_of_the_data_block():
    tokens = EVIL + ["plain"]
    page = render_viewer(
        tokens, sharp_maps(len(tokens), 1, 2), [0], [0, 1], title="</title><b>x</b>"
    )
    assert "</script><script>alert" not in page
    assert "<img src=x" not in page
    assert "\u2028" not in page and "\u2029" not in page
    # the inline data block and the code: no other script element, nothing ends them early
    assert page.count("</script>") == 2
    assert page.count("<script") == 2
    data = page_data(page)
    assert data["tokens"] == tokens
    assert data["title"] == "</title><b>x</b>"
    assert "<title>&lt;/title&gt;&lt;b&gt;x&lt;/b&gt;</title>" in page


def test_content_security_policy_blocks_remote_loads_and_pins_the_inline_code():
    page = render_viewer(["a", "b"], sharp_maps(2, 1, 1), [0], [0])
    csp = re.search(r'<meta http-equiv="Content-Security-Policy" content="([^"]*)">', page).group(1)
    rules = dict(part.strip().split(" ", 1) for part in csp.split(";"))
    assert rules["default-src"] == "'none'"
    assert rules["img-src"] == "data:"
    assert "unsafe-eval" not in csp and "http" not in csp and "*" not in csp
    script = re.search(r"<script>(.*?)</script>", page, re.S).group(1)
    style = re.search(r"<style>(.*?)</style>", page, re.S).group(1)

    def sha(s: str) -> str:
        return "'sha256-" + base64.b64encode(hashlib.sha256(s.encode()).digest()).decode() + "'"

    assert rules["script-src"] == sha(script)
    assert rules["style-src"] == sha(style)
    # nothing in the markup points outside the file
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", page)


def test_title_and_tokens_holding_template_markers_are_kept_verbatim():
    page = render_viewer(["{{CSP}}", "{{TITLE}}"], sharp_maps(2, 1, 1), [0], [0], title="{{DATA}}")
    data = page_data(page)
    assert data["tokens"] == ["{{CSP}}", "{{TITLE}}"] and data["title"] == "{{DATA}}"
    assert "<title>{{DATA}}</title>" in page


# ----------------------------------------------------------------------------------- encoding


def test_small_maps_are_kept_whole_to_8_bit_precision():
    t = 24
    w = sharp_maps(t, 2, 3)
    w[1][2, :, 10:] = 0  # a top-k sparse head: zeros are not stored
    w[1][2] /= w[1][2].sum(-1, keepdim=True)
    data = page_data(render_viewer([f"t{i}" for i in range(t)], w, [4, 7], [0, 1, 2], mass=1.0))
    assert data["layers"] == [4, 7] and data["heads"] == [0, 1, 2]
    assert data["encoding"]["max_entries"] == t
    for key in range(6):
        got, counts = decode(data, key)
        ref = w[key // 3][key % 3].double().numpy()
        rowmax = ref.max(-1, keepdims=True)
        # the row maximum is stored in 16 bits, each weight in 8 bits relative to it
        tol = rowmax / 510 + 1.0 / 65535
        assert np.all(np.abs(got - ref) <= tol + 1e-9)
        # a weight is dropped only when it rounds to nothing
        assert np.all((got > 0) | (ref < rowmax / 510 + 1e-9))
        assert np.all(counts <= (ref > 0).sum(-1))
    _, counts = decode(data, 5)
    assert counts.max() <= 10


def test_rows_keep_their_largest_weights_up_to_the_mass():
    t = 40
    w = sharp_maps(t, 1, 2, scale=1.5)
    data = page_data(render_viewer([str(i) for i in range(t)], w, [0], [0, 1], mass=0.9))
    for h in range(2):
        got, counts = decode(data, h)
        ref = w[0][h].double().numpy()
        order = np.argsort(-ref, axis=-1)
        for i in range(t):
            kept = set(np.flatnonzero(got[i]))
            n = counts[i]
            assert kept == set(order[i, :n].tolist()), f"row {i}: not its {n} largest weights"
            top = np.sort(ref[i])[::-1]
            assert top[:n].sum() >= 0.9 - 1e-6  # enough mass
            assert top[: n - 1].sum() < 0.9  # and not one more than needed
        dropped = 1 - np.array([np.sort(ref[i])[::-1][: counts[i]].sum() for i in range(t)])
        assert data["dropped_mean"][h] == pytest.approx(dropped.mean(), abs=1e-5)
        assert data["dropped_max"][h] == pytest.approx(dropped.max(), abs=1e-5)
    assert "90%" in data["note"] and "left out" in data["note"]


def test_heads_pick_from_all_of_a_layers_heads():
    t = 12
    w = sharp_maps(t, 1, 6)
    data = page_data(render_viewer([str(i) for i in range(t)], w, [3], [4, 1], mass=1.0))
    assert data["heads"] == [4, 1]
    for key, h in enumerate([4, 1]):
        got, _ = decode(data, key)
        np.testing.assert_allclose(got, w[0][h].numpy(), atol=1 / 255)


def test_512_tokens_12_layers_12_heads_fit_in_8_mb(tmp_path):
    # Uniform rows are the worst case: 99% of a row's mass needs 507 of its 512 weights, so
    # every row is cut at the per-row limit and the page is as large as this shape can make it.
    t, n = 512, 12
    uniform = torch.full((n, t, t), 1.0 / t)
    stats = [
        {
            "layer": layer,
            "head": h,
            "entropy": math.log(t),
            "distance": 170.6,
            "sink_mass": 1 / t,
            "labels": ["broad"],
        }
        for layer in range(n)
        for h in range(n)
    ]
    path = write_viewer(
        tmp_path / "viewer.html",
        [f" word{i}" for i in range(t)],
        [uniform] * n,
        list(range(n)),
        list(range(n)),
        stats=stats,
        rollout=torch.full((t, t), 1.0 / t),
        title="size",
    )
    size = path.stat().st_size
    assert size < 8_000_000
    data = page_data(path.read_text(encoding="utf-8"))
    k = data["encoding"]["max_entries"]
    assert size > 6_000_000 and 16 <= k < t  # the budget is used, not wasted
    assert f"at most {k} of {t} per row" in data["note"]
    assert data["nnz"] == [t * k] * (n * n)
    assert data["dropped_max"][0] == pytest.approx(1 - k / t, abs=1e-4)
    assert "mean " + f"{100 * (1 - k / t):.3g}%" in data["note"]
    got, counts = decode(data, 77)
    assert np.all(counts == k)
    np.testing.assert_allclose(got[got > 0], 1.0 / t, rtol=1e-3)


def test_a_smaller_budget_gives_a_smaller_page():
    t = 128
    w = sharp_maps(t, 2, 4, scale=0.5)
    toks = [str(i) for i in range(t)]
    big = render_viewer(toks, w, [0, 1], list(range(4)))
    small = render_viewer(toks, w, [0, 1], list(range(4)), max_bytes=120_000)
    assert len(small.encode()) < 120_000 < len(big.encode())
    assert page_data(small)["encoding"]["max_entries"] < page_data(big)["encoding"]["max_entries"]
    assert (
        page_data(render_viewer(toks, w, [0, 1], list(range(4)), max_entries=3))["encoding"][
            "max_entries"
        ]
        == 3
    )


def test_stats_and_rollout_travel_into_the_page():
    t = 6
    w = sharp_maps(t, 1, 2)
    stats = [
        {
            "layer": 0,
            "head": 0,
            "entropy": torch.tensor(1.5),
            "ratio": np.float32(0.25),
            "n": 3,
            "bad": float("nan"),
            "labels": ["sink", "<b>"],
        },
        {"layer": 0, "head": 1, "entropy": 0.5, "labels": []},
    ]
    r = torch.softmax(torch.randn(t, t), -1)
    data = page_data(
        render_viewer([str(i) for i in range(t)], w, [0], [0, 1], stats=stats, rollout=r)
    )
    assert data["stats"][0] == {
        "layer": 0,
        "head": 0,
        "entropy": 1.5,
        "ratio": 0.25,
        "n": 3,
        "bad": None,
        "labels": ["sink", "<b>"],
    }
    raw = base64.b64decode(data["rollout"]["data"])
    rowmax = np.frombuffer(raw, "<u2", t, 0) / 65535 * data["rollout"]["unit"]
    q = np.frombuffer(raw, np.uint8, t * t, 2 * t).reshape(t, t)
    np.testing.assert_allclose(q / 255 * rowmax[:, None], r.numpy(), atol=r.max().item() / 400)
    assert page_data(render_viewer(["a"], [torch.ones(1, 1, 1)], [0], [0]))["rollout"] is None


def test_write_viewer_writes_the_rendered_page(tmp_path):
    w = sharp_maps(5, 1, 1)
    args = (["a", "b", "c", "d", "e"], w, [0], [0])
    path = write_viewer(tmp_path / "deep" / "dir" / "v.html", *args, title="t")
    assert path == tmp_path / "deep" / "dir" / "v.html"
    assert path.read_text(encoding="utf-8") == render_viewer(*args, title="t")
    assert [p.name for p in path.parent.iterdir()] == ["v.html"]  # no temporary file left


# ------------------------------------------------------------------------------------- errors

T3 = ["a", "b", "c"]


def _w(h: int = 2, t: int = 3) -> torch.Tensor:
    return torch.softmax(torch.randn(h, t, t), -1)


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(tokens=["a", "b"]), ["(2, 3, 3)", "(H, 2, 2)", "2 tokens"]),
        (dict(tokens=[]), ["tokens", "empty"]),
        (dict(tokens=["a", 1, "c"]), ["tokens", "1"]),
        (dict(tokens="abc"), ["tokens", "list of str"]),
        (dict(layers=[0, 1]), ["2 (", "[0, 1]", "one (H, T, T)"]),
        (dict(layers=[0.5]), ["layers", "0.5"]),
        (dict(heads=[0, 0]), ["heads", "[0, 0]", "repeat"]),
        (dict(heads=[0, 5, 1]), ["[5]", "range(2)"]),
        (dict(weights=[torch.full((2, 3, 3), -0.1)]), ["negative", "-0.1"]),
        (dict(weights=[torch.full((2, 3, 3), float("nan"))]), ["NaN"]),
        (dict(weights=[torch.ones(2, 3, 3, dtype=torch.long)]), ["torch.int64", "float"]),
        (dict(weights=_w()), ["list of (H, T, T) tensors"]),
        (dict(rollout=torch.ones(3, 4)), ["rollout", "(3, 4)", "(3, 3)"]),
        (dict(rollout=torch.full((3, 3), -1.0)), ["rollout", "negative"]),
        (dict(stats=[{"layer": 0, "entropy": 1.0}]), ["stats[0]['head']", "None"]),
        (dict(stats=[{"layer": 0, "head": 1, "labels": "sink"}]), ["labels", "'sink'"]),
        (dict(stats=[{"layer": 0, "head": 1, "x": [1, 2]}]), ["stats[0]['x']", "[1, 2]"]),
        (dict(stats={"layer": 0}), ["stats", "list of dicts"]),
        (dict(title=3), ["title", "int"]),
        (dict(mass=0.0), ["mass", "0.0", "(0, 1]"]),
        (dict(max_entries=0), ["max_entries", "0", "[1, 255]"]),
        (dict(max_bytes=-5), ["max_bytes", "-5"]),
    ],
)
def test_bad_input_names_the_value_and_what_was_expected(kwargs, words):
    args = dict(tokens=T3, weights=[_w()], layers=[0], heads=[0, 1])
    args.update(kwargs)
    with pytest.raises(ValueError) as e:
        render_viewer(**args)
    for word in words:
        assert word in str(e.value), (word, str(e.value))


def test_a_directory_is_not_a_file_path(tmp_path):
    with pytest.raises(ValueError, match="is a directory; expected a file path"):
        write_viewer(tmp_path, T3, [_w()], [0], [0, 1])


def test_non_finite_weights_are_named_by_layer():
    w = [_w(), _w()]
    w[1][0, 1, 2] = math.inf
    with pytest.raises(ValueError, match=r"weights\[1\] \(layer 9\) holds NaN or infinite"):
        render_viewer(T3, w, [8, 9], [0, 1])
