"""Every command of the ``attnkit`` table with bad input drawn by hypothesis, run in-process
through :func:`attnkit.cli.main` (and a sample in real processes).

A bad case must exit 2 with exactly one stderr line ``attnkit: error: ...`` and no traceback;
a valid one (only the light commands are ever run: tiny checkpoints, a few tokens) exits 0 and
prints no NaN. Cases:

* typed options: each option that takes a value, read from the command's own parser, given a
  value drawn from text that is not a number, out of range, NaN, inf, empty, huge or odd
  Unicode. Commands that do heavy work (benchmarks, training) get an unknown option as well,
  so they never start: their cases check that parsing never crashes;
* unknown options and stray words, and missing required arguments;
* files: missing paths, directories where files belong, empty and blank corpora, non-UTF-8
  text, TOML configs with unknown keys, wrong types or broken syntax, data files without the
  named columns, checkpoints of the wrong kind;
* texts longer than the model's positions (``inspect`` refuses them unless ``--truncate``);
* checkpoints whose weights hold NaN: no command prints a NaN as a result.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import json
import math
import re
import subprocess
import sys

import pytest
import torch
from _fuzz import VOCAB, char_tokenizer, fuzz_settings, record
from hypothesis import given
from hypothesis import strategies as st

import attnkit
from attnkit.cli import COMMANDS, main
from attnkit.cli.dispatch import build_parser
from attnkit.models import build_model, get_preset

NAMES = [c.words for c in COMMANDS]
# commands that are run when their input is valid: tiny models, a few tokens
LIGHT = {
    "generate",
    "sample",
    "embed",
    "similarity",
    "inspect",
    "swap",
    "explain",
    "version",
    "convert",
}
HEAVY = [n for n in NAMES if n not in LIGHT]
NEVER_AN_OPTION = "--no-such-option-anywhere"


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """Tiny checkpoints and input files, shared by the module's cases."""
    root = tmp_path_factory.mktemp("cli-fuzz")
    torch.manual_seed(0)
    gpt_cfg = get_preset("tiny", vocab_size=len(VOCAB), max_seq_len=24, n_layer=1, d_model=32)
    gpt = build_model(gpt_cfg).eval()
    attnkit.save(gpt, root / "gpt", tokenizer=char_tokenizer(False))
    bert_cfg = get_preset(
        "tiny-bert", vocab_size=len(VOCAB), d_model=32, n_heads=4, pooling="mean"
    ).replace(max_seq_len=32, n_layer=1)
    bert = build_model(bert_cfg).eval()
    attnkit.save(bert, root / "bert", tokenizer=char_tokenizer(True))
    for model, name in ((gpt, "gpt-nan"), (bert, "bert-nan")):
        with torch.no_grad():
            p = next(p for n, p in model.named_parameters() if ".mlp." in n)
            saved = p.clone()
            p.view(-1)[:4] = math.nan
        attnkit.save(model, root / name, tokenizer=char_tokenizer(name.startswith("bert")))
        with torch.no_grad():
            p.copy_(saved)
    (root / "cwd").mkdir()  # the working directory of every case: relative paths land here
    SCRATCH.append(root / "cwd")
    (root / "texts.txt").write_text("a cat\nthe bat\n")
    (root / "empty.txt").write_text("")
    (root / "blank.txt").write_text("\n   \n\t\n")
    (root / "binary.txt").write_bytes(b"ok line\n\xff\xfe\x80 bad\n")
    (root / "corpus-dir").mkdir()
    (root / "unknown-key.toml").write_text("[train]\nmax_iters = 1\nno_such_key = 3\n")
    (root / "unknown-section.toml").write_text("[nonsense]\nx = 1\n")
    (root / "wrong-type.toml").write_text('[train]\nmax_iters = "many"\n')
    (root / "broken.toml").write_text("[train\nmax_iters = = 1\n")
    (root / "negative.toml").write_text("[train]\nbatch_size = -4\n")
    (root / "empty.csv").write_text("")
    (root / "header-only.csv").write_text("text,label\n")
    (root / "no-label.csv").write_text("text,other\nhello,1\nworld,2\n")
    (root / "one-class.csv").write_text("text,label\nhello,a\nworld,a\n")
    (root / "rows.jsonl").write_text('{"text": "hi"}\nnot json\n')
    return root


SCRATCH: list = []


