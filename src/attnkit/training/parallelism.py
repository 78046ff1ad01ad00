"""How a torchrun run spreads the model over its processes (``train.parallel``), in one place
for the loop: ``"ddp"`` (a full replica per process, gradients averaged by DDP) or ``"fsdp"``
(FSDP2 shards of parameters, gradients and optimizer state; :mod:`attnkit.training.fsdp`).

    par = Parallel(tc.parallel, d, compile=tc.compile)   # checks the choice fits the launch
    par.prepare(raw)                  # before the optimizer is made (FSDP shards in place)
    model = par.wrap(model)           # DDP wrapper, or the sharded model itself
    with par.no_sync(model): ...      # a micro-step whose gradients are not reduced yet
    par.save_model(raw, out, tok)     # the best model, a normal checkpoint (every process)
    par.save_checkpoint(...); par.load_checkpoint(...)

A single process is a "ddp" run of one. Every method is called by every process: a sharded
model is gathered and saved collectively, so rank 0 alone must not call them.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from attnkit import checkpoints as ckpt_io
from attnkit._util import checks
from attnkit.training import checkpointing, distributed, fsdp

if TYPE_CHECKING:  # pragma: no cover - for static tools only
    from tokenizers import Tokenizer

    from attnkit.models.common import ModelBase

__all__ = ["KINDS", "Parallel"]

KINDS = ("ddp", "fsdp")


class Parallel:
    """How the loop spreads the model over the processes: ``kind`` "ddp" (a replica per
    process, DDP averaging gradients; a single process is a "ddp" run of one) or "fsdp"
    (FSDP2 shards). Every method is called by every process.

    Args:
        kind: "ddp" or "fsdp" (``train.parallel``).
        d: this process's place in the process group.
        compile: whether the run compiles the model (checked against FSDP's support).

    Raises:
        ValueError: ``kind`` is neither, or "fsdp" does not fit the launch
            (:func:`attnkit.training.fsdp.check_supported`).

    Examples:
        >>> Parallel("ddp", distributed.init("cpu")).sharded
        False
    """

    def __init__(self, kind: str, d: distributed.Dist, compile: bool = False):
        if kind not in KINDS:
            checks.fail("train.parallel", kind, " or ".join(repr(k) for k in KINDS))
        if kind == "fsdp":
            fsdp.check_supported(d, compile)
        self.kind, self.d = kind, d

    @property
    def sharded(self) -> bool:
        """True for "fsdp": the parameters are sharded over the processes.

        Examples:
            >>> Parallel("ddp", d).sharded
            False
        """
        return self.kind == "fsdp"

    def prepare(self, raw: ModelBase) -> None:
        """Shard ``raw`` in place for "fsdp" (nothing for "ddp"); called before the optimizer
        takes its parameters.

        Args:
            raw: the unwrapped model, on this process's device.

        Examples:
            >>> par.prepare(raw)
        """
        if self.sharded:
            fsdp.shard(raw, self.d)

    def wrap(self, model: nn.Module) -> nn.Module:
        """The module the loop trains: a DDP wrapper for a multi-process "ddp" run, else
        ``model`` itself (a sharded model needs no wrapper).

        Args:
            model: the (possibly compiled) model.

        Returns:
            The module to call in the training steps.

        Examples:
            >>> model = par.wrap(torch.compile(raw))
        """
        if self.kind == "ddp" and self.d.enabled:
            d = self.d
            return DDP(model, device_ids=[d.local_rank] if d.device.type == "cuda" else None)
        return model

    def no_sync(self, model: nn.Module) -> contextlib.AbstractContextManager[Any]:
        """A context in which backward passes do not reduce gradients over the processes yet
        (the micro-steps before the last of a gradient-accumulation step); a no-op for a
        single process.

        Args:
            model: the module :meth:`wrap` returned.

        Returns:
            A context manager.

        Examples:
            >>> with par.no_sync(model): loss.backward()
        """
        if isinstance(model, DDP):
            return model.no_sync()
        if self.sharded:
            return fsdp.gradient_sync_off(model)
        return contextlib.nullcontext()

    def save_model(self, raw: ModelBase, out: Path, tok: Tokenizer | None) -> None:
        """``raw`` as a normal attnkit checkpoint in ``out`` (rank 0 writes it; a sharded
        model is gathered first). Every process calls it.

        Args:
            raw: the unwrapped model (sharded for "fsdp").
            out: the directory to write ``config.json``, the weights and the tokenizer to.
            tok: the tokenizer saved beside the weights, or None.

        Examples:
            >>> par.save_model(raw, Path("runs/char"), tok)
        """
        copy = fsdp.full_copy(raw, self.d) if self.sharded else raw
        if self.d.is_main and copy is not None:
            ckpt_io.save(copy, out, tokenizer=tok)
        distributed.barrier(self.d)

    def save_checkpoint(
        self,
        out: Path,
        raw: ModelBase,
        tok: Tokenizer | None,
        optimizer: torch.optim.Optimizer,
        state: dict[str, Any],
        keep: int,
    ) -> None:
        """Write the checkpoint ``out/checkpoints/step-N`` (N = ``state["step"]``) and prune
        all but the newest ``keep``: a sharded one written by every process for "fsdp", a
        normal one written by rank 0 for "ddp" (see :mod:`attnkit.training.checkpointing`).

        Args:
            out: the run directory.
            raw: the unwrapped model.
            tok: the tokenizer saved with it, or None.
            optimizer: the optimizer whose state is saved.
            state: step, best val loss, data RNG state and the other plain values to resume.
            keep: how many checkpoints to keep (0: all).

        Examples:
            >>> par.save_checkpoint(out, raw, tok, optimizer, {"step": 500, **rest}, keep=2)
        """
        if self.sharded:
            checkpointing.save_sharded_checkpoint(out, raw, tok, optimizer, state, keep, self.d)
        elif self.d.is_main:
            checkpointing.save_checkpoint(out, raw, tok, optimizer, state, keep)

    def load_checkpoint(
        self, directory: Path, raw: ModelBase, optimizer: torch.optim.Optimizer
    ) -> dict[str, Any]:
        """Restore ``raw`` and ``optimizer`` (and the RNG states) from the checkpoint
        ``directory``; return the rest of its ``state.pt``.

        Args:
            directory: a ``checkpoints/step-N`` directory.
            raw: the unwrapped model (prepared, for "fsdp").
            optimizer: the optimizer to restore.

        Returns:
            The saved state: ``step``, ``best_val_loss``, ``data_rng`` and the rest.

        Raises:
            ValueError: the checkpoint was written with the other ``train.parallel``.

        Examples:
            >>> state = par.load_checkpoint(latest_checkpoint(out), raw, optimizer)
        """
        sharded = checkpointing.is_sharded(directory)
        if sharded != self.sharded:
            wrote = "fsdp" if sharded else "ddp"
            raise ValueError(
                f"--resume: {directory} was written by a train.parallel={wrote!r} run and this "
                f"run has train.parallel={self.kind!r}; expected the same setting (a sharded "
                f"checkpoint becomes a normal one with attnkit.training.fsdp.consolidate)"
            )
        if sharded:
            return checkpointing.load_sharded_checkpoint(directory, raw, optimizer)
        return checkpointing.load_checkpoint(directory, raw, optimizer)
