"""attnkit._util.devices: the one place devices and dtypes are decided, and the commands'
``--device``/``--dtype`` that go through it.

The machine's CUDA and MPS are replaced by stand-ins (monkeypatched ``is_available`` and
``device_count``) so that every branch runs on a CPU-only machine; nothing is allocated on a
device that is not there.
"""

import pytest
import torch

from attnkit._util import devices
from attnkit._util.devices import available_devices, resolve_device, resolve_dtype
from attnkit.training import distributed, precision


@pytest.fixture()
def machine(monkeypatch):
    """``machine(cuda=N, mps=bool)``: what torch reports as present."""

    def set_up(cuda: int = 0, mps: bool = False) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: cuda)
        monkeypatch.setattr(devices, "_mps_available", lambda: mps)

    return set_up


def test_auto_prefers_cuda_then_mps_then_cpu(machine):
    machine(cuda=0, mps=False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device(None) == torch.device("cpu")
    machine(cuda=0, mps=True)
    assert resolve_device("auto") == torch.device("mps")
    machine(cuda=2, mps=True)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("AUTO") == torch.device("cuda")


def test_named_devices(machine):
    machine(cuda=2, mps=True)
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("cuda") == torch.device("cuda")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_device(torch.device("cuda", 0)) == torch.device("cuda", 0)
    assert resolve_device("mps") == torch.device("mps")
    assert available_devices() == ["cpu", "cuda:0", "cuda:1", "mps"]


def test_cuda_without_cuda_names_it_and_what_is_here(machine):
    machine(cuda=0, mps=False)
    with pytest.raises(ValueError) as e:
        resolve_device("cuda", "--device")
    assert str(e.value) == (
        "--device 'cuda' needs CUDA, which is not available here; available: cpu (or 'auto')"
    )
    with pytest.raises(ValueError, match=r"--device 'cuda:0' needs CUDA.*available: cpu"):
        resolve_device("cuda:0", "--device")
    with pytest.raises(ValueError, match="'mps' needs Apple's MPS.*available: cpu"):
        resolve_device("mps")


def test_cuda_index_past_the_count(machine):
    machine(cuda=1)
    with pytest.raises(ValueError) as e:
        resolve_device("cuda:3", "train.device")
    assert str(e.value) == (
        "train.device 'cuda:3': there is no CUDA device 3; available: cpu, cuda:0"
    )


@pytest.mark.parametrize("bad", ["tpu", "cuda:x", "cpu:0", "gpu", "", "cuda:"])
def test_names_that_are_no_device(machine, bad):
    machine(cuda=0)
    with pytest.raises(ValueError) as e:
        resolve_device(bad, "--device")
    assert str(e.value) == (
        f"--device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got {bad!r}"
    )


def test_a_device_of_the_wrong_type():
    with pytest.raises(TypeError, match="device must be a device name.*got 3"):
        resolve_device(3)  # type: ignore[arg-type]


def test_dtypes():
    cpu, cuda, mps = torch.device("cpu"), torch.device("cuda"), torch.device("mps")
    assert resolve_dtype("float32", cpu) is torch.float32
    assert resolve_dtype("bfloat16", cpu) is torch.bfloat16
    assert resolve_dtype(torch.bfloat16, cpu) is torch.bfloat16
    assert resolve_dtype("float16", cuda) is torch.float16
    assert resolve_dtype("float16", mps) is torch.float16
    with pytest.raises(ValueError) as e:
        resolve_dtype("float16", cpu, "--dtype")
    assert str(e.value) == (
        "--dtype 'float16' needs CUDA or MPS, and the device is 'cpu'; "
        "expected 'bfloat16' or 'float32' on cpu"
    )
    with pytest.raises(ValueError, match=r"dtype must be one of \['float32', 'bfloat16', "):
        resolve_dtype("float64", cpu)
    with pytest.raises(ValueError, match="dtype must be one of .* got torch.int8"):
        resolve_dtype(torch.int8, cpu)


def test_training_decides_through_the_resolver(machine):
    """train.device and train.dtype: distributed.init and precision.check_dtype give the
    resolver's answers and its messages, with the setting's name."""
    machine(cuda=0)
    assert distributed.init("auto").device == torch.device("cpu")
    assert distributed.init("cpu").device == torch.device("cpu")
    with pytest.raises(ValueError, match="^train.device 'cuda' needs CUDA"):
        distributed.init("cuda")
    with pytest.raises(ValueError, match="^train.dtype 'float16' needs CUDA or MPS"):
        precision.check_dtype("float16", torch.device("cpu"))
    assert precision.check_dtype("bfloat16", torch.device("cpu")) is torch.bfloat16
    assert precision.DTYPES is devices.DTYPES


def test_bench_harness_decides_through_the_resolver(machine):
    from attnkit.bench.harness import resolve_device as bench_device

    machine(cuda=0)
    assert bench_device("auto") == torch.device("cpu")
    with pytest.raises(ValueError, match="^device 'cuda' needs CUDA"):
        bench_device("cuda")


# ------------------------------------------------------------------ every command's flags
# Each command that runs a model runs on a tiny one twice, with the defaults and with
# --device cpu --dtype float32 (the same thing on this machine: auto is the CPU without
# CUDA), and the outputs are compared exactly; with --dtype bfloat16 they are compared with
# the tolerance bfloat16's 8-bit mantissa allows (stated at each).

import json  # noqa: E402

import numpy as np  # noqa: E402
from test_checkpoints import word_tokenizer  # noqa: E402

import attnkit  # noqa: E402
from attnkit.cli import main  # noqa: E402
from attnkit.models import build_model, get_preset  # noqa: E402
from attnkit.text.tokenizers import train_char  # noqa: E402

TEXT = "to be or not to be, that is the question\n" * 8
WORDS = ["he swung the bat", "a bat flew out of the cave", "the cave"]
CPU = ["--device", "cpu", "--dtype", "float32"]
BF16 = ["--device", "cpu", "--dtype", "bfloat16"]


@pytest.fixture(scope="module")
def gpt_dir(tmp_path_factory):
    torch.manual_seed(0)
    tok = train_char(TEXT)
    cfg = get_preset("tiny", vocab_size=tok.get_vocab_size(), max_seq_len=64, d_model=32)
    out = tmp_path_factory.mktemp("dev") / "gpt"
    attnkit.save(build_model(cfg.replace(initializer_range=0.2)).eval(), out, tokenizer=tok)
    (out.parent / "text.txt").write_text(TEXT)
    return out


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    torch.manual_seed(1)
    cfg = get_preset("tiny-bert", vocab_size=80, d_model=32, n_heads=4, pooling="mean")
    out = tmp_path_factory.mktemp("dev") / "bert"
    attnkit.save(build_model(cfg).eval(), out, tokenizer=word_tokenizer())
    return out


@pytest.fixture(scope="module")
def clf_dir(tmp_path_factory):
    from attnkit.tasks.classification import classifier_from

    torch.manual_seed(3)
    cfg = get_preset("tiny-bert", vocab_size=80, d_model=32, n_heads=4, pooling="mean")
    base = build_model(cfg).eval()
    base.meta = base.meta.replace(tokenizer=word_tokenizer())
    model = classifier_from(base, ["a", "b"]).eval()
    out = tmp_path_factory.mktemp("dev") / "clf"
    attnkit.save(model, out, tokenizer=word_tokenizer())
    rows = "text,label\n" + "".join(f"{t},{'ab'[i % 2]}\n" for i, t in enumerate(WORDS))
    (out.parent / "labelled.csv").write_text(rows)
    (out.parent / "pairs.tsv").write_text(
        "he swung the bat\tthe bat\t4.0\nthe cave\the swung\t0.5\na bat flew\tthe bat flew\t3.0\n"
    )
    return out


def run(capsys, argv: list[str]) -> str:
    assert main(argv) == 0, argv
    return capsys.readouterr().out


@pytest.mark.parametrize(
    "argv",
    [
        ["generate", "--prompt", "to be", "--temperature", "0", "--max-new-tokens", "12"],
        ["generate", "--prompt", "to", "--prompt", "or not", "--seed", "2", "--top-k", "5"],
    ],
)
def test_generate_accepts_the_flags(capsys, gpt_dir, argv):
    argv = [*argv, "--model", str(gpt_dir)]
    default = run(capsys, argv)
    assert run(capsys, [*argv, *CPU]) == default
    assert default.startswith("to")


def test_embed_and_similarity_accept_the_flags(capsys, bert_dir):
    argv = ["embed", *WORDS, "--model", str(bert_dir)]
    default = run(capsys, argv)
    assert run(capsys, [*argv, *CPU]) == default
    f32 = np.array([json.loads(line)["embedding"] for line in default.splitlines()])
    bf16 = np.array(
        [json.loads(line)["embedding"] for line in run(capsys, [*argv, *BF16]).splitlines()]
    )
    # unit vectors; bfloat16 weights and activations (8-bit mantissa, steps of 2**-8 near 1):
    # within 1e-2 per component, and pointing the same way (cosine >= 0.9995)
    np.testing.assert_allclose(bf16, f32, atol=1e-2)
    assert (np.sum(bf16 * f32, axis=1) / np.linalg.norm(bf16, axis=1) >= 0.9995).all()
    sim = ["similarity", WORDS[0], WORDS[1], "--model", str(bert_dir)]
    default = run(capsys, sim)
    assert run(capsys, [*sim, *CPU]) == default
    assert abs(float(run(capsys, [*sim, *BF16])) - float(default)) <= 2e-2


def test_inspect_accepts_the_flags(capsys, bert_dir, tmp_path, monkeypatch):
    from attnkit.inspect import render

    for name in ("plot_layer", "plot_head", "plot_rollout"):  # the maps, not the PNGs, count
        monkeypatch.setattr(render, name, lambda w, tokens, path, **kw: path)
    argv = ["inspect", "--model", str(bert_dir), "--text", WORDS[1]]
    run(capsys, [*argv, "--out", str(tmp_path / "a")])
    run(capsys, [*argv, "--out", str(tmp_path / "b"), *CPU])
    run(capsys, [*argv, "--out", str(tmp_path / "c"), *BF16])
    a, b, c = (np.load(tmp_path / d / "maps.npz") for d in "abc")
    for key in a.files:
        np.testing.assert_array_equal(a[key], b[key])
    # attention probabilities in [0, 1]: bfloat16 within 2e-2 of float32
    np.testing.assert_allclose(c["layer_1"], a["layer_1"], atol=2e-2)


def test_classify_and_eval_accept_the_flags(capsys, clf_dir, bert_dir):
    classify = ["classify", *WORDS, "--model", str(clf_dir), "--json"]
    default = run(capsys, classify)
    assert run(capsys, [*classify, *CPU]) == default
    f32 = [json.loads(line)["probabilities"]["a"] for line in default.splitlines()]
    bf16 = [
        json.loads(x)["probabilities"]["a"]
        for x in run(capsys, [*classify, *BF16]).split("\n")
        if x
    ]
    np.testing.assert_allclose(bf16, f32, atol=2e-2)  # probabilities: within 2e-2
    labelled = str(clf_dir.parent / "labelled.csv")
    ev = ["eval", "classification", "--model", str(clf_dir), "--file", labelled]
    default = run(capsys, ev)
    assert run(capsys, [*ev, *CPU]) == default
    sts = ["eval", "sts", "--model", str(bert_dir), "--file", str(clf_dir.parent / "pairs.tsv")]
    default = run(capsys, sts)
    assert run(capsys, [*sts, *CPU]) == default


def test_perplexity_accepts_the_flags(capsys, gpt_dir):
    argv = [
        "eval",
        "perplexity",
        "--model",
        str(gpt_dir),
        "--data",
        str(gpt_dir.parent / "text.txt"),
    ]
    argv += ["--block-size", "32"]
    default = run(capsys, argv)
    assert run(capsys, [*argv, *CPU]) == default
    f32 = json.loads(default)["perplexity"]
    bf16 = json.loads(run(capsys, [*argv, *BF16]))["perplexity"]
    assert abs(bf16 - f32) / f32 <= 0.02  # bfloat16 weights: perplexity within 2 %


def test_swap_accepts_the_flags(capsys, bert_dir):
    argv = ["swap", *WORDS, "--model", str(bert_dir), "--variant", "local", "--json"]
    argv += ["--variant-param", "block_size=2", "--rounds", "1"]
    keys = ("embedding_cos_mean", "embedding_cos_min", "n_tokens", "layers")
    default = json.loads(run(capsys, argv))
    mine = json.loads(run(capsys, [*argv, *CPU]))
    assert {k: mine[k] for k in keys} == {k: default[k] for k in keys}
    assert mine["device"] == default["device"] == "cpu"


@pytest.fixture(scope="module")
def encdec_dir(tmp_path_factory):
    from attnkit.models.encdec_config import get_encdec_preset

    torch.manual_seed(4)
    tok = train_char(TEXT)
    V = tok.get_vocab_size()
    ids = dict(pad_token_id=V - 1, decoder_start_token_id=V - 1, eos_token_id=0)
    cfg = get_encdec_preset("tiny-marian", vocab_size=V, max_seq_len=64, **ids)
    cfg = cfg.replace(initializer_range=0.5)
    out = tmp_path_factory.mktemp("dev") / "encdec"
    attnkit.save(build_model(cfg).eval(), out, tokenizer=tok)
    return out


def test_translate_accepts_the_flags(capsys, encdec_dir):
    argv = ["translate", "to be", "or not", "--model", str(encdec_dir), "--max-new-tokens", "8"]
    default = run(capsys, argv)
    assert run(capsys, [*argv, *CPU]) == default
    assert len(default.splitlines()) == 2
    assert len(run(capsys, [*argv, *BF16]).splitlines()) == 2


def test_explain_takes_the_device_flags(capsys):
    argv = ["explain", "--seq-len", "128", "--causal"]
    default = run(capsys, argv)
    assert run(capsys, [*argv, "--device", "cpu", "--dtype", "float32"]) == default
    assert run(capsys, [*argv, "--device", "auto", "--dtype", "bfloat16"])


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("attnkit: error: "), err
    return err[0]


@pytest.mark.parametrize(
    "argv",
    [
        ["generate", "--model", "{gpt}", "--prompt", "to"],
        ["embed", "a", "--model", "{bert}"],
        ["similarity", "a", "b", "--model", "{bert}"],
        ["inspect", "--model", "{bert}", "--text", "a", "--out", "{tmp}"],
        ["classify", "a", "--model", "{bert}"],
        ["swap", "a", "--model", "{bert}", "--variant", "local"],
        ["eval", "perplexity", "--model", "{gpt}", "--data", "{tmp}/t.txt"],
        ["eval", "classification", "--model", "{bert}", "--file", "{tmp}/x.csv"],
        ["eval", "sts", "--model", "{bert}", "--file", "{tmp}/x.tsv"],
        ["serve", "--model", "{bert}", "--port", "0"],
        ["finetune", "--model", "{bert}", "--train", "{csv}", "--eval", "{csv}", "--out", "{tmp}"],
        ["chat", "--model", "{gpt}"],
        ["translate", "a", "--model", "{gpt}"],
        ["explain", "--seq-len", "8"],
    ],
)
def test_every_command_refuses_a_missing_cuda_in_one_line(
    capsys, machine, gpt_dir, bert_dir, clf_dir, tmp_path, argv
):
    machine(cuda=0, mps=False)
    csv = clf_dir.parent / "labelled.csv"
    filled = [a.format(gpt=gpt_dir, bert=bert_dir, tmp=tmp_path, csv=csv) for a in argv]
    with pytest.raises(SystemExit) as e:
        main([*filled, "--device", "cuda"])
    assert e.value.code == 2
    line = one_error_line(capsys)
    assert "'cuda' needs CUDA, which is not available here; available: cpu" in line, line


@pytest.mark.parametrize("command", ["generate", "embed", "serve", "finetune"])
def test_float16_on_the_cpu_is_refused(capsys, gpt_dir, bert_dir, clf_dir, tmp_path, command):
    csv = str(clf_dir.parent / "labelled.csv")
    argv = {
        "generate": ["generate", "--model", str(gpt_dir)],
        "embed": ["embed", "a", "--model", str(bert_dir)],
        "serve": ["serve", "--model", str(bert_dir), "--port", "0"],
        "finetune": ["finetune", "--model", str(bert_dir), "--train", csv, "--eval", csv]
        + ["--out", str(tmp_path)],
    }[command]
    with pytest.raises(SystemExit) as e:
        main([*argv, "--device", "cpu", "--dtype", "float16"])
    assert e.value.code == 2
    assert "'float16' needs CUDA or MPS, and the device is 'cpu'" in one_error_line(capsys)


def test_serve_loads_on_the_device_in_the_dtype(bert_dir, gpt_dir):
    from attnkit.serve import Limits, load_services
    from attnkit.serve.server import close

    services = load_services([bert_dir, gpt_dir], Limits(), torch.device("cpu"), torch.bfloat16)
    try:
        dtypes = set()
        for s in services.values():
            model = getattr(s, "model", None) or s.encoder.model  # type: ignore[attr-defined]
            dtypes |= {p.dtype for p in model.parameters()}
        assert dtypes == {torch.bfloat16}
    finally:
        close(services)


# ----------------------------------------------------------------------------- on a GPU
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_commands_on_cuda_agree_with_the_cpu(capsys, gpt_dir, bert_dir):
    """--device cuda: embeddings within 1e-4 of the CPU's in float32 and within 1e-2 in
    float16 and bfloat16 (unit vectors); greedy text the same in float32; a chat's cached
    reply on the GPU equal to an uncached one there."""
    from attnkit.generation.chat import ChatSession

    embed = ["embed", *WORDS, "--model", str(bert_dir)]
    cpu = np.array([json.loads(x)["embedding"] for x in run(capsys, [*embed, *CPU]).splitlines()])
    for dtype, atol in (("float32", 1e-4), ("float16", 1e-2), ("bfloat16", 1e-2)):
        out = run(capsys, [*embed, "--device", "cuda", "--dtype", dtype])
        got = np.array([json.loads(x)["embedding"] for x in out.splitlines()])
        np.testing.assert_allclose(got, cpu, atol=atol, err_msg=dtype)
    gen = ["generate", "--model", str(gpt_dir), "--prompt", "to be", "--temperature", "0"]
    gen += ["--max-new-tokens", "8"]
    assert run(capsys, [*gen, "--device", "cuda"]) == run(capsys, [*gen, *CPU])
    model = attnkit.load(gpt_dir, device="cuda")
    chat = ChatSession(model, max_new_tokens=6, temperature=0)
    first = [t.token_id for t in chat.send("to be").tokens]
    second = [t.token_id for t in chat.send(" or").tokens]
    ids = model.meta.tokenizer.encode("to be").ids + first + model.meta.tokenizer.encode(" or").ids
    cold = attnkit.generate(model, ids, max_new_tokens=6, temperature=0, use_cache=False)
    assert second == cold[len(ids) :]
