"""``attnkit bench viewer``: size and speed of the HTML attention viewer in headless Chromium.

It builds attention maps for ``--tokens`` tokens through ``--layers`` x ``--heads`` heads that
look like a trained encoder's (each head a softmax of random scores plus one kind of structure:
previous or next token, first-token sink, self, local window, or none, at a random sharpness;
rows sum to 1), per-head statistics and the attention rollout, writes ``viewer.html`` with
:func:`attnkit.inspect.html.write_viewer`, and opens it in Chromium (Debian's ``chromium``,
driven by playwright) to measure:

* file size (target under 8 MB);
* first paint: the browser's first-contentful-paint, and the time from navigation to the first
  rendered head view (the page marks it one frame after drawing it), median over ``--loads``
  fresh loads (target under 2 s);
* head switch: in the page, ``performance.now()`` before clicking a head (or choosing a layer)
  and after the next frame has run, median over ``--switches`` switches to maps not shown
  before (each decoded on the spot) and again over the same switches with them decoded (target
  under 100 ms);
* model view: from opening the tab until every thumbnail is drawn (no target).

Every request the page makes is routed through playwright; one that does not stay in the file
is counted and fails the run. Results go to ``viewer.json`` in ``--out``.

One benchmark, kept whole (about 420 lines): building the test viewers, driving Chromium
and reporting size, first paint and head-switch times.
"""

from __future__ import annotations

import math
import os
import shutil
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from attnkit.bench.harness import environment, load_text, shared_data_file
from attnkit.bench.report import Report, Table, write_json

TARGETS = {"size_bytes": 8_000_000, "head_view_ms": 2000.0, "switch_ms": 100.0}
CORPUS_NAME = "tinyshakespeare.txt"
KINDS = ("previous", "next", "sink", "self", "local", "none")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu"]


# --------------------------------------------------------------------------------------------
# inputs
# --------------------------------------------------------------------------------------------


def sample_tokens(n: int) -> list[str]:
    """``n`` words of Shakespeare (../shared/data/tinyshakespeare.txt) when it is there, else w0, w1, ..."""
    path = shared_data_file(CORPUS_NAME)
    if path is not None:
        words: list[str] = []
        with open(path, encoding="utf-8") as f:
            for line in f:
                words += [" " + w if words else w for w in line.split()]
                if len(words) >= n:
                    return words[:n]
    return [f"w{i}" for i in range(n)]


def synthetic_attention(
    n_tokens: int, n_layers: int, n_heads: int, seed: int = 0
) -> list[torch.Tensor]:
    """One (H, T, T) float32 map per layer; every row a softmax, so it sums to 1.

    Each head is a softmax of Gaussian scores at a random sharpness plus one structure (see
    :data:`KINDS`), as heads of trained encoders tend to show.
    """
    g = torch.Generator().manual_seed(seed)
    pos = torch.arange(n_tokens)
    dist = (pos[None, :] - pos[:, None]).float()  # (T, T) key - query
    shapes = {  # (T, T) score bias of each kind, scaled by the head's strength
        "previous": (dist == -1).float(),
        "next": (dist == 1).float(),
        "self": (dist == 0).float(),
        "sink": (pos[None, :] == 0).float().expand(n_tokens, n_tokens),
        "local": -dist.abs() / 8,
        "none": torch.zeros(n_tokens, n_tokens),
    }
    bias = torch.stack([shapes[k] for k in KINDS])  # (kinds, T, T)
    out = []
    for _ in range(n_layers):
        kind = torch.randint(len(KINDS), (n_heads,), generator=g)
        sharp = torch.empty(n_heads, 1, 1).uniform_(0.5, 3.0, generator=g)
        strength = torch.empty(n_heads, 1, 1).uniform_(3.0, 8.0, generator=g)
        scores = sharp * torch.randn(n_heads, n_tokens, n_tokens, generator=g)  # (H, T, T)
        scores += strength * bias[kind]
        out.append(torch.softmax(scores, dim=-1))  # (H, T, T)
    return out


