"""The attnkit command line, in-process and as a real process, and `attnkit bench attention`."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

import attnkit
from attnkit import cli
from attnkit.bench import attention as bench_attention
from attnkit.cli import Command, main


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "attnkit", *args], capture_output=True, text=True, timeout=300
    )


def one_line_error(err: str) -> str:
    lines = err.strip("\n").splitlines()
    assert len(lines) == 1, f"expected one stderr line, got {lines}"
    assert lines[0].startswith("attnkit: error: "), lines[0]
    return lines[0]


# ----------------------------------------------------------------------------- version, explain


def test_version_in_process(capsys):
    assert main(["version"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"attnkit {attnkit.__version__} (torch {torch.__version__}")


def test_version_subprocess():
    proc = run_cli("version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"attnkit {attnkit.__version__}")


@pytest.mark.parametrize(
    "argv, kwargs",
    [
        (
            ["--seq-len", "16384", "--causal", "--window", "512", "--grad"],
            dict(causal=True, window=512, grad=True),
        ),
        (["--seq-len", "4096", "--causal"], dict(causal=True)),
        (["--seq-len", "1024", "--weights"], dict(return_weights=True)),
        (["--seq-len", "300000", "--alibi"], dict(bias="alibi", n=300000)),
    ],
)
def test_explain_matches_the_library(capsys, argv, kwargs):
    from attnkit.attention import BACKENDS, explain

    assert main(["explain", *argv]) == 0
    out = capsys.readouterr().out.strip()
    n = kwargs.pop("n", int(argv[1]))
    grad = kwargs.pop("grad", False)
    q = torch.empty(1, 8, n, 64, device="meta", requires_grad=grad)
    plan = explain(q, q, q, **kwargs)
    assert out == f"{plan.backend}: {plan.reason}"
    assert plan.backend in BACKENDS and plan.backend != "auto"


def test_explain_subprocess():
    proc = run_cli("explain", "--seq-len", "2048", "--causal")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("\n") == 1 and ": " in proc.stdout


def test_library_error_is_one_line(capsys):
    # FlexAttention has no CPU backward: the library says so, the CLI prints it as one line.
    with pytest.raises(SystemExit) as exc:
        main(["explain", "--seq-len", "256", "--causal", "--backend", "flex", "--grad"])
    assert exc.value.code == 2
    assert "backend='flex'" in one_line_error(capsys.readouterr().err)


# ----------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "argv, named",
    [
        (["explain", "--seq-len", "abc"], ["--seq-len", "'abc'", "expected a positive integer"]),
        (["explain", "--seq-len", "0"], ["'0'", "positive integer"]),
        (["explain", "--seq-len", "64", "--dropout", "1.5"], ["'1.5'", "[0, 1)"]),
        (["explain", "--seq-len", "64", "--device", "gpu"], ["'gpu'", "'cpu'", "'cuda'"]),
        (["explain"], ["--seq-len"]),
        (["trian"], ["'trian'", "'bench'", "'version'"]),
        (["bench"], ["'bench'", "attention"]),
        ([], ["command is required", "version"]),
        (["bench", "attention", "--sizes", "1k,zz"], ["'zz'", "1024,2k,4k"]),
        (["bench", "attention", "--backends", "auto,fast"], ["'auto,fast'", "naive"]),
        (["bench", "attention", "--device", "tpu"], ["'tpu'", "cpu"]),
        (["version", "--verbose"], ["--verbose"]),
    ],
)
def test_bad_input_one_stderr_line_exit_2(capsys, argv, named):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    captured = capsys.readouterr()
    line = one_line_error(captured.err)
    for text in named:
        assert text in line, f"{text!r} not in {line!r}"
    assert captured.out == ""


def test_bad_input_subprocess():
    proc = run_cli("explain", "--seq-len", "-5")
    assert proc.returncode == 2
    assert "'-5'" in one_line_error(proc.stderr)
    assert proc.stdout == ""


# ------------------------------------------------------------------------------ the command table


def test_a_table_row_is_a_command(capsys):
    rows = (
        Command(
            "hello world",
            "attnkit.cli.explain:version_command",
            "attnkit.cli.explain:no_arguments",
            "say the version",
        ),
    )
    assert main(["hello", "world"], commands=rows) == 0
    assert capsys.readouterr().out.startswith("attnkit ")


# ---------------------------------------------------------------- failures: one line, a status

FAILING = textwrap.dedent("""
    import sys


    def add_arguments(parser):
        parser.add_argument("--n", type=int, default=1)


    def value_error(args):
        raise ValueError(f"n must be >= 2, got {args.n}")


    def type_error(args):
        raise TypeError("weights must be a Tensor, got list")


    def missing_extra(args):
        from attnkit._util.optional import require

        require("attnkit_no_such_package", "viz", "plots")


    def missing_matplotlib(args):
        raise ModuleNotFoundError("No module named 'matplotlib'", name="matplotlib")


    def missing_file(args):
        open("/no/such/dir/data.txt")


    def interrupted(args):
        raise KeyboardInterrupt


    def crashes(args):
        raise RuntimeError("something broke")


    def prints_lines(args):
        for i in range(200000):
            print(f"line {i}")
        return 0
