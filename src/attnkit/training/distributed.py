"""torchrun support: process group set-up from the environment, rank-0 gating, reductions.

Under ``torchrun`` the variables RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT are
set; :func:`init` then joins the process group (gloo on CPU, nccl on CUDA). Without them it is
a single process and every helper here is a no-op.
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import ParamSpec, TypeVar

import torch
import torch.distributed as dist

from attnkit._util.devices import resolve_device

_P = ParamSpec("_P")
_R = TypeVar("_R")


@dataclass(frozen=True)
class Dist:
    """This process's place in the run: ``rank`` of ``world_size`` processes, ``local_rank``
    on its machine, its ``device``, and whether :func:`init` made the process group
    (``owns_group``). The default is a single process on the CPU.

    Examples:
        >>> Dist(device=torch.device("cpu")).world_size
        1
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False  # init() made the process group (so shutdown() ends it)

    @property
    def is_main(self) -> bool:
        """True on rank 0, the process that writes files and logs.

        Examples:
            >>> Dist().is_main
            True
        """
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """True when there is more than one process (collectives run).

        Examples:
            >>> Dist(rank=1, world_size=2).enabled
            True
        """
        return self.world_size > 1


def init(device: str = "auto", field: str = "train.device") -> Dist:
    """Join the torchrun process group if there is one; pick this process's device
    (``field``: the setting's name in messages).

    Under torchrun (``RANK`` set and ``WORLD_SIZE`` > 1) the group is joined (nccl on CUDA,
    gloo on CPU) unless the caller has one already, and a CUDA process takes the device
    ``cuda:LOCAL_RANK``.

    Args:
        device: "auto", "cpu", "cuda", ...
        field: the setting's name in error messages.

    Returns:
        The :class:`Dist`.

    Raises:
        ValueError: ``device`` is unknown or not available here.

    Examples:
        >>> init("cpu")  # without torchrun
        Dist(rank=0, world_size=1, local_rank=0, device=device(type='cpu'), owns_group=False)
    """
    dev = resolve_device(device, field)
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Dist(device=dev)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if dev.type == "cuda":
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
        backend = "nccl"
    else:
        backend = "gloo"
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group(backend=backend, rank=rank, world_size=world)
    return Dist(rank=rank, world_size=world, local_rank=local, device=dev, owns_group=owns)


def mean(value: torch.Tensor, d: Dist) -> torch.Tensor:
    """The mean of ``value`` over all processes (itself when single).

    Args:
        value: a tensor of any shape, e.g. a 0-d loss, the same shape on every process.
        d: this process's place in the process group.

    Returns:
        A detached tensor of the same shape (``value`` itself for a single process).

    Examples:
        >>> float(mean(torch.tensor(2.0), Dist()))
        2.0
    """
    if not d.enabled:
        return value
    value = value.detach().clone()
    dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value / d.world_size


def total(value: torch.Tensor, d: Dist) -> torch.Tensor:
    """The sum of ``value`` over all processes (itself when single); every process gets the
    same result, so decisions made from it agree.

    Args:
        value: a tensor of any shape, the same shape on every process.
        d: this process's place in the process group.

    Returns:
        A detached tensor of the same shape (``value`` itself for a single process).

    Examples:
        >>> float(total(torch.tensor(3.0), Dist()))
        3.0
    """
    if not d.enabled:
        return value
    value = value.detach().clone()
    dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value


def shard(n: int, d: Dist) -> list[int]:
    """This process's share of ``n`` items: every ``world_size``-th, from its rank.

    Args:
        n: the number of items.
        d: this process's place in the process group.

    Returns:
        The indices this process takes.

    Examples:
        >>> shard(5, Dist(rank=1, world_size=2))
        [1, 3]
    """
    return list(range(d.rank, n, d.world_size))


def barrier(d: Dist) -> None:
    """Wait until every process gets here (nothing for a single process).

    Args:
        d: this process's place in the process group.

    Examples:
        >>> barrier(Dist())  # a single process: returns at once
    """
    if d.enabled:
        dist.barrier()


def shutdown(d: Dist) -> None:
    """End the process group :func:`init` made (one the caller made is left to it).

    Args:
        d: what :func:`init` returned.

    Examples:
        >>> shutdown(init("cpu"))
    """
    if d.enabled and d.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def run_in_group(d: Dist, fn: Callable[_P, _R], *args: _P.args, **kwargs: _P.kwargs) -> _R:
    """``fn(*args, **kwargs)``, then :func:`shutdown`, with nothing of ``fn``'s left alive.

    A DDP wrapper's reducer holds the process group. Freed after the group was destroyed, it
    runs the gloo group's destructor, which joins the group's worker threads while holding the
    GIL; a worker still releasing the last all-reduce's tensors waits for the GIL, and the
    process hangs for ever (about one run in six on two cores, the other rank long gone).
    Freed while the group is still registered, it only drops a reference, and
    ``destroy_process_group`` then ends the group with the GIL released. So the work that
    holds the wrapper runs in ``fn``, whose locals are gone once it returns; on an error the
    traceback's frames are cleared first, for the same reason.

    Args:
        d: what :func:`init` returned; its group is shut down at the end.
        fn: the work to run in the group.
        args: positional arguments of ``fn``.
        kwargs: keyword arguments of ``fn``.

    Returns:
        What ``fn`` returns.

    Examples:
        >>> summary = run_in_group(d, train, cfg, d, out)
    """
    try:
        return fn(*args, **kwargs)
    except BaseException as e:
        if d.enabled:
            traceback.clear_frames(e.__traceback__)
        raise
    finally:
        shutdown(d)
