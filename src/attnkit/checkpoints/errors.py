"""The one error of checkpoint loading (a ValueError, so the command line exits 2)."""

from __future__ import annotations

__all__ = ["CheckpointError"]


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message names the file and the problem.

    Examples:
        >>> try: attnkit.load("runs/broken")
        ... except CheckpointError as e: print(e)
    """