def head_stats(weights: list[torch.Tensor]) -> list[dict[str, Any]]:
    """Entropy (nats), mean attended distance, mass on token 0 and on the previous token per head."""
    rows = []
    for layer, w in enumerate(weights):
        n = w.shape[-1]
        pos = torch.arange(n)
        dist = (pos[None, :] - pos[:, None]).abs().float()
        entropy = -(w * w.clamp_min(1e-12).log()).sum(-1).mean(-1)  # (H,)
        distance = (w * dist).sum(-1).mean(-1)
        sink = w[..., 0].mean(-1)
        prev = w[:, 1:, :].diagonal(dim1=-2, dim2=-1).mean(-1) if n > 1 else torch.zeros(w.shape[0])
        for h in range(w.shape[0]):
            labels = []
            if sink[h] > 0.3:
                labels.append("sink")
            if prev[h] > 0.3:
                labels.append("previous token")
            if entropy[h] > 0.8 * math.log(n):
                labels.append("broad")
            rows.append(
                {
                    "layer": layer,
                    "head": h,
                    "entropy": float(entropy[h]),
                    "distance": float(distance[h]),
                    "sink_mass": float(sink[h]),
                    "previous_mass": float(prev[h]),
                    "labels": labels,
                }
            )
    return rows


def rollout(weights: list[torch.Tensor]) -> torch.Tensor:
    """Attention rollout: the product over layers of (head-mean attention + identity) / 2."""
    n = weights[0].shape[-1]
    out = torch.eye(n)
    for w in weights:
        a = 0.5 * w.mean(0) + 0.5 * torch.eye(n)
        out = (a / a.sum(-1, keepdim=True)) @ out
    return out


# --------------------------------------------------------------------------------------------
# browser measurements
# --------------------------------------------------------------------------------------------

_LOAD_METRICS = """() => {
  const mark = (n) => { const e = performance.getEntriesByName(n); return e.length ? e[0].startTime : null; };
  const fcp = performance.getEntriesByType("paint").find(e => e.name === "first-contentful-paint");
  return {fcp_ms: fcp ? fcp.startTime : null, head_view_ms: mark("attnkit-head-view-drawn"),
          data_parsed_ms: mark("attnkit-data-parsed"), script_done_ms: mark("attnkit-first-head-drawn")};
}"""

# Each switch: a click on a head of this layer not shown yet, or, when there is none, the next
# layer in the select (which keeps the head); timed from before the action until a frame has
# been drawn after it.
_SWITCHES = """async (n) => {
  const frame = () => new Promise(r => requestAnimationFrame(() => setTimeout(r, 0)));
  const sel = document.getElementById("layer"), btns = document.querySelectorAll("#heads button");
  const H = btns.length, L = sel.options.length, times = [], shown = [];
  const view = document.getElementById("head-view").dataset, seen = new Set();
  let l = +sel.value;
  seen.add(l + ":" + [...btns].findIndex(b => b.getAttribute("aria-pressed") === "true"));
  for (let k = 0; k < n; k++) {
    let h = 0;
    while (h < H && seen.has(l + ":" + h)) h++;
    const t0 = performance.now();
    if (h < H) btns[h].click();
    else { l = (l + 1) % L; sel.value = String(l); sel.dispatchEvent(new Event("change")); }
    await frame();
    times.push(performance.now() - t0);
    seen.add(l + ":" + [...btns].findIndex(b => b.getAttribute("aria-pressed") === "true"));
    shown.push(view.layer + ":" + view.head);
  }
  return {times, shown};
}"""

_RESET = """async () => {
  const sel = document.getElementById("layer");
  sel.value = "0"; sel.dispatchEvent(new Event("change"));
  document.querySelector("#heads button").click();
  await new Promise(r => requestAnimationFrame(() => setTimeout(r, 0)));
}"""

_MODEL_VIEW = """async () => {
  const t0 = performance.now();
  document.getElementById("tab-model").click();
  const total = document.querySelectorAll(".thumb").length;
  while (document.getElementById("model-grid").dataset.drawn !== String(total)) {
    await new Promise(r => requestAnimationFrame(r));
  }
  await new Promise(r => requestAnimationFrame(() => setTimeout(r, 0)));
  return {ms: performance.now() - t0, thumbs: total};
}"""


