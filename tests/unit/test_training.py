"""attnkit.training: schedule, optimizer groups, config parsing, checkpoints, loss."""

from __future__ import annotations

import math

import pytest
import torch

from attnkit.models import ModelConfig, build_model
from attnkit.models.outputs import ModelOutput
from attnkit.training import config as run_config
from attnkit.training import optim
from attnkit.training.checkpointing import latest_checkpoint, load_checkpoint, save_checkpoint
from attnkit.training.objectives import loss_sum, loss_sums


def test_warmup_then_cosine_to_min_lr():
    kw = dict(lr=1e-3, min_lr=1e-4, warmup=10, decay_iters=110)
    assert optim.lr_at(0, **kw) == pytest.approx(1e-3 / 11)
    assert optim.lr_at(9, **kw) == pytest.approx(1e-3 * 10 / 11)
    assert optim.lr_at(10, **kw) == pytest.approx(1e-3)
    assert optim.lr_at(60, **kw) == pytest.approx((1e-3 + 1e-4) / 2)  # half way: cos = 0
    assert optim.lr_at(35, **kw) == pytest.approx(1e-4 + 0.5 * (1 + math.cos(math.pi / 4)) * 9e-4)
    assert optim.lr_at(110, **kw) == optim.lr_at(5000, **kw) == pytest.approx(1e-4)
    lrs = [optim.lr_at(s, **kw) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


@pytest.mark.parametrize("total, warmup", [(40, 4), (7, 0), (3, 3)])
def test_linear_decay_is_the_fine_tuning_schedule(total, warmup):
    """warmup, then a straight line to 0 at the last step: BERT fine-tuning's schedule."""
    lr = 5e-5

    def reference(step):
        if step < warmup:
            return lr * (step + 1) / (warmup + 1)
        return lr * max(0.0, (total - step) / max(1, total - warmup))

    for step in range(total + 2):
        got = optim.lr_at(step, lr=lr, min_lr=0.0, warmup=warmup, decay_iters=total, decay="linear")
        assert got == pytest.approx(reference(step), abs=1e-15), step
    with pytest.raises(ValueError, match=r"decay must be one of \['cosine', 'linear'\]"):
        optim.lr_at(5, lr=lr, min_lr=0.0, warmup=0, decay_iters=9, decay="step")


def test_clip_and_step_clips_the_gradient_norm():
    w = torch.nn.Parameter(torch.zeros(4))
    opt = torch.optim.SGD([w], lr=1.0)
    w.grad = torch.tensor([3.0, 4.0, 0.0, 0.0])  # norm 5
    optim.clip_and_step(opt, [w], grad_clip=1.0)
    torch.testing.assert_close(w.detach(), torch.tensor([-0.6, -0.8, 0.0, 0.0]))
    w.grad = torch.tensor([3.0, 4.0, 0.0, 0.0])
    optim.clip_and_step(opt, [w], grad_clip=0.0)  # 0: no clipping
    torch.testing.assert_close(w.detach(), torch.tensor([-3.6, -4.8, 0.0, 0.0]))


def test_weight_decay_groups_cover_each_parameter_once():
    model = build_model(
        ModelConfig(arch="gpt", vocab_size=50, n_layer=2, n_heads=2, d_model=16, max_seq_len=8)
    )
    decay, no_decay = optim.param_groups(model, 0.1)
    ids = [id(p) for p in decay["params"] + no_decay["params"]]
    assert len(ids) == len(set(ids)) == len({id(p) for p in model.parameters()})
    assert all(p.dim() >= 2 for p in decay["params"]) and all(
        p.dim() < 2 for p in no_decay["params"]
    )
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert any(p is model.embed.tok.weight for p in decay["params"])  # tied with the LM head
    opt = optim.make_optimizer(model, 1e-3, 0.1, (0.9, 0.99), torch.device("cpu"))
    assert isinstance(opt, torch.optim.AdamW)


def test_config_overrides_are_typed_and_unknown_keys_named():
    base = {"model": {"n_layer": 4}, "train": {"lr": 1e-3}}
    cfg = run_config.build(
        base,
        [
            run_config.parse_override("model.n_layer=2"),
            run_config.parse_override("train.lr=3"),
            run_config.parse_override("data.corpus=my.txt"),
            run_config.parse_override("train.compile=true"),
        ],
    )
    assert cfg.model == {"n_layer": 2}
    assert cfg.train.lr == 3.0 and isinstance(cfg.train.lr, float)
    assert cfg.data.corpus == "my.txt" and cfg.train.compile is True
    with pytest.raises(ValueError, match="unknown config key 'train.lrr'; valid train keys: .*lr"):
        run_config.build(base, [("train.lrr", 1)])
    with pytest.raises(ValueError, match="config key 'train.max_iters' must be int, got 1.5"):
        run_config.build(base, [("train.max_iters", 1.5)])
    with pytest.raises(ValueError, match="unknown config section 'optim'"):
        run_config.build({"optim": {}}, [])
    with pytest.raises(ValueError, match="'model.vocab_size' is set by the tokenizer"):
        run_config.build({"model": {"vocab_size": 10}}, [])


def test_loss_sums_match_cross_entropy_reference():
    torch.manual_seed(0)

    class Fixed(torch.nn.Module):
        def __init__(self, logits):
            super().__init__()
            self.logits = logits

        def forward(self, x):
            return ModelOutput(logits=self.logits)

    logits = torch.randn(2, 3, 5, dtype=torch.float64)
    y = torch.tensor([[1, -100, 4], [0, 2, -100]])
    loss, correct = loss_sums(Fixed(logits), None, y)
    p = torch.softmax(logits, -1)
    ref = -sum(math.log(p[b, t, y[b, t]]) for b in range(2) for t in range(3) if y[b, t] != -100)
    assert loss.item() == pytest.approx(ref, rel=1e-6)
    assert loss_sum(Fixed(logits), None, y).item() == pytest.approx(ref, rel=1e-6)  # training's
    pred = logits.argmax(-1)
    assert correct.item() == sum(
        int(pred[b, t] == y[b, t]) for b in range(2) for t in range(3) if y[b, t] != -100
    )


def test_checkpoints_round_trip_and_damaged_ones_are_skipped(tmp_path, caplog):
    from tokenizers import Tokenizer, models

    tok = Tokenizer(models.WordLevel({"a": 0, "b": 1}, unk_token=None))
    cfg = ModelConfig(arch="gpt", vocab_size=7, n_layer=1, n_heads=2, d_model=8, max_seq_len=4)
    model = build_model(cfg)
    opt = optim.make_optimizer(model, 1e-2, 0.1, (0.9, 0.99), torch.device("cpu"))
    gen = torch.Generator().manual_seed(3)
    for step in (1, 2):
        loss = model(torch.tensor([[1, 2, 3]])).logits.square().mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
        state = {
            "step": step,
            "best_val_loss": 1.0 / step,
            "tokens": 3 * step,
            "elapsed": 0.5,
            "data_rng": gen.get_state(),
        }
        save_checkpoint(tmp_path, model, tok, opt, state, keep=2)
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    assert latest_checkpoint(tmp_path).name == "step-000002"
    # a state.pt holds only tensors and plain values
    torch.load(tmp_path / "checkpoints" / "step-000002" / "state.pt", weights_only=True)

    fresh = build_model(cfg)
    fresh_opt = optim.make_optimizer(fresh, 1e-2, 0.1, (0.9, 0.99), torch.device("cpu"))
    state = load_checkpoint(tmp_path / "checkpoints" / "step-000002", fresh, fresh_opt)
    assert state["step"] == 2 and torch.equal(state["data_rng"], gen.get_state())
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, saved[k]), k
    a, b = opt.state_dict()["state"], fresh_opt.state_dict()["state"]
    for i in a:
        for key in a[i]:
            assert torch.equal(torch.as_tensor(a[i][key]), torch.as_tensor(b[i][key]))

    # an interrupted write (no manifest) and a flipped byte are both skipped
    (tmp_path / "checkpoints" / "step-000003").mkdir()
    state_file = tmp_path / "checkpoints" / "step-000002" / "state.pt"
    data = bytearray(state_file.read_bytes())
    data[len(data) // 2] ^= 1
    state_file.write_bytes(bytes(data))
    assert latest_checkpoint(tmp_path).name == "step-000001"
    err = caplog.text  # reported through logging (the command line shows it on stderr)
    assert "step-000003: no manifest.json" in err
    assert "state.pt does not match its SHA-256" in err


@pytest.mark.parametrize("extra", [{}, {"mlp": "swiglu", "n_kv_heads": 2}])
def test_bench_train_flops_match_torch_flop_counter(extra):
    from torch.utils.flop_counter import FlopCounterMode

    from attnkit.bench.train import model_flops_per_token

    L, T, C = 2, 32, 64
    cfg = ModelConfig(
        arch="gpt",
        vocab_size=65,
        n_layer=L,
        n_heads=4,
        d_model=C,
        max_seq_len=T,
        bias=False,
        backend="math",
        **extra,
    )
    model = build_model(cfg)
    with FlopCounterMode(display=False) as counter:
        model(torch.randint(0, 65, (3, T))).logits.sum().backward()
    per_token = counter.get_total_flops() / (3 * T)
    # the math backend computes the full T x T scores; the formula counts the causal half
    assert model_flops_per_token(cfg, T) == per_token - 6 * L * T * C


def test_bench_train_command(tmp_path, capsys):
    import json

    from attnkit import cli

    threads = torch.get_num_threads()
    try:
        assert (
            cli.main(
                [
                    "bench",
                    "train",
                    "--iters",
                    "2",
                    "--warmup",
                    "1",
                    "--threads",
                    "1",
                    "--out",
                    str(tmp_path),
                ]
            )
            == 0
        )
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert "tokens/s" in out and "MFU" in out
    result = json.loads((tmp_path / "train.json").read_text())
    assert result["tokens_per_second"] > 0 and 0 < result["mfu"] < 1.5
    C, L, V, T = 128, 4, 65, 64  # configs/gpt-shakespeare-char.toml, no biases, tied LM head
    assert result["parameters"] == L * (12 * C * C + 2 * C) + C + V * C + T * C


def test_steady_tokens_per_second_is_over_the_median_steady_step():
    from attnkit.training.speed import steady_tokens_per_second

    times = [30.0, 9.0, 0.2, 0.4, 5.0, 0.3, 0.1]
    # by hand: skip 2 -> 0.2, 0.4, 5.0, 0.3, 0.1; without index 4 -> 0.1 0.2 0.3 0.4: 0.25
    assert steady_tokens_per_second(times, 100, skip=2, exclude=[4]) == pytest.approx(400.0)
    assert steady_tokens_per_second(times, 100, skip=2) == pytest.approx(100 / 0.3)
    assert steady_tokens_per_second(times, 100, skip=7) is None


def test_compile_model_runs_the_fused_kernels_on_the_threads_asked(monkeypatch):
    from attnkit.training import speed

    seen = []
    monkeypatch.setattr(
        torch, "compile", lambda model, options=None, dynamic=None: seen.append(options) or model
    )
    model = torch.nn.Linear(2, 2)
    assert speed.compile_model(model, 1, torch.device("cpu")) is model
    speed.compile_model(model, 0, torch.device("cpu"))
    speed.compile_model(model, 1, torch.device("cuda"))
    assert seen == [{"cpp.threads": 1}, None, None]


def test_compile_model_primes_tables_built_on_first_use(monkeypatch):
    from attnkit.training import speed

    monkeypatch.setattr(torch, "compile", lambda model, options=None, dynamic=None: model)
    cfg = ModelConfig(
        arch="gpt", vocab_size=11, n_layer=1, n_heads=2, d_model=8, positional="rope", dropout=0.5
    )
    model = build_model(cfg).train()
    rotary = model.blocks[0].attn.rotary
    assert rotary._cached_len == 0
    state = torch.get_rng_state()
    speed.compile_model(model, 0, torch.device("cpu"), prime=torch.zeros(1, 6, dtype=torch.long))
    assert rotary._cached_len >= 6  # built before tracing: the second step does not recompile
    assert model.training and all(p.grad is None for p in model.parameters())
    assert torch.equal(torch.get_rng_state(), state)  # eval mode: no dropout draw


def test_pretrain_records_the_time_of_every_step(tmp_path, monkeypatch):
    from attnkit.training.loop import pretrain

    monkeypatch.setenv("ATTNKIT_CACHE", str(tmp_path / "cache"))
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(
        "".join(f"line {i}: the quick brown fox jumps over it.\n" for i in range(300))
    )
    cfg = run_config.build(
        {
            "data": {"corpus": str(corpus)},
            "model": {"arch": "gpt", "n_layer": 1, "n_heads": 2, "d_model": 16},
            "train": {
                "batch_size": 4,
                "block_size": 16,
                "max_iters": 14,
                "eval_interval": 6,
                "eval_iters": 2,
                "warmup_iters": 0,
                "progress": False,
                "elementwise_threads": 1,
            },
        },
        [],
    )
    before = torch.get_num_threads()
    s = pretrain(cfg, tmp_path / "run")
    assert torch.get_num_threads() == before
    times = s["step_seconds"]
    assert len(times) == 14 and all(t > 0 for t in times)
    # evaluations and checkpoints after steps 6 and 12 fall in the intervals of steps 7 and 13
    assert s["busy_steps"] == [6, 12]
    assert s["first_step_seconds"] == pytest.approx(times[0], abs=1e-3)
    assert sum(times) <= s["loop_seconds"] + 1e-6
    steady = sorted(times[i] for i in (10, 11, 13))  # past the 10 warm-up steps, not busy
    assert s["steady_tokens_per_second"] == pytest.approx(4 * 16 / steady[1], rel=1e-3, abs=0.1)


def test_elementwise_threads_is_checked():
    with pytest.raises(ValueError, match="train.elementwise_threads"):
        run_config.check_train(run_config.build({}, [("train.elementwise_threads", -1)]))
