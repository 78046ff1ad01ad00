"""``attnkit bench seq2seq --quick`` through the real command line on a small file of pairs:
the JSON it writes holds numbers consistent with each other and with sacrebleu computed here,
and attnkit's beam search equals HF's generate on the same weights."""

import json
import random
import statistics
import subprocess
import sys

import pytest

pytest.importorskip("transformers")
sacrebleu = pytest.importorskip("sacrebleu")
pytest.importorskip("ctranslate2")

from attnkit.text.parallel import load_pairs  # noqa: E402 (after the skips)

WORDS = "the a king man woman house city god land water son day night light word people".split()


def pairs_file(path):
    """600 pairs: a random word sequence and its words spelled backwards (a toy language)."""
    r = random.Random(0)
    lines = []
    for _ in range(600):
        src = [r.choice(WORDS) for _ in range(r.randint(3, 12))]
        lines.append(" ".join(src) + "\t" + " ".join(w[::-1] + "o" for w in src))
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.slow  # about 20 s of CPU: two trainings, three decoders, a CTranslate2 conversion
def test_quick_run_writes_consistent_numbers(tmp_path):
    data = pairs_file(tmp_path / "pairs.tsv")
    out = tmp_path / "out"
    args = ["--quick", "--data", str(data), "--budget-s", "1", "--rounds", "2"]
    args += ["--decode-rounds", "3", "--sentences", "6", "--threads", "1", "--out", str(out)]
    proc = subprocess.run(
        [sys.executable, "-m", "attnkit", "bench", "seq2seq", *args],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "outputs identical" in proc.stdout
    r = json.loads((out / "seq2seq.json").read_text())

    # training: both sides ran in 2 alternating rounds over the same batches
    assert r["rounds"] == 2 and r["quick"] is True
    for side in ("attnkit", "HF"):
        t = r["train"][side]
        assert t["steps"] > 2 and len(t["round_tokens_per_s"]) == 2
        assert t["tokens_per_s_p10"] <= t["tokens_per_s"] <= t["tokens_per_s_p90"]
        assert 0 < t["train_seconds"] < 1 + 10  # the budget, plus the step that crossed it
        assert t["last_loss"] < t["first_loss"]  # it learned something
        assert len(t["losses"]) == t["steps"]
        assert t["losses"][0] == pytest.approx(t["first_loss"], abs=1e-4)
    # the same weights, batches and optimizer: equal losses at the first steps
    ours, theirs = r["train"]["attnkit"]["losses"][:2], r["train"]["HF"]["losses"][:2]
    assert ours == pytest.approx(theirs, abs=1e-3)
    ratio = r["train"]["attnkit"]["tokens_per_s"] / r["train"]["HF"]["tokens_per_s"]
    assert r["train_ratio"] == pytest.approx(ratio)
    assert r["train_met"] == (ratio >= r["train_target"] == 1.3)
    assert r["parameters"] == r["hf_parameters"]  # the same model on both sides

    # quality: copying the source, recomputed here on the same held-out pairs
    n = r["held_out_sentences"]
    assert n == 6
    held = load_pairs(str(data)).splits["test"][:n]
    copy = sacrebleu.corpus_chrf([s for s, _ in held], [[t for _, t in held]]).score
    assert r["quality"]["copy source"]["chrf"] == pytest.approx(copy)
    for side in ("attnkit", "HF"):
        assert 0 <= r["quality"][side]["chrf"] <= 100 and 0 <= r["quality"][side]["bleu"] <= 100

    # decoding: identical outputs, counts and rates that agree with each other
    assert r["outputs_identical"] is True and r["outputs_differing"] == 0
    for name in ("attnkit", "HF", "CTranslate2"):
        d = r["decode"][name]
        assert len(d["round_sentences_per_s"]) == 3
        assert d["sentences_per_s"] == pytest.approx(statistics.median(d["round_sentences_per_s"]))
    assert 0 <= r["decode"]["CTranslate2"]["agreement_with_attnkit"] <= 1
    ratio = r["decode"]["attnkit"]["sentences_per_s"] / r["decode"]["HF"]["sentences_per_s"]
    assert r["decode_ratio"] == pytest.approx(ratio)
    assert r["decode_settings"]["beams"] == 4
    assert len(r["load_before"]) == 3 and len(r["load_after"]) == 3


def test_bad_options_are_one_line_and_exit_2(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "attnkit", "bench", "seq2seq", "--data", str(tmp_path / "x.csv")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "is not a parallel corpus" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
