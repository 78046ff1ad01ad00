"""`attnkit convert`, `embed`, `similarity` and `bench embed`, run in-process on tiny models."""

import io as _io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_checkpoints import word_tokenizer

import attnkit
from attnkit import Encoder
from attnkit.cli import main
from attnkit.models import build_model, get_preset

CORPUS = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "tinyshakespeare.txt"


@pytest.fixture()
def bert_dir(tmp_path):
    cfg = get_preset("tiny-bert", vocab_size=80, d_model=32, n_heads=4, pooling="mean")
    model = build_model(cfg).eval()
    out = tmp_path / "tiny-bert"
    attnkit.save(model, out, tokenizer=word_tokenizer())
    return out


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("attnkit: error: "), err
    return err[0]


def test_embed_from_arguments_to_npy(bert_dir, tmp_path, capsys):
    out = tmp_path / "e.npy"
    assert (
        main(
            [
                "embed",
                "he swung the bat",
                "a bat flew out",
                "--model",
                str(bert_dir),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    got = np.load(out)
    ref = Encoder.load(bert_dir).encode(["he swung the bat", "a bat flew out"])
    assert got.shape == (2, 32)
    np.testing.assert_allclose(got, ref, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert "wrote 2 embeddings of dimension 32" in capsys.readouterr().err


def test_embed_from_file_and_stdin_to_jsonl(bert_dir, tmp_path, monkeypatch, capsys):
    src = tmp_path / "texts.txt"
    src.write_text("the cave\n\nout of the cave\n")
    out = tmp_path / "e.jsonl"
    assert main(["embed", "--file", str(src), "--model", str(bert_dir), "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["text"] for r in rows] == ["the cave", "out of the cave"]
    capsys.readouterr()
    monkeypatch.setattr("sys.stdin", _io.StringIO("the cave\nout of the cave\n"))
    assert main(["embed", "--model", str(bert_dir), "--no-normalize"]) == 0
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    raw = Encoder.load(bert_dir).encode(["the cave", "out of the cave"], normalize=False)
    np.testing.assert_allclose(np.array([r["embedding"] for r in printed]), raw, atol=1e-6)


def test_similarity_of_texts_and_of_a_word(bert_dir, capsys):
    enc = Encoder.load(bert_dir)
    a, b = "he swung the bat", "a bat flew out of the cave"
    assert main(["similarity", a, b, "--model", str(bert_dir)]) == 0
    va, vb = enc.encode([a, b])
    assert float(capsys.readouterr().out) == pytest.approx(float(va @ vb), abs=1e-5)
    assert main(["similarity", a, b, "--word", "bat", "--model", str(bert_dir)]) == 0
    model = enc.model
    ids_a, ids_b = (torch.tensor([enc.tokenizer.encode(t).ids]) for t in (a, b))
    with torch.no_grad():  # "bat" is token 4 of [CLS] he swung the bat [SEP], token 2 of the other
        ha, hb = model(ids_a).hidden_states[0, 4], model(ids_b).hidden_states[0, 2]
    ref = torch.nn.functional.cosine_similarity(ha, hb, dim=0).item()
    assert float(capsys.readouterr().out.split()[-1]) == pytest.approx(ref, abs=1e-5)


def test_convert_to_hf_and_back(bert_dir, tmp_path, capsys):
    hf_dir, back = tmp_path / "hf", tmp_path / "back"
    assert main(["convert", "--to-hf", str(bert_dir), str(hf_dir)]) == 0
    assert json.loads((hf_dir / "config.json").read_text())["model_type"] == "bert"
    assert main(["convert", "--from-hf", str(hf_dir), str(back)]) == 0
    assert "wrote attnkit checkpoint" in capsys.readouterr().out
    a, b = attnkit.load(bert_dir), attnkit.load(back)
    ids = torch.randint(0, 80, (2, 7))
    with torch.no_grad():
        out_a, out_b = a(ids), b(ids)
    torch.testing.assert_close(out_a.hidden_states, out_b.hidden_states, atol=0, rtol=0)
    torch.testing.assert_close(out_a.logits, out_b.logits, atol=0, rtol=0)
    assert b.meta.tokenizer.encode("the bat").ids == a.meta.tokenizer.encode("the bat").ids


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["convert", "--to-hf", "/no/such/dir", "out"], "/no/such/dir: not a directory"),
        (["convert", "x", "y"], "one of the arguments --from-hf --to-hf is required"),
        (
            ["embed", "a", "--out", "e.txt"],
            "--out 'e.txt': expected a file name ending in .npy or .jsonl",
        ),
        (
            ["embed", "a", "--model", "nope"],
            "'nope' is neither a checkpoint directory nor a known model name",
        ),
    ],
)
def test_bad_arguments_give_one_line_and_status_2(argv, expected, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert expected in error_line(capsys)


def test_embed_with_no_texts_is_an_error(bert_dir, monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", _io.StringIO(""))
    with pytest.raises(SystemExit):
        main(["embed", "--model", str(bert_dir)])
    assert "no texts to embed" in error_line(capsys)


def test_bench_embed_runs_and_reports_both_sides(tmp_path, capsys):
    if not CORPUS.is_file():
        pytest.skip(
            f"real-text corpus {CORPUS} is absent (expected ../shared/data next to the repo)"
        )
    out = tmp_path / "bench"
    assert (
        main(
            [
                "bench",
                "embed",
                "--lines",
                "16",
                "--batch-size",
                "8",
                "--bf16-lines",
                "4",
                "--corpus",
                str(CORPUS),
                "--paired-model",
                "--passages",
                "0",
                "--no-onnx",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "sentence-transformers" in text and "bfloat16" in text and "load average" in text
    rows = json.loads((out / "embed.json").read_text())["rows"]
    assert [(r["impl"], r["dtype"]) for r in rows] == [
        ("sentence-transformers", "float32"),
        ("attnkit", "float32"),
        ("attnkit", "int8"),
        ("attnkit", "bfloat16"),
    ]
    assert rows[1]["min_cosine"] >= 0.99999 and rows[3]["min_cosine"] >= 0.99
    assert 0.99 <= rows[2]["min_cosine"] < 0.99999  # int8: close, and not float32
    assert all(r["sentences_per_s"] > 0 for r in rows)
    paired = json.loads((out / "embed.json").read_text())["paired_model"]
    assert paired["batches"] == 2 and paired["attnkit_s"] > 0 and paired["transformers_s"] > 0
    assert "model only, same 2 length-sorted batches" in text


def test_embed_into_a_closed_pipe_exits_141_quietly(bert_dir):
    """`attnkit embed ... | head -1`: the reader goes away, attnkit stops without a traceback."""
    import subprocess
    import sys

    texts = "".join(f"the bat {i}\n" for i in range(3000))  # far more than a pipe buffer holds
    proc = subprocess.Popen(
        [sys.executable, "-m", "attnkit", "embed", "--model", str(bert_dir)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    proc.stdin.write(texts)
    proc.stdin.close()
    first = json.loads(proc.stdout.readline())
    assert first["text"] == "the bat 0"
    proc.stdout.close()
    assert proc.wait(timeout=300) == 141
    assert proc.stderr.read() == ""
