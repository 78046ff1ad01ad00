"""The ``attnkit`` command line.

Every command is one row of :data:`COMMANDS`: its words, the library function that runs it and
a one-line help. The function's module is imported only when that command runs, so
``attnkit version`` does not pay for the benchmarks, and a command whose module is missing or
broken does not take the others down.

A command's module tells the command line about its arguments in one of two ways:

* ``add_arguments(parser)`` plus the row's function taking the parsed ``argparse.Namespace``
  (returning an exit code or None); or
* only ``main(argv)``: the rest of the command line is handed over unparsed.

Adding a command (``train``, ``generate``, ``embed``, ...) is adding a row.

Bad input gives one line on stderr, ``attnkit: error: ...``, naming the value and what was
expected, and exit status 2; a ``ValueError`` from the library is reported the same way (set
``ATTNKIT_DEBUG=1`` to see its traceback instead).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

PROG = "attnkit"
USAGE_ERROR = 2


@dataclass(frozen=True)
class Command:
    """One command: ``words`` as typed, ``target`` as ``"module:function"``.

    ``arguments`` is ``"module:function"`` adding the command's options to its parser; by
    default the target module's ``add_arguments``, and if there is none the target module's
    ``main(argv)`` receives the remaining words as they are.
    """

    words: str
    target: str
    help: str
    arguments: str | None = None


COMMANDS: tuple[Command, ...] = (
    Command(
        "bench attention",
        "attnkit.bench.attention:run",
        "time and peak memory of every attention backend next to raw PyTorch SDPA",
    ),
    Command(
        "bench variants",
        "attnkit.bench.variants:run",
        "speed, memory and error of the approximate attention variants",
    ),
    Command(
        "bench embed",
        "attnkit.bench.embed:run",
        "sentence-embedding throughput of attnkit next to sentence-transformers (MiniLM)",
    ),
    Command(
        "convert",
        "attnkit.cli.models:convert_command",
        "convert a checkpoint: --from-hf DIR OUT (HF -> attnkit) or --to-hf DIR OUT",
        arguments="attnkit.cli.models:convert_arguments",
    ),
    Command(
        "embed",
        "attnkit.cli.models:embed_command",
        "sentence embeddings of texts (arguments, --file or stdin) -> .npy or .jsonl",
        arguments="attnkit.cli.models:embed_arguments",
    ),
    Command(
        "similarity",
        "attnkit.cli.models:similarity_command",
        "cosine similarity of two texts, or of one word's contextual vectors in them",
        arguments="attnkit.cli.models:similarity_arguments",
    ),
    Command(
        "pretrain",
        "attnkit.cli.train:pretrain_main",
        "pre-train a GPT (causal LM) or BERT (masked LM) from a TOML config on a corpus",
    ),
    Command(
        "sample",
        "attnkit.cli.train:sample_command",
        "sample text from a pre-trained GPT checkpoint directory",
        arguments="attnkit.cli.train:sample_arguments",
    ),
    Command(
        "bench train",
        "attnkit.bench.train:run",
        "training throughput (tokens/s) and MFU of a GPT on random tokens",
    ),
    Command(
        "generate",
        "attnkit.cli.generate:generate_command",
        "generate text from a GPT checkpoint (attnkit or HF GPT-2 format), streaming tokens",
        arguments="attnkit.cli.generate:generate_arguments",
    ),
    Command(
        "bench generate",
        "attnkit.bench.generate:run",
        "KV-cached decoding speed of attnkit next to HF transformers (GPT-2 124M shape)",
    ),
    Command(
        "finetune",
        "attnkit.cli.classify:finetune_command",
        "fine-tune a BERT-family checkpoint for sequence classification from CSV/JSONL",
        arguments="attnkit.cli.classify:finetune_arguments",
    ),
    Command(
        "classify",
        "attnkit.cli.classify:classify_command",
        "classify texts with a fine-tuned checkpoint: label and probabilities",
        arguments="attnkit.cli.classify:classify_arguments",
    ),
    Command(
        "genre",
        "attnkit.cli.classify:genre_command",
        "build the Shakespeare genre data set (split by play), fine-tune MiniLM, print scores",
        arguments="attnkit.cli.classify:genre_arguments",
    ),
    Command(
        "swap",
        "attnkit.cli.surgery:swap_command",
        "replace a loaded model's attention with a variant; report speed and output drift",
        arguments="attnkit.cli.surgery:swap_arguments",
    ),
    Command(
        "inspect",
        "attnkit.cli.inspect:inspect_command",
        "attention maps, head statistics, rollout, heatmaps and an HTML viewer for a text",
        arguments="attnkit.cli.inspect:inspect_arguments",
    ),
    Command(
        "bench viewer",
        "attnkit.bench.viewer:run",
        "size, first paint and head-switch time of the HTML attention viewer in Chromium",
    ),
    Command(
        "explain",
        "attnkit.cli:explain_command",
        "say which backend attention() picks for given inputs, and why",
        arguments="attnkit.cli:explain_arguments",
    ),
    Command(
        "version",
        "attnkit.cli:version_command",
        "print the attnkit and torch versions",
        arguments="attnkit.cli:no_arguments",
    ),
)


class UsageError(Exception):
    """Bad input from the command line; printed as one line, exit status 2."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but an error is one line on stderr and exit status 2."""

    def error(self, message: str) -> NoReturn:
        fail(message)


