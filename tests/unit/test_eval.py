"""`attnkit eval` and attnkit.evaluation: perplexity against float64 references (an attnkit
GPT, and HF transformers' GPT-2 for a Hugging Face directory), classifier scores against
per-text forwards and formulas written here, STS Spearman against scipy."""

import json
import math

import numpy as np
import pytest
import torch
from test_checkpoints import word_tokenizer

import attnkit
from attnkit.cli import main
from attnkit.evaluation import (
    evaluate_classifier,
    evaluate_sts,
    perplexity,
    rank_average,
    read_pairs,
    spearman,
    window_spans,
)
from attnkit.models import build_model, get_preset
from attnkit.text.corpora import split_text
from attnkit.text.tokenizers import encode, train_char

TEXT = (
    "To be, or not to be, that is the question:\n"
    "Whether 'tis nobler in the mind to suffer\n"
    "The slings and arrows of outrageous fortune,\n"
    "Or to take arms against a sea of troubles\n"
    "And by opposing end them. To die: to sleep;\n"
)


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("attnkit: error: "), err
    return err[0]


def status(argv) -> int:
    """The exit status of the command line (a usage error exits through SystemExit)."""
    try:
        return main(argv)
    except SystemExit as e:
        return int(e.code)


def run_json(capsys, argv) -> dict:
    capsys.readouterr()
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


@pytest.fixture()
def char_gpt():
    tok = train_char(TEXT)
    torch.manual_seed(0)
    cfg = get_preset("tiny", vocab_size=tok.get_vocab_size(), max_seq_len=32)
    model = build_model(cfg.replace(initializer_range=0.3)).eval()
    model.meta = model.meta.replace(tokenizer=tok)
    return model


def reference_nll(logits_of, ids: list[int], block: int, stride: int) -> float:
    """Mean NLL in float64, one target at a time: target j is predicted from the tokens of
    its window before it, the window being the first whose end reaches j."""
    last = len(ids) - 1
    total = 0.0
    for j in range(1, last + 1):
        k = max(0, math.ceil((j - block) / stride))
        end = min(block + k * stride, last)
        start = max(0, end - block)
        logits = logits_of(ids[start:j])  # (V,) float64, after the last context token
        total -= float(torch.log_softmax(logits, -1)[ids[j]])
    return total / last


def test_window_spans_by_hand():
    assert window_spans(10, 4) == [(0, 4, 4), (4, 8, 4), (5, 9, 1)]
    assert window_spans(10, 4, 2) == [(0, 4, 4), (2, 6, 2), (4, 8, 2), (5, 9, 1)]
    assert window_spans(3, 8) == [(0, 2, 2)]
    for n, t, s in [(100, 16, 16), (100, 16, 5), (17, 16, 1), (2, 1, 1)]:
        spans = window_spans(n, t, s)
        assert sum(sc for _, _, sc in spans) == n - 1
        assert all(e - st <= t and sc <= e - st for st, e, sc in spans)
    with pytest.raises(ValueError, match="stride must be an integer in 1..block_size=4"):
        window_spans(10, 4, 5)
    with pytest.raises(ValueError, match="n_tokens"):
        window_spans(1, 4)


@pytest.mark.parametrize("block,stride", [(16, None), (16, 5)])
def test_perplexity_matches_a_float64_reference(char_gpt, block, stride):
    ids = encode(char_gpt.meta.tokenizer, TEXT)[:44]
    got = perplexity(char_gpt, ids, block, stride, batch_size=3)
    m64 = build_model(char_gpt.config).double().eval()
    m64.load_state_dict({k: v.double() for k, v in char_gpt.state_dict().items()})
    with torch.no_grad():
        ref = reference_nll(
            lambda ctx: m64(torch.tensor([ctx])).logits[0, -1], ids, block, stride or block
        )
    assert got["tokens"] == len(ids) - 1
    assert got["loss"] == pytest.approx(ref, rel=1e-6)
    assert got["perplexity"] == pytest.approx(math.exp(ref), rel=1e-6)
    assert ref > 0.5  # a random model is far from certain: the number means something


def test_cli_perplexity_of_a_run_uses_its_val_split(char_gpt, tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT * 3)
    run = tmp_path / "run"
    attnkit.save(char_gpt, run, tokenizer=char_gpt.meta.tokenizer)
    (run / "run_config.json").write_text(
        json.dumps(
            {
                "data": {"corpus": str(corpus), "val_fraction": 0.3},
                "train": {"block_size": 12},
                "model": {},
            }
        )
    )
    got = run_json(capsys, ["eval", "perplexity", "--model", str(run)])
    val = split_text(TEXT * 3, 0.3)[1]
    ids = encode(char_gpt.meta.tokenizer, val)
    ref = perplexity(char_gpt, ids, 12)
    assert got["split"] == "val" and got["block_size"] == 12 and got["tokens"] == len(ids) - 1
    assert got["loss"] == pytest.approx(ref["loss"], rel=1e-9)
    out = tmp_path / "ppl.json"
    args = ["eval", "perplexity", "--model", str(run), "--data", str(corpus), "--stride", "4"]
    assert main([*args, "--out", str(out)]) == 0
    whole = json.loads(out.read_text())
    assert whole["split"] == "all" and whole["stride"] == 4
    assert whole["tokens"] == len(encode(char_gpt.meta.tokenizer, TEXT * 3)) - 1


