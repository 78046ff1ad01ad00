"""FSDP2 (``torch.distributed.fsdp.fully_shard``): parameters, gradients and optimizer state
split over the processes of a torchrun run, and the sharded checkpoints that go with it.

    shard(model, d)                     # every block, then the root; before the optimizer
    save_sharded(model, opt, path)      # collective: each process writes its shards (DCP)
    load_sharded(model, opt, path)      # collective: reads them back into the shards
    full_copy(model, d)                 # collective: rank 0 gets an unsharded CPU copy
    consolidate(step_dir, dest)         # one process, no process group: a normal checkpoint

Each block is one FSDP unit (its weights are gathered for its forward and backward and freed
after), and the root holds the rest (embeddings, final norm, head; a tied head shares the
token table there). Gradients are reduce-scattered and averaged over the processes as DDP
averages them, so the loop's loss scaling is the same for both; the optimizer, made after
:func:`shard`, holds only this process's shard of each state.

Sharded checkpoints go through ``torch.distributed.checkpoint`` (DCP) with the JSON metadata
of :mod:`attnkit.training.dcp_storage`, so reading one unpickles nothing beyond
``torch.load(weights_only=True)``. DCP assembles each tensor from whichever shards hold it,
which is how :func:`consolidate` reads one into a single process. Every process must see the same
directory (one machine, or a file system all nodes share), as DCP requires.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from attnkit.training import dcp_storage

if TYPE_CHECKING:  # pragma: no cover - for static tools only
    from tokenizers import Tokenizer

    from attnkit.models.common import ModelBase
    from attnkit.training.distributed import Dist

__all__ = [
    "available",
    "check_supported",
    "consolidate",
    "full_copy",
    "gradient_sync_off",
    "load_sharded",
    "load_weights",
    "save_sharded",
    "shard",
    "write_model_files",
]

logger = logging.getLogger(__name__)


def available() -> bool:
    """True when this torch has FSDP2 (``torch.distributed.fsdp.fully_shard``, torch >= 2.6).

    Examples:
        >>> available()  # True on torch >= 2.6
        True
    """
    try:
        from torch.distributed.fsdp import fully_shard  # noqa: F401
    except ImportError:
        return False
    return True


def check_supported(d: Dist, compile: bool) -> None:
    """ValueError unless FSDP can run here: several processes, FSDP2 in this torch, no
    ``train.compile`` (not supported together here).

    Args:
        d: this process's place in the process group.
        compile: ``train.compile``.

    Raises:
        ValueError: a single process, no FSDP2 in this torch, or ``compile`` set.

    Examples:
        >>> check_supported(Dist(), compile=False)  # ValueError: a single process
    """
    if not d.enabled:
        raise ValueError(
            "train.parallel is 'fsdp' but this is a single process (WORLD_SIZE unset or 1); "
            "expected a torchrun launch of 2 or more processes (torchrun --nproc_per_node 2 "
            "-m attnkit pretrain ...), or train.parallel='ddp'"
        )
    if not available():
        raise ValueError(
            f"train.parallel is 'fsdp', which needs torch.distributed.fsdp.fully_shard "
            f"(PyTorch >= 2.6); this is torch {torch.__version__}; expected train.parallel='ddp'"
        )
    if compile:
        raise ValueError(
            "train.compile=true with train.parallel='fsdp' is not supported; expected "
            "train.compile=false, or train.parallel='ddp'"
        )


def shard(model: ModelBase, d: Dist) -> None:
    """Shard ``model`` in place over the processes of ``d``: each block, then the root.
    Collective; call it before the optimizer is made.

    Args:
        model: a model with ``blocks``, on this process's device.
        d: this process's place in the process group (several processes).

    Examples:
        >>> shard(model, d); opt = make_optimizer(model, 1e-3, 0.1, (0.9, 0.99), d.device)
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(d.device.type, (d.world_size,))
    for block in model.blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)


@contextlib.contextmanager
def gradient_sync_off(model: nn.Module) -> Iterator[None]:
    """Inside: backward accumulates local gradients without reduce-scattering them (the
    micro-steps of gradient accumulation before the last), as DDP's ``no_sync``.

    Args:
        model: a model sharded by :func:`shard`.

    Examples:
        >>> with gradient_sync_off(model): loss.backward()
    """
    model.set_requires_gradient_sync(False)  # type: ignore[operator]  # an FSDPModule
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)  # type: ignore[operator]


def _states(model: nn.Module, optimizer: torch.optim.Optimizer | None) -> dict[str, Any]:
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_state_dict

    if optimizer is None:
        return {"model": get_model_state_dict(model)}
    msd, osd = get_state_dict(model, optimizer)
    return {"model": msd, "optim": osd}


def save_sharded(model: nn.Module, optimizer: torch.optim.Optimizer, path: Path) -> None:
    """Collective: every process writes its shards of the model and optimizer to ``path``.

    Args:
        model: the sharded model.
        optimizer: its optimizer.
        path: the directory of the shards and ``metadata.json``.

    Examples:
        >>> save_sharded(model, opt, Path("runs/x/checkpoints/step-000500/shards"))
    """
    dcp_storage.save(_states(model, optimizer), path)


