"""The one-page HTML report of a sweep or an attention comparison: self-contained.

The plots are inline PNGs (``data:`` URIs), the table is HTML, the rows are also inline JSON
(``<script type="application/json" id="results">``, data a reader can take, never run); the
page loads nothing and runs no script: its Content-Security-Policy allows only its own style
(by hash) and ``data:`` images.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from attnkit._util.fs import atomic_write_text
from attnkit.bench.report import fmt_bytes, fmt_value
from attnkit.experiments.results import Results

__all__ = ["render_report", "write_report"]

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 24px auto; max-width: 1100px; color: #222; }
h1 { font-size: 22px; margin-bottom: 4px; } h2 { font-size: 17px; margin-top: 28px; }
.meta { color: #666; } .best { background: #eef7ee; border-left: 4px solid #4a4; padding: 8px 12px; }
table { border-collapse: collapse; font-size: 12px; margin-top: 8px; }
th, td { border: 1px solid #ddd; padding: 3px 7px; text-align: right; }
th { background: #f4f4f4; } td.t { text-align: left; } tr.win td { background: #eef7ee; }
figure { display: inline-block; margin: 8px; vertical-align: top; }
img { max-width: 100%; border: 1px solid #eee; } pre { background: #f8f8f8; padding: 8px; }
""".strip()


def _csp() -> str:
    digest = base64.b64encode(hashlib.sha256(STYLE.encode()).digest()).decode()
    return (
        f"default-src 'none'; style-src 'sha256-{digest}'; img-src data:; "
        "base-uri 'none'; form-action 'none'"
    )


def _script_safe_json(data: Any) -> str:
    text = json.dumps(data, ensure_ascii=True, allow_nan=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _finite(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if obj == obj and abs(obj) != float("inf") else None
    if isinstance(obj, dict):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _cell(column: str, value: Any) -> str:
    if column == "peak_memory_bytes":
        return fmt_bytes(value)
    if isinstance(value, float) and abs(value) >= 1e6:
        return f"{value:.3g}"
    return fmt_value(value)


def render_report(
    results: Results,
    title: str,
    images: Sequence[tuple[str, Path]],
    notes: Sequence[str] = (),
) -> str:
    """The page: title, notes, the best point, the plots (``(caption, png)``), the table.

    One self-contained HTML page: the plots are embedded as data URLs, the failed points
    listed, and the rows, failures and fit inlined as JSON (``<script id="results">``).

    Args:
        results: the sweep's results.
        title: the page's title and heading.
        images: ``(caption, PNG path)`` of each plot, in order.
        notes: paragraphs shown under the best point.

    Returns:
        The HTML text.

    Examples:
        >>> html = render_report(results, "attnkit sweep", [("curves", Path("curves.png"))])
    """
    esc = html.escape
    best = results.best
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{esc(_csp())}">',
        f"<title>{esc(title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{esc(title)}</h1>",
        f'<p class="meta">{esc(results.spec.kind)}: {len(results.rows)} of '
        f"{len(results.spec.points)} points finished, budget {esc(str(results.spec.budget))} "
        f"per point</p>",
    ]
    if best is not None:
        params = ", ".join(f"{k} = {v}" for k, v in best["params"].items())
        parts.append(
            f'<p class="best"><b>Best point:</b> {esc(params)}: best validation loss '
            f"{best['best_val_loss']:.4f} ({best['parameters']:,} parameters, "
            f"{best['tokens']:,} tokens, run <code>{esc(best['run_dir'])}</code>)</p>"
        )
    for note in notes:
        parts.append(f"<p>{esc(note)}</p>")
    if results.fit is not None:
        parts.append(f"<pre>{esc(results.fit.get('text', ''))}</pre>")
    if images:
        parts.append("<h2>Plots</h2>")
        for caption, path in images:
            data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
            parts.append(
                f'<figure><img alt="{esc(caption)}" src="data:image/png;base64,{data}">'
                f"<figcaption>{esc(caption)}</figcaption></figure>"
            )
    cols = results.columns
    parts.append("<h2>Results</h2><table><tr>")
    parts += [f"<th>{esc(c)}</th>" for c in cols]
    parts.append("</tr>")
    for row in results.flat_rows():
        win = best is not None and row["point"] == best["point"]
        parts.append('<tr class="win">' if win else "<tr>")
        for c in cols:
            v = row.get(c)
            cls = ' class="t"' if isinstance(v, str) else ""
            parts.append(f"<td{cls}>{esc(_cell(c, v))}</td>")
        parts.append("</tr>")
    parts.append("</table>")
    if results.failed:
        parts.append("<h2>Failed points</h2><ul>")
        for f in results.failed:
            parts.append(f"<li>point {f['point']} {esc(str(f['params']))}: {esc(f['error'])}</li>")
        parts.append("</ul>")
    inline = {"rows": results.rows, "failed": results.failed, "fit": results.fit}
    parts.append(
        f'<script type="application/json" id="results">{_script_safe_json(_finite(inline))}</script>'
    )
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write_report(
    results: Results,
    path: str | Path,
    title: str,
    images: Sequence[tuple[str, Path]],
    notes: Sequence[str] = (),
) -> Path:
    """Write :func:`render_report` to ``path`` atomically; the path written.

    Args:
        results: the sweep's results.
        path: the HTML file to write.
        title: the page's title and heading.
        images: ``(caption, PNG path)`` of each plot, in order.
        notes: paragraphs shown under the best point.

    Examples:
        >>> write_report(results, "runs/sweep/report.html", "attnkit sweep", [])
        PosixPath('runs/sweep/report.html')
    """
    return atomic_write_text(Path(path), render_report(results, title, images, notes))
