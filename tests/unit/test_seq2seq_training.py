"""Encoder-decoder training (attnkit.training.seq2seq): tiny runs through the real CLI (pairs,
summaries, span corruption), exact resume, BLEU/chrF equal to sacrebleu's, span corruption
checked by hand, token-count batches."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

import attnkit
from attnkit import cli
from attnkit.generation.translate import translate
from attnkit.text.batching import token_batches
from attnkit.text.denoise import corrupt_spans, random_spans_mask, span_corruption
from attnkit.text.scores import translation_scores
from attnkit.training import config as run_config

sacrebleu = pytest.importorskip("sacrebleu")

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa".split()

TINY = [
    "--model.arch", "encdec",
    "--model.n_encoder_layers", "1",
    "--model.n_decoder_layers", "1",
    "--model.d_model", "32",
    "--model.n_heads", "2",
    "--model.d_ff", "64",
    "--model.max_seq_len", "40",
    "--model.norm_placement", "pre",
    "--model.final_norm", "true",
    "--data.tokenizer", "bpe",
    "--data.vocab_size", "300",
    "--data.max_source_len", "40",
    "--data.max_target_len", "40",
    "--train.batch_tokens", "256",
    "--train.lr", "3e-3",
    "--train.warmup_iters", "2",
    "--train.log_interval", "1",
    "--train.eval_sentences", "8",
    "--train.label_smoothing", "0.1",
    "--train.progress", "false",
    "--train.threads", "1",
]  # fmt: skip


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ATTNKIT_CACHE", str(tmp_path / "cache"))
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def reversal_pairs(path: Path, n: int = 300) -> Path:
    """source words -> the same words reversed and upper-cased: a task a tiny model learns."""
    r = random.Random(0)
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(n):
            words = [r.choice(WORDS) for _ in range(r.randint(2, 7))]
            f.write(" ".join(words) + "\t" + " ".join(reversed(words)).upper() + "\n")
    return path


def pretrain(tmp_path: Path, data: Path, name: str, *extra: str) -> dict:
    out = tmp_path / name
    args = ["pretrain", "--data", str(data), "--out", str(out), *TINY, *extra]
    if not any(a.startswith("--config") for a in extra):
        args += ["--config", str(write_empty_config(tmp_path))]
    assert cli.main(args) == 0
    return json.loads((out / "summary.json").read_text())


def write_empty_config(tmp_path: Path) -> Path:
    path = tmp_path / "base.toml"
    path.write_text('[model]\narch = "encdec"\n')
    return path


def rows(out: Path, split: str) -> list[dict]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["split"] == split]


# --------------------------------------------------------------------------------------------
# span corruption
# --------------------------------------------------------------------------------------------
def test_span_corruption_by_hand():
    # tokens   The  cute dog  walks in   the  park ;  mask 0 1 1 0 0 1 0
    ids = [10, 11, 12, 13, 14, 15, 16]
    mask = [False, True, True, False, False, True, False]
    source, target = corrupt_spans(ids, mask, sentinels=[100, 101, 102], eos_id=1)
    assert source == [10, 100, 13, 14, 101, 16, 1]
    assert target == [100, 11, 12, 101, 15, 1]
    # a span at the very end and one at the start
    source, target = corrupt_spans([5, 6, 7, 8], [True, False, True, True], [100, 101], 1)
    assert (source, target) == ([100, 6, 101, 1], [100, 5, 101, 7, 8, 1])
    with pytest.raises(ValueError, match="more than 1 spans"):
        corrupt_spans([5, 6, 7], [True, False, True], [100], 1)


def test_random_spans_mask_counts_as_t5():
    gen = torch.Generator().manual_seed(0)
    for length in (20, 64, 128):
        for _ in range(20):
            mask = random_spans_mask(length, 0.15, 3.0, gen)
            noise = round(length * 0.15)
            spans = max(round(noise / 3.0), 1)
            starts = sum(1 for i, m in enumerate(mask) if m and (i == 0 or not mask[i - 1]))
            assert len(mask) == length and sum(mask) == noise and starts == spans
            assert not mask[0]  # T5's runs start with kept tokens
    sentinels, eos = list(range(100, 120)), 999
    a = span_corruption(list(range(50)), sentinels, eos, torch.Generator().manual_seed(3))
    b = span_corruption(list(range(50)), sentinels, eos, torch.Generator().manual_seed(3))
    assert a == b
    src, tgt = a
    # every token is in exactly one of the two, sentinels aside
    kept = [t for t in src if t < 100]
    hidden = [t for t in tgt if t < 100]
    assert sorted(kept + hidden) == list(range(50)) and src[-1] == tgt[-1] == eos
    assert len(hidden) == 8 and src.count(100) == tgt.count(100) == 1


# --------------------------------------------------------------------------------------------
# batches and scores
# --------------------------------------------------------------------------------------------
def test_token_batches_fit_the_budget_and_waste_little():
    r = random.Random(1)
    lengths = [(r.randint(3, 60), r.randint(3, 60)) for _ in range(2000)]
    gen = torch.Generator().manual_seed(5)
    batches = token_batches(lengths, 1000, shuffle=True, generator=gen)
    assert sorted(i for b in batches for i in b) == list(range(2000))
    for b in batches:
        widest = max(max(lengths[i]) for i in b)
        assert len(b) * widest <= 1000 or len(b) == 1
    again = token_batches(lengths, 1000, shuffle=True, generator=torch.Generator().manual_seed(5))
    assert again == batches

    # padding of the source side: sorted batches waste far less than random ones of equal size
    def waste(groups):
        real = sum(lengths[i][0] for g in groups for i in g)
        return 1 - real / sum(len(g) * max(lengths[i][0] for i in g) for g in groups)

    perm = list(range(2000))
    r.shuffle(perm)
    sizes = [len(b) for b in batches]
    at, plain = 0, []
    for s in sizes:
        plain.append(perm[at : at + s])
        at += s
    assert waste(batches) < 0.05 < 0.3 < waste(plain)


def test_translation_scores_are_sacrebleu():
    hyps = ["Y dijo Dios: Sea la luz.", "el principio crió Dios", "nada"]
    refs = ["Y dijo Dios: Sea la luz: y fué la luz.", "EN el principio crió Dios.", "todo"]
    got = translation_scores(hyps, refs)
    assert got["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score, abs=1e-12)
    assert got["chrf"] == pytest.approx(sacrebleu.corpus_chrf(hyps, [refs]).score, abs=1e-12)
    assert 0 < got["bleu"] < 100 and 0 < got["chrf"] < 100
    with pytest.raises(ValueError, match="3 hypotheses and 2 references"):
        translation_scores(hyps, refs[:2])


def test_encdec_config_keys_are_checked():
    cfg = run_config.build({"model": {"arch": "encdec", "n_encoder_layers": 2}}, [])
    assert cfg.model["n_encoder_layers"] == 2
    with pytest.raises(ValueError, match="unknown config key 'model.n_layer'.*n_decoder_layers"):
        run_config.build({"model": {"arch": "encdec", "n_layer": 2}}, [])
    with pytest.raises(ValueError, match="train.label_smoothing"):
        run_config.check_train(run_config.build({}, [("train.label_smoothing", 1.5)]))


# --------------------------------------------------------------------------------------------
# training through the CLI
# --------------------------------------------------------------------------------------------
def test_pairs_train_loss_falls_and_scores_match_sacrebleu(tmp_path, capsys):
    data = reversal_pairs(tmp_path / "pairs.tsv")
    s = pretrain(tmp_path, data, "run", "--train.max_iters", "40", "--train.eval_interval", "20")
    printed = capsys.readouterr().out
    assert "test BLEU" in printed and "val BLEU" in printed
    train = [r["loss"] for r in rows(tmp_path / "run", "train")]
    assert len(train) == 40 and sum(train[-5:]) / 5 < 0.7 * sum(train[:5]) / 5
    val = rows(tmp_path / "run", "val")
    assert [r["step"] for r in val] == [20, 40] and val[1]["loss"] < val[0]["loss"]
    assert s["objective"] == "seq2seq" and s["iters"] == 40 and s["padding_fraction"] < 0.5
    # the summary's test scores are sacrebleu's on the decoded test sentences
    model = attnkit.load(tmp_path / "run")
    tok = model.meta.tokenizer
    from attnkit.text.parallel import load_pairs

    test = load_pairs(str(data)).splits["test"][:8]
    hyps = translate(model, tok, [a for a, _ in test], max_new_tokens=39, max_source_len=40)
    refs = [b for _, b in test]
    assert s["test_sentences"] == len(test)
    assert s["test_bleu"] == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score, abs=1e-9)
    assert s["test_chrf"] == pytest.approx(sacrebleu.corpus_chrf(hyps, [refs]).score, abs=1e-9)


def test_resume_is_exact(tmp_path):
    data = reversal_pairs(tmp_path / "pairs.tsv")
    common = ["--train.lr_decay_iters", "16", "--train.eval_interval", "8"]
    common += ["--model.dropout", "0.1", "--train.eval_sentences", "2"]
    pretrain(tmp_path, data, "whole", "--train.max_iters", "16", *common)
    pretrain(tmp_path, data, "parts", "--train.max_iters", "8", *common)
    out = tmp_path / "parts"
    args = ["pretrain", "--config", str(tmp_path / "base.toml"), "--data", str(data)]
    args += ["--out", str(out), "--resume", *TINY, "--train.max_iters", "16", *common]
    assert cli.main(args) == 0
    whole = [(r["step"], r["loss"]) for r in rows(tmp_path / "whole", "train")]
    parts = [(r["step"], r["loss"]) for r in rows(out, "train")]
    assert [s for s, _ in parts] == list(range(1, 17))
    assert parts == whole  # the same losses, step for step
    a = json.loads((tmp_path / "whole" / "summary.json").read_text())
    b = json.loads((out / "summary.json").read_text())
    assert b["resumed_from"] == 8 and a["val_loss"] == b["val_loss"]


def test_summaries_train_and_decode_through_the_same_path(tmp_path):
    r = random.Random(2)
    path = tmp_path / "docs.jsonl"
    with open(path, "w") as f:
        for _ in range(120):
            doc = " ".join(r.choice(WORDS) for _ in range(r.randint(12, 25)))
            f.write(json.dumps({"source": doc, "target": " ".join(doc.split()[:3])}) + "\n")
    extra = ["--train.max_iters", "6", "--train.eval_interval", "6", "--train.eval_sentences", "3"]
    s = pretrain(tmp_path, path, "sum", *extra)
    assert s["objective"] == "seq2seq" and "val_chrf" in s and "test_chrf" in s
    model = attnkit.load(tmp_path / "sum")
    out = translate(
        model, model.meta.tokenizer, ["alpha beta gamma " * 5, "kappa"], max_new_tokens=6
    )
    assert len(out) == 2 and all(isinstance(o, str) for o in out)


def test_span_corruption_trains_on_plain_text(tmp_path):
    r = random.Random(4)
    text = "\n".join(" ".join(r.choice(WORDS) for _ in range(12)) for _ in range(600))
    path = tmp_path / "plain.txt"
    path.write_text(text + "\n")
    extra = ["--train.max_iters", "12", "--train.eval_interval", "12", "--train.block_size", "32"]
    s = pretrain(tmp_path, path, "t5", *extra, "--train.eval_iters", "1")
    assert s["objective"] == "span corruption" and "val_bleu" not in s
    train = [r["loss"] for r in rows(tmp_path / "t5", "train")]
    assert sum(train[-3:]) / 3 < sum(train[:3]) / 3
    model = attnkit.load(tmp_path / "t5")
    assert model.meta.tokenizer.token_to_id("<extra_id_0>") == 2


def test_shipped_configs_build():
    for name in ("translate-bible-en-es", "t5-shakespeare-denoise"):
        cfg = run_config.build(run_config.read_file(run_config.find_config(name)), [])
        run_config.check_train(cfg)
        assert cfg.model["arch"] == "encdec"


def test_the_shipped_t5_config_exports_to_hf_t5_with_equal_logits(tmp_path):
    """t5-shakespeare-denoise has T5's layout, one dropout rate included, so the model it
    trains leaves for transformers' T5ForConditionalGeneration with the same logits."""
    import transformers

    from attnkit.checkpoints.hf.convert import export_hf
    from attnkit.models import build_model, config_from_dict

    cfg = run_config.build(
        run_config.read_file(run_config.find_config("t5-shakespeare-denoise")), []
    )
    fields = {**cfg.model, "vocab_size": 300, "pad_token_id": 0, "eos_token_id": 1}
    fields.setdefault("decoder_start_token_id", 0)
    torch.manual_seed(0)
    model = build_model(config_from_dict(fields)).eval()
    export_hf(model, tmp_path / "hf")
    hf = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path / "hf").eval()
    src = torch.randint(3, 300, (2, 11))
    mask = torch.ones_like(src)
    mask[1, 7:] = 0
    dec = torch.randint(3, 300, (2, 6))
    with torch.no_grad():
        ours = model(input_ids=src, attention_mask=mask, decoder_input_ids=dec).logits
        theirs = hf(input_ids=src, attention_mask=mask, decoder_input_ids=dec).logits
    assert (ours - theirs).abs().max() <= 1e-5


@pytest.mark.slow
def test_compiled_training_follows_the_eager_losses(tmp_path):
    """train.compile on length-bucketed batches (a new (B, S, T) almost every step): the same
    losses as the eager run, step for step, up to float reordering."""
    data = reversal_pairs(tmp_path / "pairs.tsv")
    common = ["--train.max_iters", "6", "--train.eval_interval", "6"]
    common += ["--train.eval_sentences", "2"]
    pretrain(tmp_path, data, "eager", *common)
    pretrain(tmp_path, data, "compiled", *common, "--train.compile", "true")
    eager = [(r["step"], r["loss"]) for r in rows(tmp_path / "eager", "train")]
    compiled = [(r["step"], r["loss"]) for r in rows(tmp_path / "compiled", "train")]
    assert [s for s, _ in compiled] == [s for s, _ in eager] == list(range(1, 7))
    for (_, a), (_, b) in zip(eager, compiled):
        assert b == pytest.approx(a, rel=1e-4, abs=1e-5)
