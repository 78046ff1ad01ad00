"""Argument types of the command line, the options several commands declare alike
(``--threads`` with :func:`set_threads`; ``--device``/``--dtype`` with :func:`add_device_args`
and :func:`device_and_dtype`), and :class:`UsageError`.

Each type is an argparse ``type=`` callable that converts the text and asks the library's
validator (:mod:`attnkit._util.checks`) whether the value is allowed; its error names the text
given and what was expected; argparse turns it into the one-line ``attnkit: error: ...`` and exit status 2.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, TypeVar

from attnkit._util import checks

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
    "DEVICE_DTYPES",
    "UsageError",
    "add_device_args",
    "device_and_dtype",
    "index_list",
    "non_negative_int",
    "positive_float",
    "positive_int",
    "probability",
    "set_threads",
    "size_list",
    "threads_argument",
]

N = TypeVar("N", int, float)


class UsageError(Exception):
    """Bad input from the command line; printed as one line, exit status 2."""


def _argument_type(
    name: str, convert: Callable[[str], N], check: Callable[[str, N], N], expected: str
) -> Callable[[str], N]:
    """An argparse type called ``name``: ``convert(text)`` if the shared validator ``check``
    accepts it, else an error naming the text (argparse names the option)."""

    def parse(text: str) -> N:
        try:
            return check("value", convert(text))
        except ValueError:  # not a number, or one ``check`` refuses
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None

    parse.__name__ = parse.__qualname__ = name
    parse.__doc__ = f"argparse type: {expected}."
    return parse


positive_int = _argument_type("positive_int", int, checks.positive_int, "a positive integer")
non_negative_int = _argument_type(
    "non_negative_int", int, checks.non_negative_int, "an integer >= 0"
)
positive_float = _argument_type("positive_float", float, checks.positive_float, "a positive number")
probability = _argument_type("probability", float, checks.probability, "a number in [0, 1)")


def size_list(text: str) -> list[int]:
    """``"1k,2k,4096"`` -> ``[1024, 2048, 4096]``; ``k`` means 1024."""
    sizes = []
    for part in text.split(","):
        item = part.strip().lower()
        mult = 1024 if item.endswith("k") else 1
        digits = item[:-1] if mult > 1 else item
        if not digits.isdigit() or int(digits) < 1:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated positive sizes such as 1024,2k,4k; got {part.strip()!r} in {text!r}"
            )
        sizes.append(int(digits) * mult)
    return sizes


def index_list(text: str) -> list[int]:
    """``"0,3"`` -> ``[0, 3]``: comma-separated indices >= 0."""
    out = []
    for part in text.split(","):
        item = part.strip()
        if not item.isdigit():
            raise argparse.ArgumentTypeError(
                f"expected comma-separated indices >= 0 such as 0,3; got {text!r}"
            )
        out.append(int(item))
    return out


def threads_argument(parser: argparse.ArgumentParser) -> None:
    """``--threads N``: torch's CPU threads for the run (applied by :func:`set_threads`)."""
    parser.add_argument(
        "--threads", type=positive_int, metavar="N", help="torch threads (default: as is)"
    )


def set_threads(threads: int | None) -> None:
    """Give torch ``threads`` CPU threads; None leaves its choice."""
    if threads:
        import torch  # here: the command line starts without torch

        torch.set_num_threads(threads)


# the dtypes --dtype offers (attnkit._util.devices.DTYPES; listed here so that parsing the
# command line does not import torch)
DEVICE_DTYPES = ("float32", "bfloat16", "float16")


def add_device_args(
    parser: argparse.ArgumentParser,
    *,
    dtypes: Sequence[str] = DEVICE_DTYPES,
    dtype_help: str = "weights and compute",
    device_default: str = "auto",
) -> None:
    """``--device auto|cpu|cuda[:N]|mps`` and ``--dtype float32|bfloat16|float16``, decided by
    :func:`device_and_dtype` (through :mod:`attnkit._util.devices`, the one place devices and
    dtypes are decided)."""
    parser.add_argument(
        "--device",
        default=device_default,
        metavar="auto|cpu|cuda[:N]|mps",
        help=f"where the model runs (default {device_default}; auto: CUDA when present, else "
        f"MPS on macOS, else the CPU)",
    )
    parser.add_argument(
        "--dtype",
        default="float32",
        choices=tuple(dtypes),
        help=f"{dtype_help} dtype (default float32; float16 needs CUDA or MPS; bfloat16 on a "
        f"CPU without native bf16 is emulated and slow)",
    )


def device_and_dtype(args: argparse.Namespace) -> tuple[torch.device, torch.dtype]:
    """The torch device and dtype that ``--device`` and ``--dtype`` name; a device this
    machine lacks, or a dtype the device cannot run, is a ValueError naming it (one line on
    stderr, exit status 2)."""
    from attnkit._util.devices import resolve_device, resolve_dtype

    device = resolve_device(args.device, "--device")
    return device, resolve_dtype(args.dtype, device, "--dtype")
