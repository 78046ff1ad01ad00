"""train.init_from: a run starts from a checkpoint's weights, with its tokenizer and config.

Step 0 of a warm-started run must score the checkpoint exactly as the checkpoint's own run
scored it on the same validation windows; from an HF GPT-2 directory built here, the step-0
loss must equal transformers' loss on those windows; a config that contradicts the
checkpoint is refused naming the key and both values; a resumed run ignores init_from.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest
import torch

import attnkit
from attnkit import cli
from attnkit.training import config as run_config
from attnkit.training.loop import pretrain

TINY = {
    "model": {"arch": "gpt", "n_layer": 1, "n_heads": 2, "d_model": 16, "max_seq_len": 16},
    "data": {"tokenizer": "char"},
    "train": {
        "batch_size": 4,
        "block_size": 16,
        "max_iters": 12,
        "eval_interval": 12,
        "eval_iters": 3,
        "log_interval": 1,
        "warmup_iters": 0,
        "lr": 1e-2,
        "min_lr": 1e-3,
        "progress": False,
    },
}


@pytest.fixture()
def corpus(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("ATTNKIT_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "corpus.txt"
    path.write_text(
        "".join(f"line {i}: the quick brown fox jumps over the lazy dog.\n" for i in range(300))
    )
    return path


def run(corpus: Path, out: Path, base=None, resume=False, **keys: object) -> dict:
    overrides = [("data.corpus", str(corpus))] + list(keys.items())
    return pretrain(run_config.build(base or TINY, overrides), out, resume=resume)


def train_rows(out: Path) -> list[dict]:
    rows = map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
    return [r for r in rows if r["split"] == "train"]


@pytest.fixture()
def trained(corpus, tmp_path) -> tuple[Path, dict]:
    out = tmp_path / "a"
    return out, run(corpus, out)


def test_step0_loss_is_the_checkpoints_eval_loss_on_the_same_windows(
    corpus, tmp_path, trained, caplog
):
    a, summary_a = trained
    # evaluated once, at the end: the best model written is the final one
    assert summary_a["best_val_loss"] == summary_a["val_loss"]
    vocab = summary_a["vocab_size"]
    with caplog.at_level(logging.INFO, logger="attnkit"):
        b = run(
            corpus,
            tmp_path / "b",
            **{
                "train.init_from": str(a),
                "train.max_iters": 3,
                "data.tokenizer": "bpe",  # overridden by the checkpoint's tokenizer
                "data.vocab_size": 300,
            },
        )
    assert abs(b["init_val_loss"] - summary_a["val_loss"]) <= 1e-6
    rows = map(json.loads, (tmp_path / "b/metrics.jsonl").read_text().splitlines())
    step0 = [r for r in rows if r["split"] == "val" and r["step"] == 0]
    assert [r["loss"] for r in step0] == [b["init_val_loss"]]
    assert b["init_from"] == str(a)
    # its first step trains the trained model (a fresh one starts near ln(vocab))
    first = train_rows(tmp_path / "b")[0]["loss"]
    assert first < math.log(vocab) - 0.5, (first, math.log(vocab))
    assert (tmp_path / "b/tokenizer.json").read_text() == (a / "tokenizer.json").read_text()
    said = " ".join(r.getMessage() for r in caplog.records)
    assert "tokenized with its tokenizer" in said and "overriding data.tokenizer='bpe'" in said
    assert "data.vocab_size=300" in said


def test_init_from_an_hf_gpt2_directory(corpus, tmp_path):
    transformers = pytest.importorskip("transformers")
    from attnkit._util.fs import cache_dir
    from attnkit.text.corpora import load_corpus
    from attnkit.text.datasets import build_streams
    from attnkit.text.tokenizers import train_bpe
    from attnkit.training import distributed
    from attnkit.training.objectives import Batches

    tok = train_bpe(corpus.read_text(), 300)
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(
        transformers.GPT2Config(
            vocab_size=tok.get_vocab_size(), n_embd=16, n_layer=1, n_head=2, n_positions=32
        )
    ).eval()
    hf_dir = tmp_path / "hf"
    hf.save_pretrained(hf_dir)
    tok.save(str(hf_dir / "tokenizer.json"))
    base = {"data": TINY["data"], "train": TINY["train"]}  # no [model]: the checkpoint's
    out = tmp_path / "run"
    summary = run(corpus, out, base, **{"train.init_from": str(hf_dir), "train.max_iters": 2})
    saved = json.loads((out / "config.json").read_text())["model"]
    assert (saved["d_model"], saved["max_seq_len"], saved["vocab_size"]) == (16, 32, 300)
    # transformers' loss on the windows the run evaluates
    cfg = run_config.build(base, [("data.corpus", str(corpus)), ("train.init_from", str(hf_dir))])
    stream = build_streams(load_corpus(str(corpus)), tok, cfg.data.val_fraction, cache_dir())
    batches = Batches(stream["val"], cfg, distributed.init("cpu"), "clm", tok, cfg.train.seed + 2)
    total, count = 0.0, 0
    with torch.no_grad():
        for _ in range(cfg.train.eval_iters):
            x, y, _ = batches.next()
            logits = hf(input_ids=x).logits
            total += torch.nn.functional.cross_entropy(
                logits.flatten(0, 1), y.flatten(), reduction="sum"
            ).item()
            count += y.numel()
    assert abs(summary["init_val_loss"] - total / count) <= 1e-5


def test_init_from_an_hf_llama_directory_exported_from_a_run(corpus, tmp_path):
    """attnkit run (RoPE, RMSNorm, SwiGLU, GQA) -> HF Llama directory -> a run starting there
    scores the same as the first run did on the same windows."""
    pytest.importorskip("transformers")
    from attnkit.checkpoints.hf import export_hf

    llama = {"positional": "rope", "norm": "rmsnorm", "mlp": "swiglu", "bias": False,
             "n_heads": 4, "n_kv_heads": 2}  # fmt: skip
    base = {**TINY, "model": {**TINY["model"], **llama}}
    a = tmp_path / "a"
    first = run(corpus, a, base)
    export_hf(attnkit.load(a), tmp_path / "hf")
    assert json.loads((tmp_path / "hf/config.json").read_text())["model_type"] == "llama"
    again = run(
        corpus, tmp_path / "b", base, **{"train.init_from": str(tmp_path / "hf"),
                                         "train.max_iters": 1}
    )  # fmt: skip
    assert abs(again["init_val_loss"] - first["val_loss"]) <= 1e-5


def test_init_from_an_hf_bert_directory_continues_masked_lm(corpus, tmp_path):
    """attnkit BERT run -> HF BertForMaskedLM directory (WordPiece vocab.txt-free: its
    tokenizer.json) -> a masked-LM run starting there: the same step-0 loss, same masks."""
    pytest.importorskip("transformers")
    from attnkit.checkpoints.hf import export_hf

    bert = {"arch": "bert", "n_layer": 1, "n_heads": 2, "d_model": 16, "max_seq_len": 16,
            "norm_placement": "post", "embed_norm": True, "final_norm": False,
            "type_vocab_size": 2, "mlp": "gelu", "norm_eps": 1e-12}  # fmt: skip
    base = {
        "model": bert,
        "data": {"tokenizer": "wordpiece", "vocab_size": 200},
        "train": TINY["train"],
    }
    a = tmp_path / "a"
    first = run(corpus, a, base)
    export_hf(attnkit.load(a), tmp_path / "hf")
    hf_cfg = json.loads((tmp_path / "hf/config.json").read_text())
    assert hf_cfg["architectures"] == ["BertForMaskedLM"]
    again = run(
        corpus, tmp_path / "b", base, **{"train.init_from": str(tmp_path / "hf"),
                                         "train.max_iters": 1}
    )  # fmt: skip
    assert again["objective"] == "masked LM"
    assert abs(again["init_val_loss"] - first["val_loss"]) <= 1e-5


def test_a_config_that_contradicts_the_checkpoint_is_refused(corpus, tmp_path, trained):
    a, _ = trained
    with pytest.raises(ValueError, match=rf"model.d_model=32 but the checkpoint at {a} has 16"):
        run(corpus, tmp_path / "b", **{"train.init_from": str(a), "model.d_model": 32})
    with pytest.raises(ValueError, match=r"train.block_size=32 exceeds max_seq_len=16"):
        run(
            corpus,
            tmp_path / "c",
            **{"train.init_from": str(a), "train.block_size": 32, "model.max_seq_len": 16},
        )
    with pytest.raises(ValueError, match=r"train.init_from: 'nowhere' is neither"):
        run(corpus, tmp_path / "d", **{"train.init_from": "nowhere"})
    model = attnkit.load(a)
    attnkit.save(model, tmp_path / "no-tok", tokenizer=None)
    (tmp_path / "no-tok/tokenizer.json").unlink(missing_ok=True)
    with pytest.raises(ValueError, match=r"the checkpoint at .*no-tok has no tokenizer"):
        run(corpus, tmp_path / "f", **{"train.init_from": str(tmp_path / "no-tok")})
    from attnkit.models import build_model

    headless = build_model(model.config.replace(head="none"))
    attnkit.save(headless, tmp_path / "headless", tokenizer=model.meta.tokenizer)
    with pytest.raises(ValueError, match=r"a gpt with head='none'; pre-training from it needs "):
        run(corpus, tmp_path / "g", **{"train.init_from": str(tmp_path / "headless")})
    # training-time fields may differ
    run(
        corpus,
        tmp_path / "e",
        **{"train.init_from": str(a), "model.dropout": 0.1, "train.max_iters": 1},
    )
    assert json.loads((tmp_path / "e/config.json").read_text())["model"]["dropout"] == 0.1


def test_a_resumed_run_ignores_init_from(corpus, tmp_path, trained):
    a, _ = trained
    out = tmp_path / "b"
    run(corpus, out, **{"train.init_from": str(a), "train.max_iters": 4, "train.eval_interval": 2})
    again = run(
        corpus,
        out,
        resume=True,
        **{
            "train.init_from": str(tmp_path / "gone"),
            "train.max_iters": 6,
            "train.eval_interval": 2,
        },
    )
    assert again["resumed_from"] == 4 and "init_val_loss" not in again


def test_init_from_through_the_cli(corpus, tmp_path, capsys):
    small = ["--model.n_layer", "1", "--model.n_heads", "2", "--model.d_model", "32"]
    common = [
        "pretrain", "--config", "gpt-shakespeare-char", "--data", str(corpus),
        "--train.batch_size", "4", "--train.block_size", "16", "--train.eval_iters", "2",
        "--train.progress", "false", "--train.threads", "1",
    ]  # fmt: skip
    a, b = tmp_path / "a", tmp_path / "b"
    assert cli.main([*common, *small, "--out", str(a), "--train.max_iters", "6"]) == 0
    args = [*common, "--out", str(b), "--train.max_iters", "2", "--train.init_from", str(a)]
    with pytest.raises(SystemExit) as exc:  # the config's d_model=128 is not the checkpoint's
        cli.main(args)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("attnkit: error: ")
    assert err[0].endswith(
        f"model.n_layer=4 but the checkpoint at {a} has 1; model.n_heads=4 but it has 2; "
        "model.d_model=128 but it has 32; expected those keys unset or as the checkpoint has "
        "them (train.init_from takes the model config from the checkpoint; only "
        "model.dropout, model.attn_dropout, model.backend may differ)"
    )
    assert cli.main([*args, *small]) == 0
    summary = json.loads((b / "summary.json").read_text())
    assert summary["init_from"] == str(a) and summary["iters"] == 2


def test_init_from_needs_no_config_file_on_the_cli(corpus, tmp_path, trained):
    a, summary_a = trained
    out = tmp_path / "b"
    argv = ["pretrain", "--data", str(corpus), "--out", str(out), "--train.init_from", str(a)]
    keys = ["--train.block_size", "16", "--train.eval_iters", "3", "--train.batch_size", "4"]
    keys += ["--train.max_iters", "1", "--train.progress", "false"]
    assert cli.main([*argv, *keys]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert abs(summary["init_val_loss"] - summary_a["val_loss"]) <= 1e-6
