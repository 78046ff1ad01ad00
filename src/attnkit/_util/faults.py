"""Named kill points for fault-injection tests: ``ATTNKIT_FAULT`` makes the process SIGKILL
itself at a chosen point, as a power cut or the OOM killer would.

    ATTNKIT_FAULT=before-manifest        # the first time the point is passed
    ATTNKIT_FAULT=in-eval@3              # the third time
    ATTNKIT_FAULT=after-weights@2 ATTNKIT_FAULT_RANK=1   # only in the torchrun process of RANK 1

Code marks a point with ``faults.point("before-manifest")``; with the variable unset (always,
outside tests) that is one dictionary lookup. :data:`POINTS` lists the names; a value naming
another point, or with a count that is not a whole number >= 1, is a ValueError the first time
any point is passed, so a typo in a test cannot pass for a run that was never killed.
``ATTNKIT_FAULT_RANK`` (optional) restricts the kill to the process whose ``RANK`` (torchrun)
is that number; a single process has rank 0.
"""

from __future__ import annotations

import os
import signal

__all__ = ["ENV", "POINTS", "RANK_ENV", "point"]

ENV = "ATTNKIT_FAULT"
RANK_ENV = "ATTNKIT_FAULT_RANK"

POINTS = (
    "after-set-aside",  # --overwrite moved the old run aside; nothing of the new run written
    "after-weights",  # a checkpoint's model files are written, state.pt is not
    "after-optimizer",  # state.pt (optimizer, RNG, data position) is written, no manifest
    "before-manifest",  # every file hashed, the manifest not yet written
    "after-manifest",  # the checkpoint is complete; older ones not yet pruned
    "in-prune",  # one older checkpoint renamed away for deletion, not yet deleted
    "in-eval",  # inside evaluation, after its first batch
)

_passed: dict[str, int] = {}


def _parse(value: str) -> tuple[str, int]:
    name, _, count = value.strip().partition("@")
    if name not in POINTS:
        raise ValueError(
            f"{ENV}={value!r} names no kill point; expected one of {', '.join(POINTS)}"
        )
    if not count:
        return name, 1
    if not count.isdigit() or int(count) < 1:
        raise ValueError(f"{ENV}={value!r}: the count after '@' must be a whole number >= 1")
    return name, int(count)


def point(name: str) -> None:
    """Pass the kill point ``name``: SIGKILL this process if ``ATTNKIT_FAULT`` asks for it here
    and now (its occurrence count reached, and ``ATTNKIT_FAULT_RANK`` unset or this rank)."""
    value = os.environ.get(ENV)
    if not value:
        return
    want, nth = _parse(value)
    if name not in POINTS:  # pragma: no cover - a misspelt point in attnkit itself
        raise ValueError(f"unknown kill point {name!r}; expected one of {', '.join(POINTS)}")
    if want != name:
        return
    rank = os.environ.get(RANK_ENV, "").strip()
    if rank and rank != os.environ.get("RANK", "0"):
        return
    _passed[name] = _passed.get(name, 0) + 1
    if _passed[name] == nth:
        os.kill(os.getpid(), signal.SIGKILL)