""")


@pytest.fixture
def failing(tmp_path, monkeypatch):
    (tmp_path / "attnkit_failing_cmds.py").write_text(FAILING)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def _failing_row(name: str) -> tuple[Command, ...]:
    return (
        Command(
            "fail", f"attnkit_failing_cmds:{name}", "attnkit_failing_cmds:add_arguments", "fails"
        ),
    )


@pytest.mark.parametrize(
    "name, status, named",
    [
        ("value_error", 2, ["n must be >= 2, got 1"]),
        ("type_error", 2, ["weights must be a Tensor, got list"]),
        ("missing_extra", 1, ["attnkit_no_such_package", "pip install 'attnkit[viz]'"]),
        ("missing_matplotlib", 1, ["matplotlib", "pip install 'attnkit[viz]'"]),
        ("missing_file", 2, ["/no/such/dir/data.txt", "No such file or directory"]),
        ("crashes", 1, ["RuntimeError: something broke", "ATTNKIT_DEBUG=1"]),
    ],
)
def test_a_failing_command_is_one_line_and_a_status(
    failing, capsys, monkeypatch, name, status, named
):
    monkeypatch.delenv("ATTNKIT_DEBUG", raising=False)
    with pytest.raises(SystemExit) as exc:
        main(["fail"], commands=_failing_row(name))
    assert exc.value.code == status
    line = one_line_error(capsys.readouterr().err)
    for text in named:
        assert text in line, f"{text!r} not in {line!r}"


def test_ctrl_c_is_one_line_and_130(failing, capsys, monkeypatch):
    monkeypatch.delenv("ATTNKIT_DEBUG", raising=False)
    assert main(["fail"], commands=_failing_row("interrupted")) == 130
    assert capsys.readouterr().err == "attnkit: interrupted\n"


def _run_failing(tmp_path, name: str, env_extra: dict[str, str]) -> subprocess.Popen:
    code = (
        "import sys; from attnkit.cli import Command, main; "
        f"sys.exit(main(['fail'], commands=(Command('fail', 'attnkit_failing_cmds:{name}', "
        "'attnkit_failing_cmds:add_arguments', 'fails'),)))"
    )
    env = {k: v for k, v in os.environ.items() if k != "ATTNKIT_DEBUG"}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env.get("PYTHONPATH", "")])
    env.update(env_extra)
    return subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def test_a_closed_pipe_exits_141_quietly(failing):
    proc = _run_failing(failing, "prints_lines", {})
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.readline() == "line 0\n"  # like `attnkit ... | head -1`
    proc.stdout.close()
    assert proc.wait(timeout=120) == 141
    assert proc.stderr.read() == ""


@pytest.mark.parametrize("name, status", [("value_error", 2), ("interrupted", 130)])
def test_a_real_process_gives_one_line_and_debug_shows_the_traceback(failing, name, status):
    quiet = _run_failing(failing, name, {})
    _, err = quiet.communicate(timeout=120)
    assert quiet.returncode == status
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    loud = _run_failing(failing, name, {"ATTNKIT_DEBUG": "1"})
    _, err = loud.communicate(timeout=120)
    assert loud.returncode != 0
    assert "Traceback (most recent call last)" in err


def test_a_missing_module_is_a_one_line_error(capsys):
    rows = (
        Command(
            "gone", "attnkit.no_such_module:run", "attnkit.no_such_module:arguments", "not written"
        ),
    )
    with pytest.raises(SystemExit) as exc:
        main(["gone"], commands=rows)
    assert exc.value.code == 2
    assert "'gone' is not available" in one_line_error(capsys.readouterr().err)


def test_every_listed_command_has_a_row():
    words = {c.words for c in cli.COMMANDS}
    assert {"bench attention", "bench variants", "explain", "version"} <= words


def test_every_row_names_functions_that_exist():
    from attnkit.cli.dispatch import resolve

    for cmd in cli.COMMANDS:
        assert callable(resolve(cmd.arguments)), cmd.words
        assert callable(resolve(cmd.target)), cmd.words


def test_unrecognized_words_are_an_error_unless_the_command_takes_them(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["explain", "--seq-len", "8", "--model.n_layer", "2"])
    assert exc.value.code == 2
    assert "unrecognized arguments: --model.n_layer 2" in one_line_error(capsys.readouterr().err)


# ------------------------------------------------------------------------------ bench attention


def test_allowed_pairs_matches_brute_force():
    for n in (1, 5, 16, 33):
        i = torch.arange(n)[:, None]
        j = torch.arange(n)[None, :]
        for causal in (False, True):
            for window in (None, 1, 3, 8, 40):
                ok = torch.ones(n, n, dtype=torch.bool)
                if causal:
                    ok &= j <= i
                if window is not None:
                    ok &= (i - j < window) if causal else ((i - j).abs() < window)
                assert bench_attention.allowed_pairs(n, causal, window) == int(ok.sum()), (
                    n,
                    causal,
                    window,
                )


def test_naive_attention_matches_sdpa():
    q, k, v = (torch.randn(2, 3, 40, 16, dtype=torch.float64) for _ in range(3))
    for causal in (False, True):
        ref = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        torch.testing.assert_close(bench_attention.naive_attention(q, k, v, causal), ref)
    # a window as wide as the sequence changes nothing
    torch.testing.assert_close(
        bench_attention.naive_attention(q, k, v, True, 40),
        F.scaled_dot_product_attention(q, k, v, is_causal=True),
    )


def _row(section, n, impl, window=None, fwd=None, fwd_bwd=None, peak_fwd=None, peak_fwd_bwd=None):
    r = bench_attention.Row(section, n, impl, window, True)
    r.fwd.vs_reference, r.fwd_bwd.vs_reference = fwd, fwd_bwd
    r.fwd.seconds = r.fwd_bwd.seconds = 1.0
    r.fwd.peak_bytes, r.fwd_bwd.peak_bytes = peak_fwd, peak_fwd_bwd
    return r


def test_checks_pass_and_fail_at_the_targets():
    ref = bench_attention.REFERENCE
    rows = [
        _row("dense", 4096, ref, fwd=1.0, fwd_bwd=1.0),
        _row("dense", 4096, "auto", fwd=0.96, fwd_bwd=0.90),
        _row("window", 16384, ref, fwd=1.0, fwd_bwd=1.0),
        _row("window", 16384, "auto", 512, fwd=8.5, fwd_bwd=4.5),
        _row("window", 16384, "flex-band", 512, fwd=8.4),
        _row("window", 16384, "auto-dense", peak_fwd=310 * 2**20),
        _row("window", 65536, "auto", 512, peak_fwd_bwd=int(1.9 * 2**30)),
    ]
    got = {c.key: c.passed for c in bench_attention.evaluate_checks(rows, 512, True)}
    assert got == {
        "dense_fwd": True,
        "dense_fwd_bwd": False,
        "window_fwd": True,
        "window_fwd_bwd": False,
        "window_vs_flex": True,
        "window_mem": True,
        "exact_mem": False,
    }
    assert all(c.passed is None for c in bench_attention.evaluate_checks([], 512, True))
    # attnkit's forward must be at least as fast as FlexAttention's: 1.0 s against 0.99 s fails
    rows[-3].fwd.seconds = 0.99
    got = {c.key: c for c in bench_attention.evaluate_checks(rows, 512, True)}
    assert got["window_vs_flex"].passed is False and got["window_vs_flex"].measured == "0.99x"


@pytest.mark.slow  # compiles FlexAttention (tens of seconds on a CPU)
@pytest.mark.parametrize("causal", [True, False])
def test_band_baselines_compute_the_sliding_window(causal):
    n, window = 256, 40
    q, k, v = (torch.randn(1, 2, n, 16) for _ in range(3))
    ref = bench_attention.naive_attention(q, k, v, causal, window)
    for impl in bench_attention.BAND_BASELINES:
        fn = bench_attention._impl_fn(impl, causal, window, n, torch.device("cpu"))
        torch.testing.assert_close(fn(q, k, v), ref, atol=1e-5, rtol=1e-5)


def test_bench_attention_writes_sane_results(tmp_path, capsys):
    out = tmp_path / "bench"
    status = main(
        [
            "bench",
            "attention",
            "--sizes",
            "256",
            "--window",
            "64",
            "--out",
            str(out),
            "--backends",
            "auto,sdpa,naive",
            "--window-backends",
            "auto,sdpa-band,naive",
            "--repeat",
            "2",
            "--min-seconds",
            "0",
        ]
    )
    assert status == 0
    printed = capsys.readouterr().out
    assert "Dense attention" in printed and "Sliding window 64" in printed and "Targets" in printed
    data = json.loads((out / "attention.json").read_text())
    assert (out / "attention.png").read_bytes()[:4] == b"\x89PNG"
    assert data["config"]["sizes"] == [256] and data["environment"]["torch"] == torch.__version__
    rows = {(r["section"], r["impl"]): r for r in data["rows"]}
    assert {
        ("dense", "sdpa (raw)"),
        ("dense", "auto"),
        ("dense", "sdpa"),
        ("dense", "naive"),
        ("window", "sdpa (raw)"),
        ("window", "auto"),
        ("window", "naive"),
        ("window", "sdpa-band"),
    } <= set(rows)
    scores_bytes = 1 * 8 * 256 * 256 * 4  # the (B, H, N, N) float32 scores naive must hold
    for (section, impl), r in rows.items():
        if impl == "auto-dense":
            continue
        for mode in ("fwd", "fwd_bwd"):
            p = r[mode]
            assert p["skipped"] is None, (section, impl, mode, p["skipped"])
            assert 0 < p["seconds"] < 10, (section, impl, mode)
            pairs = bench_attention.allowed_pairs(256, True, r["window"])
            flop = 4 * 8 * 64 * pairs * (1 if mode == "fwd" else 3.5)
            assert p["gflops"] == pytest.approx(flop / p["seconds"] / 1e9)
            assert p["peak_bytes"] is not None and 0 <= p["peak_bytes"] < 256 * 2**20, (
                section,
                impl,
                mode,
            )
        if impl == "naive":
            assert r["fwd"]["peak_bytes"] >= scores_bytes
    # every output agrees with raw SDPA (dense) / the naive windowed reference (window)
    keys = [("dense", "auto"), ("dense", "sdpa"), ("dense", "naive"), ("window", "auto")]
    for key in keys + [("window", "sdpa-band")]:
        assert rows[key]["max_abs_err"] is not None and rows[key]["max_abs_err"] < 1e-4, key
    assert rows[("dense", "sdpa (raw)")]["fwd"]["vs_reference"] == 1.0
    for r in rows.values():  # every timing has its spread over at least the 2 rounds asked for
        for mode in ("fwd", "fwd_bwd"):
            if r[mode]["seconds"] is not None:
                assert r[mode]["rounds"] >= 2 and 0 <= r[mode]["spread"] < 100, (r["impl"], mode)
    assert "(slowest - fastest) / median" in printed
    assert {c["key"] for c in data["checks"]} == set(bench_attention.TARGETS)
    assert all(c["result"] == "n/a" for c in data["checks"])  # targets are for N=4096.., not 256
