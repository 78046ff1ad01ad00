"""``attnkit explain`` (which attention backend a call gets, and why) and ``attnkit version``.

attnkit explain --seq-len 16384 --causal --window 512 --grad
attnkit version
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from attnkit.cli.types import DEVICE_DTYPES, UsageError, add_device_args, positive_int, probability

DTYPES = (*DEVICE_DTYPES, "float64")


def no_arguments(parser: argparse.ArgumentParser) -> None:
    """For commands without options."""


def version_command(args: argparse.Namespace) -> int:
    import torch

    from attnkit import __version__

    print(f"attnkit {__version__} (torch {torch.__version__}, python {sys.version.split()[0]})")
    return 0


def explain_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--seq-len", type=positive_int, required=True, metavar="N", help="query length"
    )
    parser.add_argument(
        "--kv-len", type=positive_int, metavar="N", help="key/value length (default: --seq-len)"
    )
    parser.add_argument("--batch", type=positive_int, default=1, metavar="B")
    parser.add_argument("--heads", type=positive_int, default=8, metavar="H", help="query heads")
    parser.add_argument(
        "--kv-heads", type=positive_int, metavar="H", help="key/value heads (default: --heads)"
    )
    parser.add_argument("--head-dim", type=positive_int, default=64, metavar="D")
    parser.add_argument("--causal", action=argparse.BooleanOptionalAction, default=False)
    parser.add_argument(
        "--window", type=positive_int, metavar="W", help="sliding window: keys each query sees"
    )
    parser.add_argument("--alibi", action="store_true", help="ALiBi distance bias")
    parser.add_argument("--mask", action="store_true", help="a dense boolean mask (B, 1, N, N)")
    parser.add_argument("--padding", action="store_true", help="a key padding mask (B, N)")
    parser.add_argument("--documents", action="store_true", help="packed documents (document ids)")
    parser.add_argument("--dropout", type=probability, default=0.0, metavar="P")
    parser.add_argument("--weights", action="store_true", help="ask for the attention weights")
    parser.add_argument("--grad", action="store_true", help="inputs that need gradients (training)")
    parser.add_argument(
        "--backend", default="auto", choices=("auto", "math", "sdpa", "flex", "windowed")
    )
    # the CPU's rules unless asked: its plans are made on the meta device, allocating nothing
    add_device_args(parser, dtypes=DTYPES, dtype_help="the inputs'", device_default="cpu")
    parser.epilog = "--device: the device whose rules apply; CPU plans are made without allocating"


def explain_command(args: argparse.Namespace) -> int:
    import torch

    from attnkit._util.devices import resolve_device
    from attnkit.attention import explain

    where = resolve_device(args.device, "--device")
    # any --dtype on any device: the question is which backend attention() would pick for it
    dtype = getattr(torch, args.dtype)
    kv_len = args.kv_len or args.seq_len
    kv_heads = args.kv_heads or args.heads
    for what, n in (
        ("--batch x --heads x --seq-len x --head-dim", args.batch * args.heads * args.seq_len),
        ("--batch x --kv-heads x --kv-len x --head-dim", args.batch * kv_heads * kv_len),
        ("--batch x --seq-len x --kv-len", args.batch * args.seq_len * kv_len),
    ):
        if n * (args.head_dim if "head-dim" in what else 1) >= 2**62:
            raise UsageError(f"{what} is too large for a tensor (over 2**62 elements)")
    # CPU plans are made on the meta device: shapes and dtypes only, nothing is allocated.
    device = torch.device("meta") if where.type == "cpu" else where

    def empty(*shape: int, dt: torch.dtype = dtype, grad: bool = False) -> torch.Tensor:
        return torch.empty(*shape, dtype=dt, device=device, requires_grad=grad)

    q = empty(args.batch, args.heads, args.seq_len, args.head_dim, grad=args.grad)  # (B, H, T, D)
    k = empty(args.batch, kv_heads, kv_len, args.head_dim, grad=args.grad)  # (B, Hkv, Tk, D)
    v = empty(args.batch, kv_heads, kv_len, args.head_dim, grad=args.grad)  # (B, Hkv, Tk, D)
    extra: dict[str, Any] = {}
    if args.mask:
        extra["mask"] = empty(args.batch, 1, args.seq_len, kv_len, dt=torch.bool)
    if args.padding:
        extra["valid_key_mask"] = empty(args.batch, kv_len, dt=torch.bool)
    if args.documents:
        extra["document_ids"] = empty(args.batch, kv_len, dt=torch.long)
    plan = explain(
        q,
        k,
        v,
        causal=args.causal,
        window=args.window,
        bias="alibi" if args.alibi else None,
        dropout_p=args.dropout,
        backend=args.backend,
        return_weights=args.weights,
        **extra,
    )
    print(f"{plan.backend}: {plan.reason}")
    return 0
