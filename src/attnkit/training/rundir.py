"""Run directories: what counts as a run already there, the path rules, and ``overwrite``
that keeps the old run until the new one has something to resume from.

A directory **holds a run** when any of :data:`RUN_FILES` is in it (``checkpoints/``,
``run_config.json``, the best model's ``config.json``/``model.safetensors``, the metrics, ...);
other files are left alone and do not count. Starting a run there without ``resume`` or
``overwrite`` is refused (:class:`RunExistsError`, a ValueError naming the directory and the
two ways on).

**Path rules** (:func:`check_paths`), checked before anything is written:

* the output path may start with ``..`` components (``../runs/x``), but a ``..`` after a named
  component (``runs/x/../../y``) is refused: it leaves the directory the path has named;
* no entry a run writes, moves or deletes (each of :data:`RUN_FILES`, ``checkpoints/step-*``
  and the files in them) may be a symlink that resolves outside the output directory; a
  symlink that stays inside it is allowed. The output directory itself may be a symlink: it
  is the path the caller chose.

**Overwrite** (:func:`set_aside`): the old run's files are moved into a hidden
``.replaced-run/`` inside the directory (renames on one file system: nothing is copied). The
new run deletes it (:func:`discard_replaced`) once its first checkpoint is complete
(``complete(out)`` says so). A run killed before that leaves the old run set aside;
:func:`recover`, which every start runs first, then removes the new run's partial files and
moves the old run back, so ``--resume`` continues the old run. Each step is a rename that
either happened or did not; a kill between any two leaves a state :func:`recover` finishes:

1. ``.replacing-run/`` being filled with the old files (a kill here: they are moved back);
2. renamed to ``.replaced-run/``: the new run may write (a kill here: the old run returns);
3. the new run's first complete checkpoint: ``.replaced-run/`` is deleted.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from attnkit._util import faults
from attnkit._util.fs import fsync_dir
from attnkit.training import distributed
from attnkit.training.checkpointing import latest_checkpoint

__all__ = [
    "REPLACED",
    "RUN_FILES",
    "RunExistsError",
    "check_paths",
    "discard_replaced",
    "existing_run",
    "recover",
    "refuse_existing",
    "set_aside",
]

logger = logging.getLogger(__name__)

RUN_FILES = (
    "checkpoints",
    "run_config.json",
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "metrics.jsonl",
    "metrics.csv",
    "metrics.json",
    "summary.json",
    "loss.png",
    "confusion.png",
    "tensorboard",  # train.logger = "tensorboard": event files
    "wandb",  # train.logger = "wandb": the offline run
)
REPLACED = ".replaced-run"  # the old run, set aside by overwrite
_FILLING = ".replacing-run"  # being filled with the old run's files
_RESTORING = ".restoring-run"  # being emptied back into the directory


class RunExistsError(ValueError):
    """The output directory holds a run and neither resume nor overwrite was asked for; a
    ValueError, raised by :func:`refuse_existing`.

    Examples:
        >>> refuse_existing(Path("runs/char"), "a run")  # RunExistsError if it holds one
    """


def existing_run(out: Path) -> list[str]:
    """The names of :data:`RUN_FILES` present in ``out`` (empty: it holds no run); a symlink
    counts even when broken.

    Args:
        out: the output directory (it need not exist).

    Returns:
        The names found, in the order of :data:`RUN_FILES`.

    Examples:
        >>> existing_run(Path("runs/char"))  # e.g. ['checkpoints', 'run_config.json', ...]
    """
    return [name for name in RUN_FILES if os.path.lexists(out / name)]


def refuse_existing(out: Path, what: str, resume_too: bool = True) -> None:
    """RunExistsError when ``out`` holds a run; the message names the directory and the ways
    on (``--resume``/``resume=True`` when ``resume_too``, and ``--overwrite``/``overwrite=True``).

    Args:
        out: the output directory.
        what: what the directory is said to hold in the message, e.g. "a run".
        resume_too: also offer ``--resume`` in the message.

    Raises:
        RunExistsError: ``out`` holds a run.

    Examples:
        >>> refuse_existing(Path("runs/new"), "a run")  # None: nothing there
    """
    found = existing_run(out)
    if not found:
        return
    shown = ", ".join(f"{n}/" if (out / n).is_dir() else n for n in found[:3])
    more = f" and {len(found) - 3} more" if len(found) > 3 else ""
    ways = "pass --resume (resume=True) to continue it or " if resume_too else "pass "
    raise RunExistsError(
        f"{out} already holds {what} ({shown}{more}); {ways}--overwrite (overwrite=True) to "
        "replace it, or choose another directory"
    )


def _outside(link: Path, root: Path) -> str | None:
    """Where ``link`` leads when it is a symlink resolving outside ``root``, else None."""
    if not link.is_symlink():
        return None
    target = Path(os.path.realpath(link))
    return None if target == root or root in target.parents else str(target)


def check_paths(out: Path) -> None:
    """ValueError when ``out`` breaks the path rules in this module's docstring: a ``..``
    after a named component, or an entry a run touches that is a symlink leading outside.

    Args:
        out: the output directory (it need not exist yet).

    Raises:
        ValueError: naming the bad path.

    Examples:
        >>> check_paths(Path("runs/x/../../y"))  # ValueError: '..' after a named component
    """
    parts = out.parts
    named = False
    for part in parts:
        if part == "..":
            if named:
                raise ValueError(
                    f"output directory {str(out)!r} has a '..' after a named component; "
                    f"expected a path without one (write {os.path.normpath(out)!r})"
                )
        elif part not in (".", out.anchor):
            named = True
    if not out.exists():
        return
    root = Path(os.path.realpath(out))
    entries = [out / name for name in RUN_FILES]
    ckpts = out / "checkpoints"
    if ckpts.is_dir() and _outside(ckpts, root) is None:  # a symlink inside is followed
        for step in ckpts.iterdir():
            entries.append(step)
            if step.is_dir() and _outside(step, root) is None:
                entries.extend(step.iterdir())
    for entry in entries:
        target = _outside(entry, root)
        if target is not None:
            raise ValueError(
                f"{entry} is a symlink to {target}, outside the output directory {out}; "
                "expected a file or folder inside it (a run writes and deletes there)"
            )


def _move_back(source: Path, out: Path) -> None:
    for entry in sorted(source.iterdir()):
        os.replace(entry, out / entry.name)
    fsync_dir(out)
    source.rmdir()
    fsync_dir(out)


def set_aside(out: Path) -> Path | None:
    """Move the run in ``out`` into ``out/.replaced-run`` (None when it holds none).

    Args:
        out: the output directory.

    Returns:
        The ``.replaced-run`` directory, or None.

    Examples:
        >>> set_aside(Path("runs/char"))  # Path('runs/char/.replaced-run')
    """
    found = existing_run(out)
    if not found:
        return None
    filling = out / _FILLING
    filling.mkdir()
    for name in found:
        os.replace(out / name, filling / name)
    fsync_dir(out)
    aside = out / REPLACED
    os.replace(filling, aside)
    fsync_dir(out)
    logger.info(
        "attnkit: --overwrite: the earlier run in %s is set aside in %s until the new run's "
        "first checkpoint is complete",
        out,
        aside,
    )
    faults.point("after-set-aside")
    return aside


def discard_replaced(out: Path) -> None:
    """Delete the set-aside old run (the new run has a complete checkpoint); nothing when
    there is none.

    Args:
        out: the output directory.

    Examples:
        >>> discard_replaced(Path("runs/char"))
    """
    aside = out / REPLACED
    if aside.exists():
        shutil.rmtree(aside)
        fsync_dir(out)
        logger.info("attnkit: --overwrite: deleted the earlier run (the new run has a checkpoint)")


def recover(out: Path, complete: Callable[[Path], bool]) -> None:
    """Finish what a killed overwrite left: with the new run ``complete`` the old one is
    deleted, else the new run's partial files go and the old run is moved back. Nothing
    when no overwrite was interrupted.

    Args:
        out: the output directory.
        complete: says whether the new run in ``out`` has a complete checkpoint.

    Examples:
        >>> recover(Path("runs/char"), lambda out: latest_checkpoint(out) is not None)
    """
    filling, aside, restoring = out / _FILLING, out / REPLACED, out / _RESTORING
    if filling.is_dir():  # killed while setting aside: nothing new was written yet
        _move_back(filling, out)
    if aside.is_dir():
        if complete(out):
            discard_replaced(out)
        else:
            for name in existing_run(out):  # the new run's files: it has nothing to resume
                p = out / name
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p)
                else:
                    p.unlink()
            os.replace(aside, restoring)
            fsync_dir(out)
            logger.warning(
                "attnkit: the run that was to replace the one in %s ended before its first "
                "checkpoint; the earlier run is back in place",
                out,
            )
    if restoring.is_dir():
        _move_back(restoring, out)


def has_checkpoint(out: Path) -> bool:
    """True when ``out/checkpoints`` holds a complete, intact checkpoint.

    Args:
        out: the run directory.

    Examples:
        >>> has_checkpoint(Path("runs/char"))
        True
    """
    return latest_checkpoint(out) is not None


def open_run_dir(out: Path, d: distributed.Dist, resume: bool, overwrite: bool) -> bool:
    """Make ``out`` ready for a run, on every process: its paths checked, a killed overwrite
    finished (rank 0), a run already there refused unless ``resume`` or ``overwrite``, and with
    ``overwrite`` the old run set aside. True when a run was set aside (rank 0 only).

    Args:
        out: the run directory (made if missing).
        d: this process's place in the process group.
        resume: the run continues the one in ``out``.
        overwrite: the run replaces the one in ``out``.

    Raises:
        ValueError: a path rule is broken (:func:`check_paths`), or
            ``out`` holds a run and neither flag is set (``RunExistsError``).

    Examples:
        >>> open_run_dir(Path("runs/new"), distributed.init("cpu"), resume=False, overwrite=False)
        False
    """
    check_paths(out)
    if d.is_main:
        recover(out, has_checkpoint)
    distributed.barrier(d)
    if not resume and not overwrite:
        refuse_existing(out, "a run")
    distributed.barrier(d)
    if not d.is_main:
        return False
    out.mkdir(parents=True, exist_ok=True)
    return overwrite and set_aside(out) is not None