def run(argv: list[str], stdin: str = "") -> tuple[int, str, str]:
    """``attnkit ARGV`` in this process, in the scratch directory: (status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    old_stdin = sys.stdin
    sys.stdin = io.StringIO(stdin)
    try:
        with (
            contextlib.chdir(SCRATCH[-1]),
            contextlib.redirect_stdout(out),
            contextlib.redirect_stderr(err),
        ):
            try:
                status = main(argv)
            except SystemExit as e:
                status = e.code if isinstance(e.code, int) else 1
    finally:
        sys.stdin = old_stdin
    return int(status or 0), out.getvalue(), err.getvalue()


NAN_WORD = re.compile(r"(?<![A-Za-z])(nan|NaN|inf)(?![A-Za-z])")


def check(surface: str, argv: list[str], status: int, out: str, err: str, bad: bool) -> None:
    """The house rule: a refusal is exit 2 and one stderr line; a run is exit 0 without NaN."""
    assert "Traceback" not in err, f"attnkit {argv}: traceback\n{err}"
    if status == 2:
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("attnkit: error: "), (argv, err)
        record(surface, "refused")
        return
    assert status == 0, f"attnkit {argv}: status {status}, stderr {err!r}"
    assert not bad, f"attnkit {argv} accepted bad input: {out[:300]!r}"
    if argv[0] not in ("generate", "sample"):  # generated text may spell 'nan'
        for word in argv:  # a path or title given on the command line may be echoed
            out = out.replace(word, "")
        assert not NAN_WORD.search(out), f"attnkit {argv} printed a NaN: {out[:300]!r}"
    record(surface, "accepted")


@functools.cache
def valued_options(words: str) -> list[str]:
    """The options of command ``words`` that take a value, read from its parser (none for a
    command whose module cannot be imported: it is refused with one line too)."""
    cmd = next(c for c in COMMANDS if c.words == words)
    try:
        sub: argparse.ArgumentParser = build_parser(COMMANDS, cmd)
    except ImportError:
        return []
    for word in words.split():
        action = next(a for a in sub._actions if isinstance(a, argparse._SubParsersAction))
        sub = action.choices[word]
    return sorted(
        a.option_strings[0]
        for a in sub._actions
        if a.option_strings and a.nargs != 0 and a.option_strings[0] != "-h"
    )


def base_argv(words: str, root) -> list[str]:
    """A valid call of a light command on the tiny checkpoints (fast)."""
    gpt, bert = str(root / "gpt"), str(root / "bert")
    return {
        "generate": ["generate", "--model", gpt, "--prompt", "ab", "--max-new-tokens", "3"],
        "sample": ["sample", "--model", gpt, "--prompt", "ab", "--max-new-tokens", "3"],
        "embed": ["embed", "a cat", "--model", bert, "--out", str(root / "e.jsonl")],
        "similarity": ["similarity", "a cat", "the bat", "--model", bert],
        "inspect": ["inspect", "--model", bert, "--text", "a cat", "--out", str(root / "insp")],
        "swap": ["swap", "a cat", "--model", bert, "--variant", "local", "--rounds", "1"],
        "explain": ["explain", "--seq-len", "64"],
        "version": ["version"],
        "convert": ["convert", "--to-hf", bert, str(root / "hf-out")],
    }[words]


BAD_TEXT = st.sampled_from(
    [
        "abc",
        "",
        " ",
        "-1",
        "0",
        "-0",
        "1.5",
        "nan",
        "NaN",
        "inf",
        "-inf",
        "1e999",
        "0x10",
        "\u0663",  # an Arabic-Indic digit 3 (int() reads it)
        "3_0",
        "true",
        "\x00",
        "\ud800",
        "9" * 30,
        "-9" * 10,
        "1,2,,3",
        "0,-1",
        "auto",
        "relu",
        "/no/such/path",
    ]
)
HUGE = {"9" * 30, "1e999", "inf"}


@st.composite
def typed_option_cases(draw):
    words = draw(st.sampled_from(NAMES))
    options = valued_options(words)
    option = draw(st.sampled_from(options)) if options else None
    value = draw(BAD_TEXT)
    return words, option, value


@given(case=typed_option_cases())
@fuzz_settings(80)
def test_typed_options(tree, case):
    words, option, value = case
    light = words in LIGHT and value not in HUGE  # a huge count would be a long, valid run
    argv = base_argv(words, tree) if light else [*words.split(), NEVER_AN_OPTION]
    if option is not None:
        argv = [*argv, option, value]
    status, out, err = run(argv)
    check("cli typed options", argv, status, out, err, bad=not light)


@given(
    words=st.sampled_from(NAMES),
    junk=st.lists(
        st.one_of(
            st.sampled_from(["--bogus", "-x", "--model=", "--", "-", "--help=no", "@file"]),
            st.text(alphabet="-abcxyz=0", min_size=2, max_size=8).map(lambda s: "--" + s),
        ),
        min_size=1,
        max_size=3,
    ),
)
@fuzz_settings(40)
def test_unknown_options_and_missing_arguments(tree, words, junk):
    light = words in LIGHT
    argv = [*base_argv(words, tree), *junk] if light else [*words.split(), *junk]
    if not light and NEVER_AN_OPTION not in argv:
        argv.append(NEVER_AN_OPTION)
    status, out, err = run(argv)
    check("cli unknown options", argv, status, out, err, bad=not light)


def test_no_command_and_unknown_commands(tree):
    for argv in ([], ["nonsense"], ["bench"], ["bench", "nonsense"], ["GENERATE"], ["--version"]):
        status, out, err = run(argv)
        check("cli unknown options", argv or ["(none)"], status, out, err, bad=True)


def file_cases(root) -> list[tuple[list[str], str]]:
    """(argv, stdin) calls that must each be refused: missing, empty and broken files."""
    r = str(root)
    gpt, bert, missing = f"{r}/gpt", f"{r}/bert", f"{r}/no/such/thing"
    out = f"{r}/runs/x"
    cases: list[list[str]] = []
    for model_cmd in (
        ["generate", "--prompt", "a"],
        ["embed", "a"],
        ["similarity", "a", "b"],
        ["inspect", "--text", "a", "--out", f"{r}/i"],
        ["swap", "a", "--variant", "local"],
        ["classify", "a"],
    ):
        for model in (missing, f"{r}/texts.txt", f"{r}/corpus-dir", "no-such-model-name", ""):
            cases.append([*model_cmd, "--model", model])
    cases += [
        ["generate", "--model", bert, "--prompt", "a"],  # not a GPT
        ["classify", "--model", bert, "a"],  # no classification head
        ["embed", "--model", gpt, "a"],  # not an encoder
        ["inspect", "--model", gpt, "--text", "a", "--out", f"{r}/texts.txt/x"],
        ["embed", "--model", bert, "--file", missing],
        ["embed", "--model", bert, "--file", f"{r}/empty.txt"],
        ["embed", "--model", bert, "--file", f"{r}/blank.txt"],
        ["embed", "--model", bert, "--file", f"{r}/binary.txt"],
        ["embed", "--model", bert, "--file", f"{r}/corpus-dir"],
        ["embed", "--model", bert, "a", "--out", f"{r}/e.txt"],
        ["classify", "--model", bert, "--file", f"{r}/empty.txt"],
        ["convert", "--from-hf", missing, f"{r}/c1"],
        ["convert", "--to-hf", missing, f"{r}/c2"],
        ["convert", "--from-hf", f"{r}/texts.txt", f"{r}/c3"],
        ["convert", "--to-hf", f"{r}/corpus-dir", f"{r}/c4"],
        ["pretrain", "--config", f"{r}/unknown-key.toml", "--out", out],
        ["pretrain", "--config", f"{r}/unknown-section.toml", "--out", out],
        ["pretrain", "--config", f"{r}/wrong-type.toml", "--out", out],
        ["pretrain", "--config", f"{r}/broken.toml", "--out", out],
        ["pretrain", "--config", f"{r}/negative.toml", "--out", out],
        ["pretrain", "--config", missing, "--out", out],
        ["pretrain", "--config", f"{r}/corpus-dir", "--out", out],
        ["pretrain", "--config", "gpt-shakespeare-char", "--train.no_such_key", "1", "--out", out],
        ["pretrain", "--config", "gpt-shakespeare-char", "--train.max_iters", "x", "--out", out],
        ["pretrain", "--config", "gpt-shakespeare-char", "--train.max_iters", "--out", out],
        ["pretrain", "--config", "gpt-shakespeare-char", "--nosection", "1", "--out", out],
        ["pretrain", "--config", "gpt-shakespeare-char", "--data", missing, "--out", out],
        [
            "pretrain",
            "--config",
            "gpt-shakespeare-char",
            "--data",
            f"{r}/empty.txt",
            "--out",
            out,
        ],
        [
            "pretrain",
            "--config",
            "gpt-shakespeare-char",
            "--data",
            f"{r}/blank.txt",
            "--out",
            out,
        ],
        [
            "pretrain",
            "--config",
            "gpt-shakespeare-char",
            "--data",
            f"{r}/binary.txt",
            "--out",
            out,
        ],
        ["pretrain", "--config", "gpt-shakespeare-char", "--data", "no-such-corpus", "--out", out],
        ["pretrain", "--config", "gpt-shakespeare-char"],  # no --out
    ]
    for train, evalf in (
        (missing, f"{r}/one-class.csv"),
        (f"{r}/empty.csv", f"{r}/empty.csv"),
        (f"{r}/header-only.csv", f"{r}/header-only.csv"),
        (f"{r}/no-label.csv", f"{r}/no-label.csv"),
        (f"{r}/rows.jsonl", f"{r}/rows.jsonl"),
        (f"{r}/texts.txt", f"{r}/texts.txt"),
        (f"{r}/binary.txt", f"{r}/binary.txt"),
    ):
        cases.append(
            ["finetune", "--model", bert, "--train", train, "--eval", evalf, "--out", f"{r}/ft"]
        )
    return [(c, "") for c in cases] + [
        (["embed", "--model", bert], ""),  # nothing on stdin
        (["embed", "--model", bert], "\n \n"),
        (["classify", "--model", bert], ""),
    ]


def test_missing_empty_and_broken_files(tree):
    for argv, stdin in file_cases(tree):
        status, out, err = run(argv, stdin)
        check("cli files", argv, status, out, err, bad=True)


@pytest.mark.parametrize("words", ["generate", "embed", "similarity", "inspect", "swap"])
def test_checkpoints_with_nan_weights_print_no_nan(tree, words):
    argv = base_argv(words, tree)
    name = "gpt" if words == "generate" else "bert"
    argv[argv.index("--model") + 1] = str(tree / f"{name}-nan")
    status, out, err = run(argv)
    check("cli NaN checkpoints", argv, status, out, err, bad=True)


@given(n_chars=st.integers(0, 400))
@fuzz_settings(30)
def test_inspect_refuses_a_text_longer_than_the_positions(tree, n_chars):
    text = "ab " * (n_chars // 3) + "a" * (n_chars % 3)
    n_tokens = len(char_tokenizer(True).encode(text).ids)
    if n_tokens <= 32 and text.strip():
        text += "x" * (33 - n_tokens)  # a valid run takes seconds: those are tested below
        n_tokens = 33
    out_dir = tree / f"insp-{n_chars}"
    argv = ["inspect", "--model", str(tree / "bert"), "--text", text, "--out", str(out_dir)]
    status, out, err = run(argv)
    check("cli inspect long text", argv, status, out, err, bad=True)
    if text.strip():
        assert f"is {n_tokens} tokens long" in err and "32 positions" in err and "--truncate" in err
    assert not out_dir.exists()


@pytest.mark.parametrize("n_chars", [pytest.param(31, marks=pytest.mark.slow), 200])
def test_inspect_truncate_keeps_the_first_positions(tree, n_chars):
    text = "ab " * (n_chars // 3)
    n_tokens = len(char_tokenizer(True).encode(text).ids)
    out_dir = tree / f"insp-truncated-{n_chars}"
    argv = ["inspect", "--model", str(tree / "bert"), "--text", text, "--out", str(out_dir)]
    status, out, err = run([*argv, "--truncate"])
    check("cli inspect long text", argv, status, out, err, bad=False)
    report = json.loads((out_dir / "stats.json").read_text())
    assert len(report["tokens"]) == min(n_tokens, 32)
    assert report["tokens"][:3] == ["[CLS]", "a", "b"]


SUBPROCESS_CASES = [
    ["generate", "--model", "{root}/gpt", "--temperature", "nan"],
    pytest.param(
        ["inspect", "--model", "{root}/bert", "--text", "ab " * 40, "--out", "{root}/sp"],
        marks=pytest.mark.slow,
    ),
    ["pretrain", "--config", "{root}/unknown-key.toml", "--out", "{root}/runs/sp"],
    pytest.param(
        ["embed", "--model", "{root}/bert", "--file", "{root}/binary.txt"], marks=pytest.mark.slow
    ),
    pytest.param(
        ["explain", "--seq-len", "100000000000", "--batch", "100000000000"],
        marks=pytest.mark.slow,
    ),
    pytest.param(["similarity", "a", "b", "--model", "{root}/bert-nan"], marks=pytest.mark.slow),
]


@pytest.mark.parametrize("argv", SUBPROCESS_CASES)
def test_a_sample_in_real_processes(tree, argv):
    argv = [a.replace("{root}", str(tree)) for a in argv]  # absolute paths only
    env = {k: v for k, v in __import__("os").environ.items() if k != "ATTNKIT_DEBUG"}
    proc = subprocess.run(
        [sys.executable, "-m", "attnkit", *argv],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
        cwd=tree / "cwd",
        env=env,
    )
    assert proc.returncode == 2, (argv, proc.returncode, proc.stderr)
    check("cli subprocess", argv, proc.returncode, proc.stdout, proc.stderr, bad=True)
