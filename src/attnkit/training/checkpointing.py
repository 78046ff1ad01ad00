"""Training checkpoints: ``checkpoints/step-NNNNNN/`` directories that a run resumes from.

Each holds the model (an attnkit checkpoint: weights, ``config.json``, ``tokenizer.json``),
``state.pt`` (optimizer, step, RNG states and data position, all tensors and plain values so
``torch.load(weights_only=True)`` reads it) and a ``manifest.json`` with the SHA-256 of every
file, written last: a checkpoint without one, or whose files do not match it, is skipped on
resume with a warning and the previous one is used.

A checkpoint that goes (a stale one being rewritten, or an old one pruned) is first renamed
to a hidden ``checkpoints/.step-NNNNNN.deleting`` and then deleted, so a kill in the middle of
the deletion leaves no half-deleted ``step-*`` behind; the next write sweeps such leftovers.
The named kill points of :mod:`attnkit._util.faults` (``after-weights``, ``after-optimizer``,
``before-manifest``, ``after-manifest``, ``in-prune``) sit between the steps of a write.

A ``train.parallel='fsdp'`` run writes sharded checkpoints instead
(:func:`save_sharded_checkpoint`, every process together): ``shards/`` (each process's part
of the weights and optimizer state, through ``torch.distributed.checkpoint`` with JSON
metadata, :mod:`attnkit.training.dcp_storage`), ``config.json`` and ``tokenizer.json`` (no
weights file), ``state.pt`` without the optimizer, and the same manifest, which lists the
shard files too. :func:`attnkit.training.fsdp.consolidate` turns one into a normal checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from attnkit import checkpoints as ckpt_io
from attnkit._util import faults
from attnkit._util.fs import atomic_write, atomic_write_json, fsync_dir
from attnkit.models.common import ModelBase

if TYPE_CHECKING:  # pragma: no cover - for static tools only
    from tokenizers import Tokenizer

    from attnkit.training.distributed import Dist

__all__ = [
    "MANIFEST_NAME",
    "SHARDS_DIR",
    "STATE_NAME",
    "damaged_checkpoints",
    "is_sharded",
    "latest_checkpoint",
    "load_checkpoint",
    "load_sharded_checkpoint",
    "save_checkpoint",
    "save_sharded_checkpoint",
    "verify_checkpoint",
]

logger = logging.getLogger(__name__)

STATE_NAME = "state.pt"
MANIFEST_NAME = "manifest.json"
SHARDS_DIR = "shards"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _discard(directory: Path, point: str | None = None) -> None:
    """Rename ``directory`` to a hidden ``.NAME.deleting`` beside it, then delete it
    (``point``: the kill point between the two)."""
    gone = directory.with_name(f".{directory.name}.deleting")
    if gone.exists():
        shutil.rmtree(gone)
    os.replace(directory, gone)
    fsync_dir(directory.parent)
    if point:
        faults.point(point)
    shutil.rmtree(gone, ignore_errors=True)


def save_checkpoint(
    out: Path,
    raw_model: ModelBase,
    tok: Tokenizer | None,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
    keep: int,
) -> Path:
    """Write ``checkpoints/step-N/`` (each file atomically, manifest last); prune old ones.
    A checkpoint of the same step already there is replaced; rank 0 alone calls this.

    Args:
        out: the run directory.
        raw_model: the unwrapped model whose weights are saved.
        tok: the tokenizer saved with it, or None.
        optimizer: the optimizer whose state goes into ``state.pt``.
        state: ``step`` and the other plain values to resume from (best val loss, data RNG).
        keep: how many checkpoints to keep, newest first (0: all).

    Returns:
        The checkpoint directory.

    Examples:
        >>> save_checkpoint(Path("runs/char"), model, tok, opt, {"step": 500}, keep=2).name
        'step-000500'
    """
    root = out / "checkpoints"
    directory = root / f"step-{state['step']:06d}"
    for leftover in root.glob(".step-*.deleting"):  # deletions a kill interrupted
        shutil.rmtree(leftover, ignore_errors=True)
    if directory.exists():
        _discard(directory)
    ckpt_io.save(raw_model, directory, tokenizer=tok)
    faults.point("after-weights")
    payload = dict(state, optimizer=optimizer.state_dict(), rng_cpu=torch.get_rng_state())
    if torch.cuda.is_available():
        payload["rng_cuda"] = torch.cuda.get_rng_state_all()
    atomic_write(directory / STATE_NAME, lambda tmp: torch.save(payload, tmp))
    faults.point("after-optimizer")
    files = {
        p.name: _sha256(p)
        for p in sorted(directory.iterdir())
        if p.is_file() and not p.name.startswith(".")
    }
    _finish(root, directory, state["step"], files, keep)
    return directory


def _finish(root: Path, directory: Path, step: int, files: dict[str, str], keep: int) -> None:
    """The manifest (the checkpoint is complete once it is written), then pruning."""
    faults.point("before-manifest")
    atomic_write_json(directory / MANIFEST_NAME, {"step": step, "files": files})
    faults.point("after-manifest")
    for old in sorted(root.glob("step-*"))[:-keep] if keep > 0 else []:
        _discard(old, "in-prune")


def is_sharded(directory: Path) -> bool:
    """True for a checkpoint a ``train.parallel='fsdp'`` run wrote (it has ``shards/``).

    Args:
        directory: a ``checkpoints/step-N`` directory.

    Examples:
        >>> is_sharded(Path("runs/char/checkpoints/step-000500"))
        False
    """
    return (directory / SHARDS_DIR).is_dir()


def save_sharded_checkpoint(
    out: Path,
    model: ModelBase,
    tok: Tokenizer | None,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
    keep: int,
    d: Dist,
) -> Path:
    """Every process calls this: ``checkpoints/step-N/`` with each process's shards, then
    (rank 0) the model config, ``state.pt`` and the manifest; old ones pruned.

    Args:
        out: the run directory.
        model: the FSDP-sharded model.
        tok: the tokenizer saved with it, or None.
        optimizer: the optimizer whose sharded state is saved.
        state: ``step`` and the other plain values to resume from.
        keep: how many checkpoints to keep, newest first (0: all).
        d: this process's place in the process group.

    Returns:
        The checkpoint directory.

    Examples:
        >>> save_sharded_checkpoint(out, model, tok, opt, {"step": 500}, keep=2, d=d)
    """
    from attnkit.training import distributed, fsdp

    root = out / "checkpoints"
    directory = root / f"step-{state['step']:06d}"
    if d.is_main:
        for leftover in root.glob(".step-*.deleting"):
            shutil.rmtree(leftover, ignore_errors=True)
        if directory.exists():
            _discard(directory)
        directory.mkdir(parents=True)
    distributed.barrier(d)
    fsdp.save_sharded(model, optimizer, directory / SHARDS_DIR)  # collective
    if d.is_main:
        fsdp.write_model_files(model, directory, tok)
    faults.point("after-weights")
    if d.is_main:
        payload = dict(
            state, rng_cpu=torch.get_rng_state(), parallel="fsdp", world_size=d.world_size
        )
        if torch.cuda.is_available():
            payload["rng_cuda"] = torch.cuda.get_rng_state_all()
        atomic_write(directory / STATE_NAME, lambda tmp: torch.save(payload, tmp))
        faults.point("after-optimizer")
        files = {
            p.relative_to(directory).as_posix(): _sha256(p)
            for p in sorted(directory.rglob("*"))
            if p.is_file() and not p.name.startswith(".")
        }
        _finish(root, directory, state["step"], files, keep)
    distributed.barrier(d)
    return directory


def load_sharded_checkpoint(
    directory: Path, model: ModelBase, optimizer: torch.optim.Optimizer
) -> dict[str, Any]:
    """Every process calls this: the shards of ``directory`` into the sharded ``model`` and
    ``optimizer``, RNG states restored; the rest of ``state.pt`` returned.

    Args:
        directory: a checkpoint :func:`save_sharded_checkpoint` wrote.
        model: the model, sharded as when saved.
        optimizer: its optimizer.

    Returns:
        The saved state without the RNG states (``step``, ``best_val_loss``, ...).

    Examples:
        >>> state = load_sharded_checkpoint(latest_checkpoint(out), model, opt)
    """
    from attnkit.training import fsdp

    state = ckpt_io.read_state(directory / STATE_NAME, {"rng_cpu": torch.Tensor, "step": int})
    fsdp.load_sharded(model, optimizer, directory / SHARDS_DIR)
    torch.set_rng_state(state.pop("rng_cpu"))
    cuda_states = state.pop("rng_cuda", None)
    if cuda_states is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda_states)
    return state


def verify_checkpoint(directory: Path) -> str | None:
    """None when the checkpoint is complete and intact (its manifest is there and every
    file in it matches its SHA-256), else why not.

    Args:
        directory: a ``checkpoints/step-N`` directory.

    Returns:
        None, or the reason in words.

    Examples:
        >>> verify_checkpoint(Path("runs/char/checkpoints/step-000500"))  # None: intact
    """
    manifest = directory / MANIFEST_NAME
    if not manifest.is_file():
        return "no manifest.json (the write did not finish)"
    try:
        files = json.loads(manifest.read_text())["files"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        return f"unreadable manifest.json ({e})"
    for name, digest in files.items():
        p = directory / name
        if not p.is_file():
            return f"{name} is missing"
        if _sha256(p) != digest:
            return f"{name} does not match its SHA-256 in manifest.json"
    return None


def latest_checkpoint(out: Path) -> Path | None:
    """The newest complete, intact checkpoint; damaged newer ones are reported (a logged
    warning) and skipped.

    Args:
        out: the run directory.

    Returns:
        The ``out/checkpoints/step-N`` directory, or None when there is none.

    Examples:
        >>> latest_checkpoint(Path("runs/char"))  # Path('runs/char/checkpoints/step-002000')
    """
    for directory in sorted((out / "checkpoints").glob("step-*"), reverse=True):
        problem = verify_checkpoint(directory)
        if problem is None:
            return directory
        logger.warning("attnkit: skipping checkpoint %s: %s", directory, problem)
    return None


def damaged_checkpoints(out: Path) -> list[tuple[Path, str]]:
    """Checkpoints whose manifest was written (so the write finished) but whose files no longer
    match it, with the reason: real damage, unlike a write that a kill cut short.

    Args:
        out: the run directory.

    Returns:
        ``(directory, reason)`` pairs, oldest first.

    Examples:
        >>> damaged_checkpoints(Path("runs/char"))  # [] when none is damaged
    """
    found = []
    for directory in sorted((out / "checkpoints").glob("step-*")):
        if (directory / MANIFEST_NAME).is_file():
            problem = verify_checkpoint(directory)
            if problem is not None:
                found.append((directory, problem))
    return found


def load_checkpoint(
    directory: Path, raw_model: ModelBase, optimizer: torch.optim.Optimizer
) -> dict[str, Any]:
    """Weights into ``raw_model``, optimizer state and RNG states restored; the rest of
    ``state.pt`` (step, data RNG, ...) returned. ``state.pt`` is read with
    ``weights_only=True``.

    Args:
        directory: a checkpoint :func:`save_checkpoint` wrote.
        raw_model: the unwrapped model to load the weights into.
        optimizer: its optimizer.

    Returns:
        The saved state without the optimizer and RNG states.

    Raises:
        CheckpointError: the weights or the optimizer state do not fit the model.

    Examples:
        >>> state = load_checkpoint(latest_checkpoint(out), model, opt); state["step"]
        2000
    """
    weights = directory / ckpt_io.WEIGHTS_NAME
    # state.pt first (weights_only: a pickle payload is refused unrun), then the weights
    state = ckpt_io.read_state(
        directory / STATE_NAME, {"optimizer": dict, "rng_cpu": torch.Tensor, "step": int}
    )
    ckpt_io.check_and_load(
        raw_model, ckpt_io.read_tensors(weights), weights, skip=tuple(raw_model.tied_keys())
    )
    try:
        optimizer.load_state_dict(state.pop("optimizer"))
    except (KeyError, TypeError, ValueError) as e:
        raise ckpt_io.CheckpointError(
            f"{directory / STATE_NAME}: the optimizer state does not fit this model: {e}"
        ) from None
    torch.set_rng_state(state.pop("rng_cpu"))
    cuda_states = state.pop("rng_cuda", None)
    if cuda_states is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda_states)
    return state