def fail(message: str) -> NoReturn:
    sys.stderr.write(f"{PROG}: error: {' '.join(str(message).split())}\n")
    raise SystemExit(USAGE_ERROR)


# --------------------------------------------------------------------------------------------
# argument types with messages that name the value and what was expected
# --------------------------------------------------------------------------------------------


def _number(
    text: str, convert: Callable[[str], Any], ok: Callable[[Any], bool], expected: str
) -> Any:
    """An argparse type: ``convert(text)`` when ``ok`` of it, else an error naming the text."""
    try:
        value = convert(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
    if not ok(value):
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    return _number(text, int, lambda v: v >= 1, "a positive integer")


def non_negative_int(text: str) -> int:
    return _number(text, int, lambda v: v >= 0, "an integer >= 0")


def positive_float(text: str) -> float:
    return _number(text, float, lambda v: 0 < v < float("inf"), "a positive number")


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


def probability(text: str) -> float:
    return _number(text, float, lambda v: 0.0 <= v < 1.0, "a number in [0, 1)")


# --------------------------------------------------------------------------------------------
# small commands kept here
# --------------------------------------------------------------------------------------------


def no_arguments(parser: argparse.ArgumentParser) -> None:
    """For commands without options."""


def version_command(args: argparse.Namespace) -> int:
    import torch

    from attnkit import __version__

    print(f"attnkit {__version__} (torch {torch.__version__}, python {sys.version.split()[0]})")
    return 0


_DTYPES = ("float32", "bfloat16", "float16", "float64")


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
    parser.add_argument("--dtype", default="float32", choices=_DTYPES)
    parser.add_argument(
        "--device",
        default="cpu",
        choices=("cpu", "cuda"),
        help="device whose rules apply (cpu plans are made without allocating)",
    )


def explain_command(args: argparse.Namespace) -> int:
    import torch

    from attnkit.attention import explain

    if args.device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device 'cuda' was given but CUDA is not available here; expected 'cpu'")
    kv_len = args.kv_len or args.seq_len
    kv_heads = args.kv_heads or args.heads
    # CPU plans are made on the meta device: shapes and dtypes only, nothing is allocated.
    device = torch.device("meta" if args.device == "cpu" else args.device)
    dtype = getattr(torch, args.dtype)

    def empty(*shape: int, dt: torch.dtype = dtype, grad: bool = False) -> torch.Tensor:
        return torch.empty(*shape, dtype=dt, device=device, requires_grad=grad)

    q = empty(args.batch, args.heads, args.seq_len, args.head_dim, grad=args.grad)  # (B, H, T, D)
    k = empty(args.batch, kv_heads, kv_len, args.head_dim, grad=args.grad)  # (B, Hkv, Tk, D)
    v = empty(args.batch, kv_heads, kv_len, args.head_dim, grad=args.grad)  # (B, Hkv, Tk, D)
    extra: dict[str, Any] = {}
    if args.mask:
        extra["mask"] = empty(args.batch, 1, args.seq_len, kv_len, dt=torch.bool)
    if args.padding:
        extra["key_padding_mask"] = empty(args.batch, kv_len, dt=torch.bool)
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


# --------------------------------------------------------------------------------------------
# dispatch
# --------------------------------------------------------------------------------------------


def _resolve(spec: str) -> Callable[..., Any]:
    module_name, _, attr = spec.partition(":")
    module = importlib.import_module(module_name)
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ImportError(
            f"{module_name} has no {attr!r}; expected it to define {attr}()"
        ) from None


def _tree(commands: Sequence[Command]) -> dict[str, Any]:
    """{"bench": {"attention": Command, ...}, "version": Command, ...}"""
    root: dict[str, Any] = {}
    for cmd in commands:
        *groups, leaf = cmd.words.split()
        node = root
        for g in groups:
            node = node.setdefault(g, {})
        node[leaf] = cmd
    return root


def _select(tree: dict[str, Any], argv: Sequence[str]) -> tuple[Command | None, list[str]]:
    """Follow the leading words of ``argv`` through the tree; the Command reached, if any."""
    node: Any = tree
    path: list[str] = []
    for word in argv:
        if not isinstance(node, dict) or word not in node:
            break
        node = node[word]
        path.append(word)
    return (node if isinstance(node, Command) else None), path


@contextlib.contextmanager
def _one_line_argparse_errors() -> Iterator[None]:
    """Make parsers built by a delegated ``main(argv)`` report errors as one line too."""
    original = argparse.ArgumentParser.error
    argparse.ArgumentParser.error = lambda self, message: fail(message)  # type: ignore[method-assign]
    try:
        yield
    finally:
        argparse.ArgumentParser.error = original  # type: ignore[method-assign]


def build_parser(
    chosen: Command | None = None, commands: Sequence[Command] = COMMANDS
) -> ArgumentParser:
    """The parser for all commands; only ``chosen`` gets its options (importing its module)."""
    parser = ArgumentParser(
        prog=PROG, description="attnkit: self-attention kernels, models and tools."
    )

    def add(
        node: dict[str, Any], sub_parser: argparse.ArgumentParser, depth: int, prefix: str
    ) -> None:
        subs = sub_parser.add_subparsers(
            dest=f"_word{depth}", metavar="<command>", title="commands", parser_class=ArgumentParser
        )
        for word, child in node.items():
            if isinstance(child, Command):
                p = subs.add_parser(
                    word, help=child.help, description=child.help, prog=f"{PROG} {child.words}"
                )
                p.set_defaults(_command=child)
                if child is chosen:
                    _resolve(child.arguments or _default_arguments(child))(p)
            else:
                words = f"{prefix} {word}".strip()
                p = subs.add_parser(
                    word, help=f"{words} commands: " + ", ".join(child), prog=f"{PROG} {words}"
                )
                p.set_defaults(_group=words, _group_node=child)
                add(child, p, depth + 1, words)

    add(_tree(commands), parser, 0, "")
    return parser


def _default_arguments(cmd: Command) -> str:
    return cmd.target.partition(":")[0] + ":add_arguments"


def _delegates_to_main(cmd: Command) -> bool:
    if cmd.arguments is not None:
        return False
    module = importlib.import_module(cmd.target.partition(":")[0])
    return not hasattr(module, "add_arguments") and hasattr(module, "main")


def main(argv: Sequence[str] | None = None, commands: Sequence[Command] = COMMANDS) -> int:
    """Run the command line; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # Large CPU tensors on transparent huge pages (PyTorch's own switch, read when torch first
    # allocates): tensors over glibc's 32 MiB mmap threshold are otherwise faulted in 4 KiB
    # pages at every allocation, which made long-sequence attention up to 1.8x slower here.
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    chosen, path = _select(_tree(commands), argv)
    delegate: Callable[[Any], Any] | None = None
    try:
        if chosen is not None and _delegates_to_main(chosen):
            delegate = importlib.import_module(chosen.target.partition(":")[0]).main
        else:
            parser = build_parser(chosen, commands)
    except ImportError as e:
        words = chosen.words if chosen else " ".join(path)
        fail(f"command '{words}' is not available: {e}")
    if delegate is not None:  # the module parses the rest of the line itself
        with _one_line_argparse_errors():
            return _call(delegate, argv[len(path) :])
    args = parser.parse_args(argv)
    cmd: Command | None = getattr(args, "_command", None)
    if cmd is None:
        group = getattr(args, "_group", None)
        if group is not None:
            fail(f"'{group}' needs a subcommand, one of: {', '.join(args._group_node)}")
        fail(f"a command is required, one of: {', '.join(_tree(commands))} (see '{PROG} --help')")
    return _call(_resolve(cmd.target), args)


def _call(fn: Callable[[Any], Any], arg: Any) -> int:
    """Run a command function; its bad-input errors become one line and exit status 2."""
    try:
        status = fn(arg)
    except UsageError as e:
        fail(str(e))
    except ValueError as e:  # the library's message for a bad value
        if os.environ.get("ATTNKIT_DEBUG"):
            raise
        fail(str(e))
    return int(status or 0)


if __name__ == "__main__":
    sys.exit(main())
