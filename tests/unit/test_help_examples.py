"""Every command's ``--help`` ends with example invocations, and every example parses."""

from __future__ import annotations

import shlex

import pytest

from attnkit.cli import COMMANDS, main
from attnkit.cli.dispatch import TOP_EXAMPLES, Command, build_parser, select, tree

ALL_EXAMPLES = [(c, e) for c in COMMANDS for e in c.examples]


def _parse(example: str) -> Command:
    """Parse one example with the real parser; the Command it reaches."""
    argv = shlex.split(example)
    assert argv[0] == "attnkit", example
    chosen, _ = select(tree(COMMANDS), argv[1:])
    assert chosen is not None, f"{example!r} names no command"
    args, rest = build_parser(COMMANDS, chosen).parse_known_args(argv[1:])
    assert args._command is chosen
    assert chosen.rest or not rest, f"{example!r}: unrecognized {rest}"
    return chosen


def test_every_command_has_an_example() -> None:
    assert [c.words for c in COMMANDS if not c.examples] == []


@pytest.mark.parametrize(("command", "example"), ALL_EXAMPLES, ids=[e for _, e in ALL_EXAMPLES])
def test_example_parses_as_its_command(command: Command, example: str) -> None:
    assert _parse(example) is command


@pytest.mark.parametrize("example", TOP_EXAMPLES)
def test_top_level_example_parses(example: str) -> None:
    _parse(example)


def _help(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--help"])
    assert exit_info.value.code == 0
    return capsys.readouterr().out


def test_top_level_help_shows_examples(capsys: pytest.CaptureFixture[str]) -> None:
    out = _help([], capsys)
    assert "example:" in out
    for example in TOP_EXAMPLES:
        assert example in out


@pytest.mark.parametrize("command", COMMANDS, ids=[c.words for c in COMMANDS])
def test_command_help_shows_its_example(
    command: Command, capsys: pytest.CaptureFixture[str]
) -> None:
    out = _help(command.words.split(), capsys)
    assert "example:" in out
    assert command.examples[0] in out  # kept on one line, not re-wrapped


@pytest.mark.parametrize("group", sorted({c.words.split()[0] for c in COMMANDS if " " in c.words}))
def test_group_help_shows_an_example(group: str, capsys: pytest.CaptureFixture[str]) -> None:
    out = _help([group], capsys)
    assert "example:" in out
    assert f"attnkit {group} " in out.split("example:")[1]