def load_sharded(model: nn.Module, optimizer: torch.optim.Optimizer, path: Path) -> None:
    """Collective: the model and optimizer state that :func:`save_sharded` wrote, resharded
    to this run's processes.

    Args:
        model: the sharded model to fill.
        optimizer: its optimizer.
        path: the directory :func:`save_sharded` wrote.

    Examples:
        >>> load_sharded(model, opt, Path("runs/x/checkpoints/step-000500/shards"))
    """
    from torch.distributed.checkpoint.state_dict import set_state_dict

    states = _states(model, optimizer)
    dcp_storage.load(states, path)
    set_state_dict(
        model, optimizer, model_state_dict=states["model"], optim_state_dict=states["optim"]
    )


def load_weights(model: nn.Module, path: Path) -> None:
    """One process, no process group: the model weights of a sharded checkpoint ``path``
    into an unsharded ``model`` (DCP assembles each tensor from its shards).

    Args:
        model: an unsharded model of the checkpoint's config.
        path: the ``shards/`` directory of a sharded checkpoint.

    Examples:
        >>> load_weights(build_model(cfg), Path("runs/x/checkpoints/step-000500/shards"))
    """
    state = {"model": model.state_dict()}
    with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
        warnings.filterwarnings("ignore", message=".*single process", category=UserWarning)
        dcp_storage.load(state, path, no_dist=True)
    model.load_state_dict(state["model"])


def full_copy(model: ModelBase, d: Dist) -> ModelBase | None:
    """Collective: on rank 0 an unsharded copy of ``model`` on the CPU (its weights gathered
    from every process); None on the others.

    Args:
        model: the sharded model.
        d: this process's place in the process group.

    Returns:
        The unsharded copy (with ``model``'s meta) on rank 0, else None.

    Examples:
        >>> copy = full_copy(model, d)  # rank 0: a CPU model; others: None
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from attnkit.models import build_model

    full = get_model_state_dict(
        model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )
    if not d.is_main:
        return None
    with torch.device("meta"):
        copy = build_model(model.config)
    copy.to_empty(device="cpu")
    if model.tied_keys():  # to_empty gave each name its own storage: tie them again
        copy.lm_head.proj.weight = copy.embed.tok.weight  # type: ignore[union-attr]
    copy.load_state_dict(full)
    copy.meta = model.meta
    return copy


def write_model_files(model: ModelBase, directory: Path, tok: Tokenizer | None) -> None:
    """``config.json`` and ``tokenizer.json`` of an attnkit checkpoint, without the weights
    (a sharded checkpoint holds those): what :func:`consolidate` rebuilds the model from.

    Args:
        model: the model whose config and meta are written.
        directory: the checkpoint directory (made if missing).
        tok: the tokenizer to write, or None (no ``tokenizer.json``).

    Examples:
        >>> write_model_files(model, Path("runs/x/checkpoints/step-000500"), tok)
    """
    from attnkit._util.fs import atomic_write_bytes, atomic_write_json
    from attnkit.checkpoints.format import CONFIG_NAME, FORMAT, FORMAT_VERSION, TOKENIZER_NAME

    directory.mkdir(parents=True, exist_ok=True)
    if tok is not None:
        atomic_write_bytes(directory / TOKENIZER_NAME, tok.to_str().encode())
    atomic_write_json(
        directory / CONFIG_NAME,
        {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "model": model.config.to_dict(),
            "meta": model.meta.to_dict(),
        },
    )


def consolidate(step_dir: str | Path, dest: str | Path) -> Path:
    """One process: the sharded training checkpoint ``step_dir`` (``checkpoints/step-N`` of a
    ``train.parallel='fsdp'`` run) written to ``dest`` as a normal attnkit checkpoint
    (safetensors), loadable with ``attnkit.load(dest)``. The checkpoint is verified against
    its manifest first.

    Args:
        step_dir: the sharded ``checkpoints/step-N`` directory.
        dest: the directory to write the normal checkpoint to.

    Returns:
        The directory written.

    Raises:
        ValueError: ``step_dir`` is not a sharded checkpoint, or is incomplete or damaged.

    Examples:
        >>> attnkit.load(consolidate("runs/x/checkpoints/step-000500", "runs/x-full"))
    """
    from attnkit import checkpoints as ckpt_io
    from attnkit.checkpoints.format import TOKENIZER_NAME, load_tokenizer, migrate, read_json
    from attnkit.models import build_model, config_from_dict
    from attnkit.models.meta import ModelMeta
    from attnkit.training.checkpointing import SHARDS_DIR, verify_checkpoint

    step_dir = Path(step_dir)
    if not (step_dir / SHARDS_DIR).is_dir():
        raise ValueError(
            f"{step_dir} is not a sharded checkpoint (no {SHARDS_DIR}/ in it); expected the "
            f"checkpoints/step-N directory of a train.parallel='fsdp' run"
        )
    problem = verify_checkpoint(step_dir)
    if problem is not None:
        raise ValueError(f"{step_dir}: {problem}; expected a complete, intact checkpoint")
    config_path = step_dir / ckpt_io.CONFIG_NAME
    model_fields, meta_fields = migrate(read_json(config_path), config_path)
    model = build_model(config_from_dict(model_fields))
    model.meta = ModelMeta.from_dict(meta_fields)
    load_weights(model, step_dir / SHARDS_DIR)
    tok_path = step_dir / TOKENIZER_NAME
    tok = (
        load_tokenizer(tok_path, vocab_size=model.config.vocab_size) if tok_path.is_file() else None
    )
    return ckpt_io.save(model, dest, tokenizer=tok)
