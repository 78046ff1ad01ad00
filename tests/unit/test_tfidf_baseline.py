"""The TF-IDF + logistic-regression baseline: its scores equal scikit-learn's pipeline and
metrics computed here; finetune reports it beside the majority baseline; without
scikit-learn it is left out with a warning naming the extra."""

from __future__ import annotations

import logging
import random
import sys

import pytest

from attnkit._util.optional import MissingDependency
from attnkit.tasks.classification import baseline

WORDS = {
    "sea": "wave salt ship tide shore sail storm fish",
    "war": "sword king battle crown siege arms march field",
    "love": "heart kiss sweet wed ring rose fair sigh",
}
COMMON = "the and of to a in that is my you".split()


def corpus(n: int, seed: int) -> tuple[list[str], list[int]]:
    """Texts of three topics, each mixing its own words with common and other topics' words
    (so the task is not trivially separable and the scores are not all 1)."""
    rng = random.Random(seed)
    topics = list(WORDS)
    texts, labels = [], []
    for i in range(n):
        y = i % 3
        own = WORDS[topics[y]].split()
        other = WORDS[topics[(y + rng.randint(1, 2)) % 3]].split()
        words = [rng.choice(COMMON) for _ in range(8)]
        words += [rng.choice(own) for _ in range(rng.randint(1, 3))]
        words += [rng.choice(other) for _ in range(rng.randint(0, 3))]
        rng.shuffle(words)
        texts.append(" ".join(words))
        labels.append(y)
    return texts, labels


def test_scores_equal_sklearn_computed_directly():
    sk_text = pytest.importorskip("sklearn.feature_extraction.text")
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

    labels = ["love", "sea", "war"]
    x_train, y_train = corpus(90, seed=1)
    x_eval, y_eval = corpus(60, seed=2)
    got = baseline.tfidf_baseline(x_train, y_train, x_eval, y_eval, labels)

    vec = sk_text.TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
    clf = LogisticRegression(C=1.0, class_weight="balanced", max_iter=2000)
    clf.fit(vec.fit_transform(x_train), y_train)
    pred = clf.predict(vec.transform(x_eval))
    want_f1 = f1_score(y_eval, pred, average="macro", labels=[0, 1, 2])
    assert 0.3 < want_f1 < 0.999  # a real task: neither chance nor perfect
    assert got["macro_f1"] == pytest.approx(want_f1, abs=1e-12)
    assert got["accuracy"] == pytest.approx(accuracy_score(y_eval, pred), abs=1e-12)
    assert got["confusion"] == confusion_matrix(y_eval, pred, labels=[0, 1, 2]).tolist()
    per_class = f1_score(y_eval, pred, average=None, labels=[0, 1, 2])
    for i, name in enumerate(labels):
        assert got["per_class"][name]["f1"] == pytest.approx(per_class[i], abs=1e-12)
    assert got["vocabulary"] == len(vec.vocabulary_)
    assert got["settings"]["ngram_range"] == [1, 2]


def test_a_class_never_trained_still_counts_in_macro_f1():
    sk_text = pytest.importorskip("sklearn.feature_extraction.text")
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score

    x_train = ["sea wave", "sea tide", "war sword", "war king"] * 3
    y_train = [0, 1, 0, 1] * 3  # noisy on purpose: not every eval text is right
    x_eval, y_eval = ["sea wave", "war king", "love heart", "sea king"], [0, 1, 2, 1]
    got = baseline.tfidf_baseline(x_train, y_train, x_eval, y_eval, ["sea", "war", "love"])
    vec = sk_text.TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
    clf = LogisticRegression(C=1.0, class_weight="balanced", max_iter=2000)
    pred = clf.fit(vec.fit_transform(x_train), y_train).predict(vec.transform(x_eval))
    want = f1_score(y_eval, pred, average="macro", labels=[0, 1, 2], zero_division=0)
    assert got["macro_f1"] == pytest.approx(want, abs=1e-12)
    assert got["per_class"]["love"]["f1"] == 0.0 and got["per_class"]["love"]["support"] == 1


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="3 training texts with 2 labels"):
        baseline.tfidf_baseline(["a", "b", "c"], [0, 1], ["a"], [0], ["x", "y"])
    with pytest.raises(ValueError, match="1 class"):
        baseline.tfidf_baseline(["a", "b"], [0, 0], ["a"], [0], ["x", "y"])


def test_without_sklearn_the_baseline_is_left_out_with_one_warning(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "sklearn", None)
    for name in list(sys.modules):
        if name.startswith("sklearn."):
            monkeypatch.delitem(sys.modules, name)
    x, y = corpus(12, seed=3)
    with pytest.raises(MissingDependency, match=r"pip install 'attnkit\[classic\]'"):
        baseline.tfidf_baseline(x, y, x, y, ["a", "b", "c"])
    with caplog.at_level(logging.WARNING, logger="attnkit"):
        assert baseline.tfidf_or_none(x, y, x, y, ["a", "b", "c"]) is None
    hints = [r for r in caplog.records if "attnkit[classic]" in r.getMessage()]
    assert len(hints) == 1 and hints[0].name.startswith("attnkit.")