def test_cli_perplexity_of_an_hf_gpt2_directory_matches_transformers(tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    tok = train_char(TEXT)
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(
        vocab_size=tok.get_vocab_size(),
        n_embd=32,
        n_layer=2,
        n_head=4,
        n_positions=32,
        initializer_range=0.3,
    )
    hf = transformers.GPT2LMHeadModel(cfg).eval()
    hf.save_pretrained(tmp_path / "hf")
    tok.save(str(tmp_path / "hf" / "tokenizer.json"))
    data = tmp_path / "text.txt"
    data.write_text(TEXT[:90])  # longer than the model's 32 positions
    got = run_json(
        capsys,
        ["eval", "perplexity", "--model", str(tmp_path / "hf"), "--data", str(data)]
        + ["--block-size", "20", "--stride", "7"],
    )
    ids = encode(tok, TEXT[:90])
    hf64 = hf.double()
    with torch.no_grad():
        ref = reference_nll(lambda ctx: hf64(torch.tensor([ctx])).logits[0, -1], ids, 20, 7)
    assert got["tokens"] == len(ids) - 1
    assert got["loss"] == pytest.approx(ref, rel=1e-6)
    assert got["perplexity"] == pytest.approx(math.exp(ref), rel=1e-6)


def test_cli_perplexity_errors(char_gpt, tmp_path, capsys):
    run = tmp_path / "run"
    attnkit.save(char_gpt, run, tokenizer=char_gpt.meta.tokenizer)
    assert status(["eval", "perplexity", "--model", str(run)]) == 2
    assert "no run_config.json naming its corpus; give --data" in error_line(capsys)
    data = tmp_path / "t.txt"
    data.write_text(TEXT)
    base = ["eval", "perplexity", "--model", str(run), "--data", str(data)]
    assert status([*base, "--block-size", "8", "--stride", "9"]) == 2
    assert "--stride 9 exceeds the block size 8" in error_line(capsys)
    assert status([*base, "--block-size", "64"]) == 2
    assert "block_size=64 exceeds the model's max_seq_len=32" in error_line(capsys)
    assert status([*base[:-1], str(tmp_path / "missing.txt")]) == 2
    assert "missing.txt" in error_line(capsys)


# --------------------------------------------------------------------------------------------
# classification
# --------------------------------------------------------------------------------------------
@pytest.fixture()
def classifier_dir(tmp_path):
    from attnkit.tasks.classification import classifier_from

    torch.manual_seed(3)
    cfg = get_preset("tiny-bert", vocab_size=80, d_model=32, n_heads=4, pooling="mean")
    base = build_model(cfg.replace(initializer_range=0.5)).eval()
    base.meta = base.meta.replace(tokenizer=word_tokenizer())
    model = classifier_from(base, ["comedy", "history", "tragedy"]).eval()
    with torch.no_grad():  # a head that does not predict one class for every text
        model.classifier.proj.weight.normal_(0, 3.0)
        ids = [torch.tensor([word_tokenizer().encode(t).ids]) for t in TEXTS]
        logits = torch.cat([model(x).logits for x in ids])  # (N, 3)
        model.classifier.proj.bias.sub_(logits.mean(0))
    attnkit.save(model, tmp_path / "clf", tokenizer=word_tokenizer())
    return tmp_path / "clf"


TEXTS = [
    "he swung the bat",
    "a bat flew out of the cave",
    "the ball",
    "out of the cave he flew",
    "the bat",
    "he swung",
    "of the ball",
    "cave",
]
GOLD = ["comedy", "history", "tragedy", "tragedy", "comedy", "history", "comedy", "tragedy"]


def test_classification_scores_match_per_text_forwards(classifier_dir, tmp_path, capsys):
    data = tmp_path / "test.csv"
    data.write_text("text,label\n" + "".join(f"{t},{y}\n" for t, y in zip(TEXTS, GOLD)))
    got = run_json(
        capsys,
        ["eval", "classification", "--model", str(classifier_dir)]
        + ["--file", str(data), "--batch-size", "3"],
    )
    model = attnkit.load(classifier_dir)
    tok = model.meta.tokenizer
    labels = ["comedy", "history", "tragedy"]
    with torch.no_grad():
        pred = [int(model(torch.tensor([tok.encode(t).ids])).logits[0].argmax()) for t in TEXTS]
    true = [labels.index(y) for y in GOLD]
    cm = np.zeros((3, 3), dtype=int)
    for t, p in zip(true, pred):
        cm[t, p] += 1
    f1 = [
        2 * cm[k, k] / (cm[k].sum() + cm[:, k].sum()) if cm[k].sum() + cm[:, k].sum() else 0.0
        for k in range(3)
    ]
    assert len(set(pred)) > 1  # the random head does not predict one class for all
    assert got["labels"] == labels and got["examples"] == 8
    assert got["confusion"] == cm.tolist()
    assert got["accuracy"] == pytest.approx(np.mean(np.array(pred) == np.array(true)))
    assert got["macro_f1"] == pytest.approx(np.mean(f1))


def test_classification_unknown_label_is_an_error(classifier_dir, tmp_path, capsys):
    data = tmp_path / "test.jsonl"
    data.write_text(json.dumps({"text": "the bat", "label": "romance"}) + "\n")
    assert (
        status(["eval", "classification", "--model", str(classifier_dir), "--file", str(data)]) == 2
    )
    line = error_line(capsys)
    assert "['romance'] are not among the model's labels ['comedy', 'history', 'tragedy']" in line
    with pytest.raises(ValueError, match="romance"):
        evaluate_classifier(classifier_dir, data)


# --------------------------------------------------------------------------------------------
# STS
# --------------------------------------------------------------------------------------------
def test_spearman_and_ranks_match_scipy():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    for n in (2, 7, 50):
        x = rng.integers(0, 5, n).astype(float)  # many ties
        y = x + rng.normal(0, 2, n)
        np.testing.assert_array_equal(rank_average(x), stats.rankdata(x))
        assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))
    with pytest.raises(ValueError, match="same length"):
        spearman([1, 2], [1, 2, 3])