def find_chromium(path: str | None = None) -> str:
    exe = path or shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None or not Path(exe).is_file():
        raise ValueError(
            f"Chromium not found ({path or 'chromium on PATH'}); expected Debian's chromium "
            "(apt-get install chromium) or --chromium PATH"
        )
    return exe


def _playwright() -> Any:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        raise ValueError(
            "the playwright package is not installed; expected `pip install playwright` "
            "(Chromium itself comes from the system; never `playwright install`)"
        ) from None
    return sync_playwright


def measure(
    html_path: Path, chromium: str | None, loads: int, switches: int, browser: Any = None
) -> dict[str, Any]:
    """Open ``html_path`` in headless Chromium ``loads`` times and time it; see the module docstring.

    ``browser``: a playwright ``Browser`` already launched, used instead of launching ``chromium``.
    """
    if browser is not None:
        return _measure(html_path, browser, loads, switches)
    sync_playwright = _playwright()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            return _measure(html_path, browser, loads, switches)
        finally:
            browser.close()


def _measure(html_path: Path, browser: Any, loads: int, switches: int) -> dict[str, Any]:
    url = html_path.resolve().as_uri()
    outside: list[str] = []
    errors: list[str] = []

    def route(r: Any) -> None:
        if r.request.url.startswith("file:"):
            r.continue_()
        else:
            outside.append(r.request.url)
            r.abort()

    loads_out: list[dict[str, Any]] = []
    page: Any = None
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    try:
        context.route("**/*", route)
        for _ in range(loads):
            if page is not None:
                page.close()
            page = context.new_page()
            page.on("pageerror", lambda e: errors.append(str(e)))

            def dialog(d: Any) -> None:
                errors.append(f"dialog: {d.message}")
                d.dismiss()

            page.on("dialog", dialog)
            t0 = time.perf_counter()
            page.goto(url)
            page.wait_for_selector("body[data-ready='1']", timeout=60_000)
            wall = (time.perf_counter() - t0) * 1000
            loads_out.append({"wall_ms": wall, **page.evaluate(_LOAD_METRICS)})
        cold = page.evaluate(_SWITCHES, switches)
        page.evaluate(_RESET)
        warm = page.evaluate(_SWITCHES, switches)
        model = page.evaluate(_MODEL_VIEW)
        version = browser.version
    finally:
        context.close()
    if outside:
        raise RuntimeError(
            f"the viewer made {len(outside)} request(s) outside the file, e.g. {outside[0]!r}; "
            "expected none"
        )
    if errors:
        raise RuntimeError(f"the viewer raised in the browser: {errors[0]}")

    def med(key: str) -> float | None:
        vals = [x[key] for x in loads_out if x[key] is not None]
        return statistics.median(vals) if vals else None

    return {
        "chromium": version,
        "loads": loads_out,
        "fcp_ms": med("fcp_ms"),
        "head_view_ms": med("head_view_ms"),
        "wall_load_ms": med("wall_ms"),
        "switch_cold_ms": statistics.median(cold["times"]),
        "switch_warm_ms": statistics.median(warm["times"]),
        "switch_cold_max_ms": max(cold["times"]),
        "switch_times_cold": cold["times"],
        "switch_times_warm": warm["times"],
        "switched_to": cold["shown"],
        "model_view_ms": model["ms"],
        "thumbnails": model["thumbs"],
    }


# --------------------------------------------------------------------------------------------
# command
# --------------------------------------------------------------------------------------------


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x:.0f} ms" if x >= 10 else f"{x:.1f} ms"


def _met(value: float | None, target: float) -> str:
    return "-" if value is None else ("yes" if value < target else "NO")


