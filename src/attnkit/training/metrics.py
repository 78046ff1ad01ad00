"""Training metrics: JSON lines and CSV as they come, and a loss-curve PNG at the end."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any

FIELDS = (
    "step",
    "split",
    "loss",
    "perplexity",
    "accuracy",
    "lr",
    "tokens_per_second",
    "elapsed_seconds",
)


class MetricsLog:
    """Appends rows to ``metrics.jsonl`` and ``metrics.csv`` in ``out``. On resume from
    ``step``, rows logged after it by the interrupted run are dropped first.

    Args:
        out: the run directory (it must exist).
        resume_step: the step a resumed run continues from; None for a new run, which starts
            both files empty.

    Examples:
        >>> MetricsLog(Path("runs/char")).log(step=10, split="train", loss=2.31)
    """

    def __init__(self, out: Path, resume_step: int | None = None):
        self.jsonl, self.csv = out / "metrics.jsonl", out / "metrics.csv"
        rows = read_rows(self.jsonl) if resume_step is not None else []
        rows = [r for r in rows if r["step"] <= (resume_step or 0)]
        self.jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
        with open(self.csv, "w", newline="") as f:
            w = csv.DictWriter(f, FIELDS)
            w.writeheader()
            for r in rows:
                w.writerow({k: r.get(k, "") for k in FIELDS})

    def log(self, **row: Any) -> None:
        """Append one row to both files. The CSV keeps the columns of :data:`FIELDS` (missing
        ones empty, others dropped); the JSON line keeps every key.

        Args:
            row: the values, e.g. ``step``, ``split``, ``loss``, ``lr``.

        Examples:
            >>> log.log(step=250, split="val", loss=1.82, perplexity=6.17)
        """
        with open(self.jsonl, "a") as f:
            f.write(json.dumps(row) + "\n")
        with open(self.csv, "a", newline="") as f:
            csv.DictWriter(f, FIELDS).writerow({k: row.get(k, "") for k in FIELDS})


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a ``metrics.jsonl`` file; a missing file gives none, and a line cut short by
    a crash is skipped.

    Args:
        path: the JSON-lines file.

    Returns:
        One dict per line.

    Examples:
        >>> [r["loss"] for r in read_rows(Path("runs/char/metrics.jsonl")) if r["split"] == "val"]
    """
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by a crash
            continue
    return rows


def plot_loss(jsonl: Path, png: Path) -> Path | None:
    """Plot train and val loss against step from ``jsonl`` into ``png`` (written atomically);
    None (with a logged note) when matplotlib is missing.

    Args:
        jsonl: the run's ``metrics.jsonl``.
        png: the image to write.

    Returns:
        The path written, or None.

    Examples:
        >>> plot_loss(Path("runs/char/metrics.jsonl"), Path("runs/char/loss.png"))
    """
    from attnkit._util.fs import atomic_write
    from attnkit._util.optional import MissingDependency, figure

    try:
        fig = figure(7, 4.5)
    except MissingDependency as e:
        logging.getLogger(__name__).warning("attnkit: no loss curve: %s", e)
        return None
    rows = read_rows(jsonl)
    ax = fig.add_subplot()
    for split, style in (("train", "-"), ("val", "o-")):
        pts = [(r["step"], r["loss"]) for r in rows if r.get("split") == split]
        if pts:
            xs, ys = zip(*pts)
            ax.plot(xs, ys, style, label=split, markersize=3, linewidth=1.2)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return atomic_write(png, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