@pytest.fixture()
def bert_dir(tmp_path):
    torch.manual_seed(1)
    cfg = get_preset("tiny-bert", vocab_size=80, d_model=32, n_heads=4, pooling="mean")
    out = tmp_path / "enc"
    attnkit.save(
        build_model(cfg.replace(initializer_range=0.5)).eval(), out, tokenizer=word_tokenizer()
    )
    return out


PAIRS = [
    ("he swung the bat", "he swung the ball", 4.0),
    ("a bat flew out of the cave", "the bat flew out", 3.5),
    ("the cave", "he swung", 0.5),
    ("the ball", "the ball", 5.0),
    ("out of the cave", "the bat", 1.0),
    ("he flew", "the cave", 1.0),
]


def test_sts_spearman_from_each_file_format(bert_dir, tmp_path, capsys):
    stats = pytest.importorskip("scipy.stats")
    enc = attnkit.Encoder.load(bert_dir)
    cos = [float(enc.encode(a) @ enc.encode(b)) for a, b, _ in PAIRS]
    gold = [s for *_, s in PAIRS]
    ref = stats.spearmanr(cos, gold).statistic
    files = {
        "plain.tsv": "".join(f"{a}\t{b}\t{s}\n" for a, b, s in PAIRS),
        "stsb.csv": "".join(
            f"main-captions\tMSRvid\t2012test\t{i:04d}\t{s}\t{a}\t{b}\n"
            for i, (a, b, s) in enumerate(PAIRS)
        ),
        "named.csv": "score,sentence1,sentence2\n" + "".join(f"{s},{a},{b}\n" for a, b, s in PAIRS),
        "pairs.jsonl": "".join(
            json.dumps({"sentence1": a, "sentence2": b, "score": s}) + "\n" for a, b, s in PAIRS
        ),
    }
    for name, content in files.items():
        path = tmp_path / name
        path.write_text(content)
        assert read_pairs(path) == ([a for a, _, _ in PAIRS], [b for _, b, _ in PAIRS], gold), name
        got = run_json(capsys, ["eval", "sts", "--model", str(bert_dir), "--file", str(path)])
        assert got["pairs"] == 6
        assert got["spearman"] == pytest.approx(ref, abs=1e-9), name
        assert got["pearson"] == pytest.approx(stats.pearsonr(cos, gold).statistic, abs=1e-5)
    assert evaluate_sts(enc, tuple(zip(*PAIRS)))["spearman"] == pytest.approx(ref, abs=1e-9)


def test_sts_bad_files(bert_dir, tmp_path, capsys):
    bad = tmp_path / "bad.tsv"
    bad.write_text("the cave\the swung\tvery\n the ball\tthe bat\t2\n")
    assert status(["eval", "sts", "--model", str(bert_dir), "--file", str(bad)]) == 2
    assert "row 1: score 'very' is not a number" in error_line(capsys)
    assert (
        status(["eval", "sts", "--model", str(bert_dir), "--file", str(tmp_path / "no.tsv")]) == 2
    )
    assert "no.tsv" in error_line(capsys)
    short = tmp_path / "short.tsv"
    short.write_text("only\tone\n")
    assert status(["eval", "sts", "--model", str(bert_dir), "--file", str(short)]) == 2
    assert "columns" in error_line(capsys)
