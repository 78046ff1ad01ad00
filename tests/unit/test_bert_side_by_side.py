"""The pure parts of ``benchmarks/bert_side_by_side.py``: scores, baselines, schedules and the
table, against hand computations; the HF config against the attnkit model it mirrors."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bert_side_by_side.py"
spec = importlib.util.spec_from_file_location("bert_side_by_side", SCRIPT)
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def test_unigram_baseline_matches_a_hand_computation():
    labels = [torch.tensor([[5, -100, 5], [7, -100, -100]]), torch.tensor([[9, 5, -100]])]
    train = torch.tensor([0, 0, 0, 0, 0, 6, 0, 2, 0, 1])  # 9 training tokens, vocab 10
    got = bench.unigram_baseline(labels, 10, train)
    # masked labels: 5 three times, 7 once, 9 once
    entropy = -(0.6 * math.log(0.6) + 2 * 0.2 * math.log(0.2))
    assert got["entropy"] == pytest.approx(entropy, abs=1e-12)  # 0.9503
    assert got["top1_accuracy"] == pytest.approx(0.6)
    assert got["positions"] == 5
    # add-one smoothing: q(5) = 7/19, q(7) = 3/19, q(9) = 2/19
    ce = -(3 * math.log(7 / 19) + math.log(3 / 19) + math.log(2 / 19)) / 5
    assert got["train_unigram_loss"] == pytest.approx(ce, abs=1e-12)
    assert "train_unigram_loss" not in bench.unigram_baseline(labels, 10)


def test_entropy_of_counts():
    assert bench.entropy(torch.tensor([0, 2, 2, 4])) == pytest.approx(
        -(0.25 * math.log(0.25) * 2 + 0.5 * math.log(0.5)), abs=1e-12
    )  # 1.0397
    assert bench.entropy(torch.tensor([0, 7, 0])) == 0.0
    with pytest.raises(ValueError, match="non-negative with a positive sum"):
        bench.entropy(torch.zeros(3))
    with pytest.raises(ValueError, match="non-negative"):
        bench.entropy(torch.tensor([3, -1]))


def test_unigram_baseline_refuses_bad_input():
    with pytest.raises(ValueError, match="no masked position"):
        bench.unigram_baseline([torch.full((2, 3), -100)], 10)
    with pytest.raises(ValueError, match="outside"):
        bench.unigram_baseline([torch.tensor([[10]])], 10)
    with pytest.raises(ValueError, match="train_counts must be"):
        bench.unigram_baseline([torch.tensor([[1]])], 10, torch.ones(9))


def test_masked_sums_counts_only_the_masked_positions():
    logits = torch.tensor([[[2.0, 0.0, 0.0], [0.0, 5.0, 0.0], [1.0, 1.0, 3.0]]])  # (1, 3, 3)
    labels = torch.tensor([[1, -100, 2]])
    loss, correct, count = bench.masked_sums(logits, labels)

    def nll(row, k):
        return math.log(sum(math.exp(v) for v in row)) - row[k]

    want = nll([2.0, 0.0, 0.0], 1) + nll([1.0, 1.0, 3.0], 2)
    assert loss == pytest.approx(want, abs=1e-12)
    assert (correct, count) == (1, 2)  # position 0 predicts id 0, position 2 predicts id 2
    with pytest.raises(ValueError, match=r"logits must be \(B, T, V\)"):
        bench.masked_sums(logits[0], labels)


def test_schedules():
    kw = dict(lr=1e-3, min_lr=1e-4, warmup=10, decay_iters=110)
    assert bench.config_lr(0, **kw) == pytest.approx(1e-3 / 11)
    assert bench.config_lr(10, **kw) == pytest.approx(1e-3)
    assert bench.config_lr(60, **kw) == pytest.approx(5.5e-4)  # half way: the mean
    assert bench.config_lr(110, **kw) == pytest.approx(1e-4)
    assert bench.config_lr(500, **kw) == pytest.approx(1e-4)
    assert bench.bert_paper_lr(0, lr=1e-4, warmup=10, total=110) == pytest.approx(1e-5)
    assert bench.bert_paper_lr(10, lr=1e-4, warmup=10, total=110) == pytest.approx(1e-4)
    assert bench.bert_paper_lr(60, lr=1e-4, warmup=10, total=110) == pytest.approx(5e-5)
    assert bench.bert_paper_lr(200, lr=1e-4, warmup=10, total=110) == 0.0


def test_side_by_side_matches_rows_by_step():
    ours = [{"step": 250, "train_seconds": 40.0, "loss": 6.1, "accuracy": 0.12}]
    theirs = [
        {"step": 250, "train_seconds": 45.0, "loss": 6.2, "accuracy": 0.11},
        {"step": 300, "train_seconds": 52.5, "loss": 6.0, "accuracy": 0.13},
    ]
    lines = bench.side_by_side(ours, theirs)
    assert len(lines) == 4  # header, rule, steps 250 and 300
    assert lines[2].split() == [
        "250",
        "|",
        "40.0",
        "6.1000",
        "0.120",
        "|",
        "45.0",
        "6.2000",
        "0.110",
    ]
    assert lines[3].split() == ["300", "|", "|", "52.5", "6.0000", "0.130"]


def test_hf_config_has_the_shape_and_parameter_count_of_the_attnkit_bert():
    transformers = pytest.importorskip("transformers")
    from attnkit.models import ModelConfig, build_model

    cfg = ModelConfig(
        arch="bert", head="mlm", vocab_size=97, n_layer=2, n_heads=2, d_model=16, d_ff=40,
        max_seq_len=24, norm_eps=1e-12, norm_placement="post", mlp="gelu", embed_norm=True,
        final_norm=False, type_vocab_size=2, pad_token_id=0,
    )  # fmt: skip
    hf = transformers.BertForMaskedLM(bench.hf_bert_config(cfg))
    ours = build_model(cfg)
    assert sum(p.numel() for p in hf.parameters()) == ours.num_parameters()
    assert hf.config.layer_norm_eps == 1e-12 and hf.config.max_position_embeddings == 24
    with pytest.raises(ValueError, match="post-LayerNorm"):
        bench.hf_bert_config(cfg.replace(norm_placement="pre"))


def test_hf_roformer_has_the_parameter_count_of_the_attnkit_rope_bert():
    transformers = pytest.importorskip("transformers")
    from attnkit.models import ModelConfig, build_model

    cfg = ModelConfig(
        arch="bert", head="mlm", vocab_size=97, n_layer=2, n_heads=2, d_model=16, d_ff=40,
        max_seq_len=24, norm_eps=1e-12, norm_placement="post", mlp="gelu", embed_norm=True,
        final_norm=False, type_vocab_size=2, pad_token_id=0, positional="rope",
    )  # fmt: skip
    hf = bench.hf_model(cfg, "roformer")
    assert isinstance(hf, transformers.RoFormerForMaskedLM)
    trained = sum(p.numel() for p in hf.parameters() if p.requires_grad)
    assert trained == build_model(cfg).num_parameters()
    assert isinstance(bench.hf_model(cfg, "bert"), transformers.BertForMaskedLM)
    with pytest.raises(ValueError, match="base 10000"):
        bench.hf_model(cfg.replace(rope_base=500.0), "roformer")
    with pytest.raises(ValueError, match="one of"):
        bench.hf_model(cfg, "xlnet")
