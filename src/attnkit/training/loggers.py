"""Experiment loggers: where a run's metric rows go besides ``metrics.jsonl``/``metrics.csv``.

    train.logger = "csv"                  # the default: JSON lines and CSV only
    train.logger = "tensorboard"          # also TensorBoard events in OUT/tensorboard/
    train.logger = "csv,tensorboard,wandb"

The JSON-lines/CSV files (:mod:`attnkit.training.metrics`) are always written; ``csv`` in the
list only names them. The others are optional extras:

* ``tensorboard``: ``torch.utils.tensorboard.SummaryWriter`` writing to ``OUT/tensorboard``
  (extra ``[tensorboard]``); each numeric field of a row becomes the scalar ``SPLIT/FIELD``
  (``train/loss``, ``val/perplexity``) at its step. On resume the writer purges the events
  past the resumed step, as the JSON lines drop their rows.
* ``wandb``: a Weights & Biases run in offline mode (extra ``[wandb]``), its files under
  ``OUT/wandb``; ``WANDB_MODE`` set by the user (``online``) is respected, nothing is sent
  otherwise. ``wandb sync OUT/wandb/offline-run-*`` uploads it later.

A name outside :data:`LOGGERS` is a ValueError; a logger whose package is missing is a
:class:`~attnkit._util.optional.MissingDependency` naming ``pip install 'attnkit[EXTRA]'``,
raised by :func:`parse_loggers` before any training. Messages go through :mod:`logging`
(logger ``attnkit``), never print.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from attnkit._util.optional import require

__all__ = [
    "LOGGERS",
    "RunLog",
    "TensorBoardLogger",
    "WandbLogger",
    "open_loggers",
    "parse_loggers",
]

logger = logging.getLogger(__name__)

LOGGERS = ("csv", "tensorboard", "wandb")
# the package each optional logger imports first (torch.utils.tensorboard needs tensorboard)
_EXTRAS = {"tensorboard": ("tensorboard", "tensorboard"), "wandb": ("wandb", "wandb")}


def parse_loggers(spec: str | list[str] | tuple[str, ...], name: str = "train.logger") -> list[str]:
    """The logger names of ``spec`` ("csv", "csv,tensorboard" or a list of names), without
    repeats, in order; each optional one imported now so that a missing package is an error
    at start (:class:`~attnkit._util.optional.MissingDependency` naming the extra).

    Args:
        spec: a comma-separated string or a list of names from :data:`LOGGERS`.
        name: the setting's name in error messages.

    Returns:
        The names, first occurrence kept.

    Raises:
        TypeError: ``spec`` is neither a string nor a list of strings.
        ValueError: a name outside :data:`LOGGERS`.

    Examples:
        >>> parse_loggers("csv, csv")
        ['csv']
    """
    if isinstance(spec, str):
        items = [s.strip() for s in spec.split(",")]
    elif isinstance(spec, (list, tuple)) and all(isinstance(s, str) for s in spec):
        items = [s.strip() for s in spec]
    else:
        raise TypeError(
            f"{name} must be a string such as 'csv,tensorboard' or a list of names, got {spec!r}"
        )
    names: list[str] = []
    for item in items:
        if item not in LOGGERS:
            raise ValueError(
                f"{name} names {item!r} in {spec!r}; expected a comma-separated list of "
                f"{', '.join(LOGGERS)}"
            )
        if item not in names:
            names.append(item)
    for item in names:
        if item in _EXTRAS:
            module, extra = _EXTRAS[item]
            require(module, extra, f"{name} = {item!r}")
    return names


def _scalars(row: Mapping[str, Any]) -> dict[str, float]:
    """The numeric, finite fields of a row, except step and split."""
    out: dict[str, float] = {}
    for key, value in row.items():
        if key in ("step", "split") or isinstance(value, bool):
            continue
        if isinstance(value, (int, float)) and math.isfinite(value):
            out[key] = float(value)
    return out


class Sink(Protocol):
    def log(self, step: int, split: str, values: Mapping[str, float]) -> None: ...

    def close(self) -> None: ...


class TensorBoardLogger:
    """Scalars ``SPLIT/FIELD`` in ``log_dir`` (``purge_step``: events at or past it from an
    earlier, interrupted run are dropped).

    Args:
        log_dir: the directory of the event files.
        purge_step: the first step whose old events are dropped, or None.

    Examples:
        >>> TensorBoardLogger(Path("runs/char/tensorboard")).log(10, "train", {"loss": 2.3})
    """

    def __init__(self, log_dir: Path, purge_step: int | None = None) -> None:
        require("tensorboard", "tensorboard", "train.logger = 'tensorboard'")
        tb = require("torch.utils.tensorboard", "tensorboard", "train.logger = 'tensorboard'")
        self.log_dir = Path(log_dir)
        self.writer = tb.SummaryWriter(log_dir=str(self.log_dir), purge_step=purge_step)
        logger.info("TensorBoard events in %s (tensorboard --logdir %s)", log_dir, log_dir)

    def log(self, step: int, split: str, values: Mapping[str, float]) -> None:
        """Add each value as the scalar ``split/key`` at ``step``.

        Args:
            step: the training step.
            split: "train" or "val" (the tag's prefix).
            values: the numbers to record, by field name.

        Examples:
            >>> tb.log(250, "val", {"loss": 1.82, "perplexity": 6.17})  # val/loss, val/perplexity
        """
        for key, value in values.items():
            self.writer.add_scalar(f"{split}/{key}", value, step)

    def close(self) -> None:
        """Flush the events and close the writer.

        Examples:
            >>> tb.close()
        """
        self.writer.flush()
        self.writer.close()


class WandbLogger:
    """A W&B run, offline unless ``WANDB_MODE`` says otherwise, its files in ``root/wandb``;
    metrics as ``SPLIT/FIELD`` at each step, the run config as its config. The project is
    ``WANDB_PROJECT`` (default "attnkit") and the run is named after ``root``.

    Args:
        root: the run's output directory.
        config: the resolved run config, recorded with the W&B run.

    Examples:
        >>> WandbLogger(Path("runs/char"), config=cfg.to_dict()).log(10, "train", {"loss": 2.3})
    """

    def __init__(self, root: Path, config: Mapping[str, Any] | None = None) -> None:
        wandb = require("wandb", "wandb", "train.logger = 'wandb'")
        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        mode = os.environ.get("WANDB_MODE") or "offline"
        self.run = wandb.init(
            dir=str(root),
            mode=mode,
            project=os.environ.get("WANDB_PROJECT") or "attnkit",
            name=root.resolve().name,
            config=dict(config or {}),
            settings=wandb.Settings(console="off", silent=True),
            reinit="create_new",
        )
        self.last_step = -1
        logger.info("W&B run (%s) in %s", mode, root / "wandb")

    def log(self, step: int, split: str, values: Mapping[str, float]) -> None:
        """Log the values as ``split/key`` at ``step`` (never below a step logged before: W&B
        steps only go up).

        Args:
            step: the training step.
            split: "train" or "val".
            values: the numbers to record, by field name.

        Examples:
            >>> wb.log(250, "val", {"loss": 1.82})
        """
        # W&B steps only go up; rows of one step (train and val) share it
        self.last_step = max(self.last_step, step)
        self.run.log({f"{split}/{k}": v for k, v in values.items()}, step=self.last_step)

    def close(self) -> None:
        """Finish the W&B run.

        Examples:
            >>> wb.close()
        """
        self.run.finish()


class RunLog:
    """One ``log(**row)`` for every logger of a run: ``metrics`` (the JSON-lines/CSV
    :class:`~attnkit.training.metrics.MetricsLog`, or None where the caller keeps its own
    record) and the optional sinks. Rows need ``step`` and ``split``. Usually made by
    :func:`open_loggers`; a context manager that closes its sinks.

    Args:
        metrics: the object whose ``log(**row)`` records every row, or None.
        sinks: the optional loggers, each given the row's numeric, finite fields.

    Examples:
        >>> with RunLog(MetricsLog(out), []) as log:
        ...     log.log(step=1, split="train", loss=4.2)
    """

    def __init__(self, metrics: Any | None, sinks: list[Sink]) -> None:
        self.metrics = metrics
        self.sinks = sinks

    def log(self, **row: Any) -> None:
        """Record ``row`` in ``metrics`` and give its numeric, finite fields (step and split
        aside) to every sink.

        Args:
            row: the values; ``step`` and ``split`` are required.

        Examples:
            >>> log.log(step=250, split="val", loss=1.82, perplexity=6.17)
        """
        if self.metrics is not None:
            self.metrics.log(**row)
        if self.sinks:
            values = _scalars(row)
            for sink in self.sinks:
                sink.log(int(row["step"]), str(row["split"]), values)

    def close(self) -> None:
        """Close every sink (``metrics`` needs no closing).

        Examples:
            >>> log.close()
        """
        for sink in self.sinks:
            sink.close()

    def __enter__(self) -> RunLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_loggers(
    spec: str | list[str] | tuple[str, ...],
    out: Path,
    *,
    metrics: Any | None = None,
    resume_step: int | None = None,
    config: Mapping[str, Any] | None = None,
) -> RunLog:
    """A :class:`RunLog` writing to ``metrics`` and the optional loggers ``spec`` names, their
    files under ``out``. ``resume_step``: the step a resumed run continues from.

    Args:
        spec: the logger names (``train.logger``), as :func:`parse_loggers` reads them.
        out: the run directory (TensorBoard writes to ``out/tensorboard``, W&B to ``out/wandb``).
        metrics: the JSON-lines/CSV log, or None.
        resume_step: TensorBoard events past it are purged; None for a new run.
        config: the resolved run config, given to W&B.

    Returns:
        The :class:`RunLog`; if a logger fails to open, those already open are closed.

    Examples:
        >>> log = open_loggers("csv,tensorboard", out, metrics=MetricsLog(out))
    """
    sinks: list[Sink] = []
    try:
        for name in parse_loggers(spec):
            if name == "tensorboard":
                purge = resume_step + 1 if resume_step is not None else None
                sinks.append(TensorBoardLogger(Path(out) / "tensorboard", purge))
            elif name == "wandb":
                sinks.append(WandbLogger(Path(out), config))
    except BaseException:
        for sink in sinks:
            sink.close()
        raise
    return RunLog(metrics, sinks)