@dataclass(frozen=True)
class ViewerSettings:
    """One run of ``attnkit bench viewer``; ``quick`` replaces the sizes by a small check
    (64 tokens, 2 layers x 4 heads, 5 switches, 1 load)."""

    tokens: int = 512
    layers: int = 12
    heads: int = 12
    switches: int = 20
    loads: int = 3
    seed: int = 0
    quick: bool = False
    chromium: str | None = None  # None: chromium on PATH
    out: Path = Path("bench_out")

    def __post_init__(self) -> None:
        if self.quick:
            for name, value in (
                ("tokens", 64),
                ("layers", 2),
                ("heads", 4),
                ("switches", 5),
                ("loads", 1),
            ):
                object.__setattr__(self, name, value)


def run(args: ViewerSettings, browser: Any = None) -> Report:
    """Write the viewer and time it in Chromium; writes viewer.html and viewer.json.
    ``browser``, a playwright ``Browser`` already launched, replaces launching one."""
    chromium = None
    if browser is None:
        chromium = find_chromium(args.chromium)
        _playwright()  # fail before the work when it is missing
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t, n_layers, n_heads = args.tokens, args.layers, args.heads

    from attnkit.inspect.html import write_viewer

    tokens = sample_tokens(t)
    weights = synthetic_attention(t, n_layers, n_heads, args.seed)
    stats = head_stats(weights)
    roll = rollout(weights)
    t0 = time.perf_counter()
    path = write_viewer(
        out / "viewer.html",
        tokens,
        weights,
        list(range(n_layers)),
        list(range(n_heads)),
        stats=stats,
        rollout=roll,
        title=f"attnkit bench viewer: {t} tokens, {n_layers} x {n_heads} heads",
    )
    write_s = time.perf_counter() - t0
    size = path.stat().st_size
    del weights
    load_before = os.getloadavg()
    m = measure(path, chromium, args.loads, args.switches, browser)
    load_after = os.getloadavg()

    table = Table(
        ["metric", "value", "target", "met"],
        align="llll",
        title=f"HTML viewer, {t} tokens x {n_layers} layers x {n_heads} heads, {m['chromium']} "
        f"(headless), median of {args.loads} load(s), {args.switches} switches",
    )
    table.add_row("file size", f"{size / 1e6:.2f} MB", "< 8 MB", _met(size, TARGETS["size_bytes"]))
    table.add_row("write_viewer (Python)", _ms(write_s * 1000), "-", "-")
    table.add_row("first contentful paint", _ms(m["fcp_ms"]), "-", "-")
    timed_rows = (  # (metric, key in m, target text or None, target in ms)
        ("first head view drawn", "head_view_ms", "< 2 s", TARGETS["head_view_ms"]),
        ("load, as seen by the driver", "wall_load_ms", None, 0.0),
        ("head switch, new map (median)", "switch_cold_ms", "< 100 ms", TARGETS["switch_ms"]),
        ("head switch, new map (max)", "switch_cold_max_ms", None, 0.0),
        ("head switch, seen map (median)", "switch_warm_ms", "< 100 ms", TARGETS["switch_ms"]),
    )
    for metric, key, target_text, target in timed_rows:
        met_cell = _met(m[key], target) if target_text else "-"
        table.add_row(metric, _ms(m[key]), target_text or "-", met_cell)
    table.add_row(f"model view, {m['thumbnails']} thumbnails", _ms(m["model_view_ms"]), "-", "-")
    met = {
        "size": size < TARGETS["size_bytes"],
        "head_view": m["head_view_ms"] is not None and m["head_view_ms"] < TARGETS["head_view_ms"],
        "switch": m["switch_cold_ms"] < TARGETS["switch_ms"]
        and m["switch_warm_ms"] < TARGETS["switch_ms"],
    }
    json_path = write_json(
        out / "viewer.json",
        {
            "tokens": t,
            "layers": n_layers,
            "heads": n_heads,
            "seed": args.seed,
            "size_bytes": size,
            "write_s": write_s,
            "targets": TARGETS,
            "met": met,
            "browser": m,
            "environment": environment(),
            "load_before": load_before,
            "load_after": load_after,
            "html": str(path),
        },
    )
    lines = [table.render(), load_text(load_before, load_after), f"wrote {path} and {json_path}"]
    return Report("\n".join(lines), (path, json_path))
