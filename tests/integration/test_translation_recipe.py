"""``benchmarks/translation_recipe.py --quick``: the copy baseline, the model at a tenth of the
budget and at the whole budget, in one run; a second run reuses both."""

from __future__ import annotations

import importlib.util
import json
import random
from pathlib import Path

import pytest
import torch

sacrebleu = pytest.importorskip("sacrebleu")

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "translation_recipe.py"


def test_quick_recipe_prints_three_rows_and_resumes(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ATTNKIT_CACHE", str(tmp_path / "cache"))
    r = random.Random(0)
    words = "alpha beta gamma delta epsilon zeta eta theta".split()
    pairs = tmp_path / "pairs.tsv"
    with open(pairs, "w") as f:
        for _ in range(300):
            w = [r.choice(words) for _ in range(r.randint(2, 6))]
            f.write(" ".join(w) + "\t" + " ".join(w).capitalize() + "\n")
    spec = importlib.util.spec_from_file_location("translation_recipe", SCRIPT)
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    threads = torch.get_num_threads()
    args = ["--quick", "--data", str(pairs), "--out", str(tmp_path / "out"), "--threads", "1"]
    try:
        assert recipe.main(args) == 0
        first = capsys.readouterr().out
        assert recipe.main(args) == 0
        second = capsys.readouterr().out
    finally:
        torch.set_num_threads(threads)
    for line in ("copy the source", "model, 1/10 budget", "model, full budget", "copy chrF ="):
        assert line in first
    assert second.count("reused") == 2
    result = json.loads((tmp_path / "out" / "recipe.json").read_text())
    assert result["tenth"]["train"]["iters"] == 2 and result["full"]["train"]["iters"] == 20
    # the copy baseline is sacrebleu's chrF of the sources against the references
    from attnkit.text.parallel import load_pairs

    test = load_pairs(str(pairs)).splits["test"][:16]
    want = sacrebleu.corpus_chrf([s for s, _ in test], [[t for _, t in test]]).score
    assert result["copy"]["chrf"] == pytest.approx(want, abs=1e-9)
    assert result["chrf_over_copy"] == pytest.approx(result["full"]["test"]["chrf"] - want)
