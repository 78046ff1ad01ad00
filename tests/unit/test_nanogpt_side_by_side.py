"""The pure parts of ``benchmarks/nanogpt_side_by_side.py``: nanoGPT's log parser on a real
log, the tokens/s estimator and the spread against hand computations, the parameter checks,
the evaluator's windows and loss, and the command line's refusals."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "nanogpt_side_by_side.py"


@pytest.fixture(scope="module")
def sbs():
    spec = importlib.util.spec_from_file_location("nanogpt_side_by_side", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


# the start of a real run of nanoGPT's train.py (karpathy/nanoGPT 3adf61e1) with the
# script's arguments and --max_iters=100, on 2 CPU threads
HEAD = """\
Overriding: max_iters = 100
Overriding: eval_interval = 100
Overriding: always_save_checkpoint = True
tokens per iteration will be: 768
found vocab_size = 65 (inside data/shakespeare_char/meta.pkl)
Initializing a new model from scratch
number of parameters: 0.80M
num decayed parameter tensors: 18, with 802,944 parameters
num non-decayed parameter tensors: 9, with 1,152 parameters
using fused AdamW: False
step 0: train loss 4.1676, val loss 4.1649
iter 0: loss 4.1828, time 575.92ms, mfu -100.00%
iter 1: loss 4.0333, time 54.39ms, mfu -100.00%
iter 2: loss 3.8647, time 56.45ms, mfu -100.00%
iter 3: loss 3.7869, time 50.55ms, mfu -100.00%
iter 4: loss 3.7005, time 52.10ms, mfu -100.00%
iter 5: loss 3.6651, time 50.49ms, mfu 0.03%
iter 6: loss 3.6096, time 57.52ms, mfu 0.02%
iter 7: loss 3.5614, time 50.86ms, mfu 0.02%
iter 8: loss 3.5352, time 53.74ms, mfu 0.02%
iter 9: loss 3.3557, time 52.20ms, mfu 0.02%
iter 10: loss 3.5868, time 51.58ms, mfu 0.02%
iter 11: loss 3.3730, time 50.49ms, mfu 0.02%
iter 12: loss 3.2853, time 56.28ms, mfu 0.02%
"""
# and its end: the evaluation at step 100 falls in iteration 100's logged time
TAIL = """\
iter 98: loss 2.6122, time 51.01ms, mfu 0.02%
iter 99: loss 2.5947, time 60.00ms, mfu 0.02%
step 100: train loss 2.5647, val loss 2.5837
saving checkpoint to out-shakespeare-char
iter 100: loss 2.6540, time 561.27ms, mfu 0.02%
"""


def test_the_parser_reads_a_real_nanogpt_log(sbs):
    log = sbs.parse_nanogpt_log(HEAD)
    assert log.iters == list(range(13))
    assert log.seconds[0] == pytest.approx(0.57592)
    assert log.seconds[12] == pytest.approx(0.05628)
    assert log.evals == [(0, 4.1676, 4.1649)]
    assert log.params_millions == 0.80
    assert sbs.nanogpt_busy(log.iters, 100) == [0]  # iteration 0 holds the first evaluation

    tail = sbs.parse_nanogpt_log(TAIL)
    assert tail.iters == [98, 99, 100] and tail.evals == [(100, 2.5647, 2.5837)]
    assert tail.params_millions is None
    assert sbs.nanogpt_busy(tail.iters, 100) == [2]


def test_the_parser_refuses_logs_it_cannot_time(sbs):
    every_tenth = (
        "iter 0: loss 4.1, time 500.00ms, mfu 1%\niter 10: loss 3.0, time 50.00ms, mfu 1%\n"
    )
    with pytest.raises(ValueError, match="not consecutive: run it with --log_interval=1"):
        sbs.parse_nanogpt_log(every_tenth)
    with pytest.raises(ValueError, match="no 'iter N"):
        sbs.parse_nanogpt_log("step 0: train loss 4.1, val loss 4.2\n")


def test_the_estimator_is_the_median_of_the_steady_steps(sbs):
    seconds = sbs.parse_nanogpt_log(HEAD).seconds
    # by hand: after the 10 warm-up steps 51.58, 50.49, 56.28 ms are left; the median 51.58
    assert sbs.steady_state(seconds) == {"median_s": pytest.approx(0.05158), "steps": 3}
    assert sbs.tokens_per_second(seconds) == pytest.approx(768 / 0.05158)
    # left out as well: index 11 (50.49 ms) -> 51.58 and 56.28, median 53.93
    assert sbs.tokens_per_second(seconds, 768, exclude=[11]) == pytest.approx(768 / 0.05393)
    # tokens per step of another recipe (12 x 128)
    assert sbs.tokens_per_second(seconds, 1536) == pytest.approx(1536 / 0.05158)
    with pytest.raises(ValueError, match="no steady-state step"):
        sbs.steady_state(seconds, skip=13)


def test_the_estimator_agrees_with_the_training_loop(sbs):
    from attnkit.training.speed import steady_tokens_per_second

    seconds = [20.0] + [0.04, 0.05, 0.03, 0.9, 0.045, 0.035] * 5
    busy = [4, 10, 16]
    ours = sbs.tokens_per_second(seconds, 768, exclude=busy)
    assert steady_tokens_per_second(seconds, 768, exclude=busy) == pytest.approx(ours)


def test_spread_is_max_minus_min_over_the_median(sbs):
    s = sbs.spread([10.0, 12.0, 11.0])
    assert (s["median"], s["min"], s["max"]) == (11.0, 10.0, 12.0)
    assert s["spread"] == pytest.approx(2.0 / 11.0)
    assert sbs.spread([3.0])["spread"] == 0.0
    with pytest.raises(ValueError):
        sbs.spread([])


def test_unequal_parameter_counts_are_refused(sbs):
    sbs.check_same_parameters(804_096, 804_096)
    with pytest.raises(
        ValueError, match="parameter counts differ: nanoGPT 804,096, attnkit 795,904"
    ):
        sbs.check_same_parameters(804_096, 795_904)
    # nanoGPT prints 0.80M: 804,096 less its 64 x 128 position embeddings is 795,904
    sbs.check_printed_count(0.80, 804_096, 64 * 128)
    with pytest.raises(ValueError, match="nanoGPT printed 0.70M"):
        sbs.check_printed_count(0.70, 804_096, 64 * 128)
    with pytest.raises(ValueError, match="printed no"):
        sbs.check_printed_count(None, 804_096, 64 * 128)


def test_tied_weights_are_counted_once(sbs):
    emb = torch.nn.Embedding(65, 8)
    head = torch.nn.Linear(8, 65, bias=False)
    head.weight = emb.weight
    assert sbs.distinct_parameters([emb.weight, head.weight]) == 65 * 8
    assert sbs.distinct_parameters([emb.weight, torch.zeros(3)]) == 65 * 8 + 3


def test_windows_and_their_loss(sbs):
    x, y = sbs.val_windows(list(range(10)), block=3)  # 9 targets: 3 windows, id 9 unused
    assert x.tolist() == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    assert y.tolist() == [[1, 2, 3], [4, 5, 6], [7, 8, 9]]
    with pytest.raises(ValueError, match="hold no window"):
        sbs.val_windows([1, 2], block=3)
    # uniform logits over 10 ids: log(10) nats per token, in batches or not
    uniform = lambda xb: torch.zeros(*xb.shape, 10)  # noqa: E731
    assert sbs.window_loss(uniform, x, y, batch=2) == pytest.approx(math.log(10))
    # a model sure of every next id: 0 nats, whatever the batch split
    sure = lambda xb: torch.nn.functional.one_hot(xb + 1, 10).float() * 100  # noqa: E731
    assert sbs.window_loss(sure, x, y, batch=2) == pytest.approx(0.0, abs=1e-6)


def test_the_command_line_refuses_bad_input_in_one_line(sbs, tmp_path, capsys):
    for argv, words in [
        (["--nanogpt", str(tmp_path), "--rounds", "0"], "--rounds: expected a whole number >= 1"),
        (["--nanogpt", str(tmp_path), "--max-iters", "x"], "--max-iters: expected a whole number"),
        (["--nanogpt", str(tmp_path), "--configs", "gpt-nope"], "--configs: unknown ['gpt-nope']"),
    ]:
        with pytest.raises(SystemExit) as exc:
            sbs.main(argv)
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and words in err, err
    # a directory that is no nanoGPT checkout: refused before anything runs
    assert sbs.main(["--nanogpt", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "not a nanoGPT checkout (no train.py" in err
    assert not (tmp_path / "out").exists()
