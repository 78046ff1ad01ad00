"""GPT and BERT models: config validation, shapes, masks, packing, KV cache, counts, training.

References are independent computations: the same model run on each sequence alone (padding
and packing must not change real tokens), a full forward (the KV cache must reproduce it) and
a float64 math-backend run.
"""

import math

import pytest
import torch

from attnkit.attention import variants
from attnkit.models import (
    GPT,
    Bert,
    ModelConfig,
    ModelOutput,
    build_model,
    get_preset,
    preset_names,
)
from attnkit.models.common import positions_from_documents
from attnkit.models.layers import MLP, RMSNorm, SwiGLU, TransformerBlock, make_mlp, make_norm


def tiny_gpt(**kw) -> GPT:
    return build_model(
        get_preset("tiny", n_layer=2, d_model=32, n_heads=4, vocab_size=97, **kw)
    ).eval()


def head_output(out: ModelOutput) -> torch.Tensor:
    """The logits, or the hidden states of a model without a head."""
    return out.hidden_states if out.logits is None else out.logits


def tiny_bert(**kw) -> Bert:
    return build_model(
        get_preset("tiny-bert", n_layer=2, d_model=32, n_heads=4, vocab_size=97, **kw)
    ).eval()


# ------------------------------------------------------------------------------- config
@pytest.mark.parametrize(
    "field, value, expected",
    [
        ("n_layer", 0, "a positive int"),
        ("d_model", 30, "a multiple of n_heads=4"),
        ("n_kv_heads", 3, "a divisor of n_heads=4"),
        ("positional", "absolute", "one of ['learned', 'sinusoidal', 'rope', 'alibi', 'none']"),
        ("norm", "batchnorm", "one of ['layernorm', 'rmsnorm']"),
        ("mlp", "geglu", "one of ['gelu', 'gelu_tanh', 'relu', 'relu2', 'swiglu']"),
        ("dropout", 1.0, "a float in [0, 1)"),
        ("attention", "flash9", "'exact' or one of"),
        ("head", "mlm", "one of ['lm', 'none']"),
        ("norm_eps", -1.0, "a finite number > 0"),
        ("pad_token_id", 500, "None or an int in [0, vocab_size=256)"),
        ("bias", "yes", "a bool"),
    ],
)
def test_config_errors_name_the_field_the_value_and_what_was_expected(field, value, expected):
    base = dict(arch="gpt", vocab_size=256, n_layer=2, n_heads=4, d_model=64)
    base[field] = value
    with pytest.raises(ValueError) as e:
        ModelConfig(**base)
    msg = str(e.value)
    assert f"ModelConfig.{field}" in msg and repr(value) in msg and expected in msg, msg


def test_config_variant_params_are_checked_against_the_variant():
    with pytest.raises(
        ValueError,
        match=r"attention_params must be keyword arguments of variant 'lsh'.*unknown: \['bogus'\]",
    ):
        ModelConfig(attention="lsh", attention_params={"bogus": 1})
    with pytest.raises(ValueError, match="attention_params.*empty when attention='exact'"):
        ModelConfig(attention_params={"n_hashes": 2})
    with pytest.raises(ValueError, match="positional.*'alibi'"):
        ModelConfig(attention="performer", positional="alibi")


def test_config_round_trips_through_a_dict_and_rejects_unknown_keys():
    cfg = get_preset("tiny-llama")
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match=r"unknown ModelConfig field\(s\) \['n_layers'\]"):
        ModelConfig.from_dict({**cfg.to_dict(), "n_layers": 3})


def test_presets_and_unknown_preset_lists_the_names():
    for name in ("tiny", "gpt2", "gpt2-medium", "bert-base", "bert-mini", "minilm-l6"):
        assert name in preset_names()
    with pytest.raises(ValueError, match=r"unknown model preset 'gpt5'.*'bert-base'.*'gpt2'"):
        get_preset("gpt5")
    with pytest.raises(ValueError, match=r"'tiny-marian' is an encoder-decoder.*build_model"):
        get_preset("tiny-marian")
    assert get_preset("gpt2").n_layer == 12 and get_preset("gpt2-medium").d_model == 1024


@pytest.mark.parametrize(
    "name, params",
    [
        # the published parameter counts of these models
        ("gpt2", 124_439_808),
        ("gpt2-medium", 354_823_168),
        ("bert-base", 109_482_240),
        ("minilm-l6", 22_713_216),
    ],
)
def test_parameter_counts_match_the_published_models(name, params):
    with torch.device("meta"):
        model = build_model(name)
    assert model.num_parameters() == params


def test_flops_per_token_is_twice_the_matmul_weights_plus_attention():
    model = tiny_gpt()
    cfg = model.config
    matmul = sum(
        m.weight.numel() for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)
    )  # blocks + LM head
    T = 64
    expect = 2 * matmul + 4 * (T / 2) * cfg.d_model * cfg.n_layer
    assert model.flops_per_token(T) == pytest.approx(expect)
    assert model.flops_per_token(T, training=True) == pytest.approx(3 * expect)


# ------------------------------------------------------------------------------- layers
def test_rmsnorm_and_swiglu_against_their_formulas():
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    norm = RMSNorm(16, eps=1e-6).double()
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    ref = x / torch.sqrt((x * x).mean(-1, keepdim=True) + 1e-6) * norm.weight
    torch.testing.assert_close(norm(x), ref)
    mlp = SwiGLU(16, 24).double()
    gate, up = mlp.gate_up.weight[:24], mlp.gate_up.weight[24:]
    ref = (torch.nn.functional.silu(x @ gate.T) * (x @ up.T)) @ mlp.down.weight.T
    torch.testing.assert_close(mlp(x), ref)
    sq = MLP(16, 24, activation="relu2", bias=True).double()  # squared ReLU, elementwise
    h = x @ sq.up.weight.T + sq.up.bias
    ref = torch.where(h > 0, h * h, torch.zeros_like(h)) @ sq.down.weight.T + sq.down.bias
    torch.testing.assert_close(sq(x), ref)
    from attnkit.models.layers import (
        squared_relu,
    )  # its hand-written gradient: 2 relu(x), 0 below 0

    z = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(squared_relu, (z,))
    g = torch.randn(5, 7, dtype=torch.float64)
    squared_relu(z).backward(g)
    torch.testing.assert_close(z.grad, torch.where(z > 0, 2 * z * g, torch.zeros_like(z)))
    with pytest.raises(ValueError, match="norm must be one of.*'batch'"):
        make_norm("batch", 8, 1e-5)
    with pytest.raises(ValueError, match="mlp must be one of.*'geglu'"):
        make_mlp("geglu", 8, 16)


def test_post_norm_block_matches_its_formula():
    from attnkit.attention.module import MultiHeadAttention

    attn = MultiHeadAttention(16, 4).double()
    mlp, n1, n2 = (
        MLP(16, 32, "gelu").double(),
        torch.nn.LayerNorm(16).double(),
        torch.nn.LayerNorm(16).double(),
    )
    block = TransformerBlock(attn, mlp, n1, n2, placement="post").eval()
    x = torch.randn(2, 7, 16, dtype=torch.float64)
    h = n1(x + attn(x))
    torch.testing.assert_close(block(x), n2(h + mlp(h)))


# ------------------------------------------------------------------------------- GPT
@pytest.mark.parametrize(
    "overrides",
    [
        dict(),
        dict(positional="sinusoidal"),
        dict(positional="rope"),
        dict(positional="alibi"),
        dict(positional="none"),
        dict(norm="rmsnorm", mlp="swiglu", bias=False, n_kv_heads=2),
        dict(n_kv_heads=1),
        dict(mlp="relu", tie_embeddings=False),
    ],
)
def test_gpt_is_causal_for_every_layout(overrides):
    model = tiny_gpt(**overrides)
    ids = torch.randint(0, 97, (2, 12))
    with torch.no_grad():
        full = model(ids).logits  # (B, T, V)
        changed = ids.clone()
        changed[:, 8:] = (changed[:, 8:] + 1) % 97
        other = model(changed).logits
    assert full.shape == (2, 12, 97)
    torch.testing.assert_close(full[:, :8], other[:, :8], atol=1e-5, rtol=0)
    assert (full[:, 8:] - other[:, 8:]).abs().max() > 1e-4


@pytest.mark.parametrize(
    "overrides", [dict(), dict(positional="rope", n_kv_heads=2), dict(positional="alibi")]
)
def test_gpt_kv_cache_reproduces_the_full_forward(overrides):
    model = tiny_gpt(**overrides)
    ids = torch.randint(0, 97, (2, 10))
    with torch.no_grad():
        full = model(ids).logits
        cache = model.new_cache()
        step = [model(ids[:, :4], cache=cache).logits]
        for t in range(4, 10):
            step.append(model(ids[:, t : t + 1], cache=cache).logits)
    torch.testing.assert_close(torch.cat(step, dim=1), full, atol=1e-5, rtol=1e-5)
    assert cache[0].length == 10
    with pytest.raises(ValueError, match="cache must be a list of 2 KVCache"):
        model(ids, cache=cache[:1])


def test_gpt_padding_leaves_real_tokens_unchanged():
    model = tiny_gpt()
    a, b = torch.randint(0, 97, (1, 9)), torch.randint(0, 97, (1, 5))
    batch = torch.zeros(2, 9, dtype=torch.long)
    batch[0], batch[1, :5] = a[0], b[0]
    mask = torch.zeros(2, 9, dtype=torch.long)
    mask[0], mask[1, :5] = 1, 1
    with torch.no_grad():
        out = model(batch, attention_mask=mask).logits
        torch.testing.assert_close(out[0], model(a).logits[0], atol=1e-5, rtol=0)
        torch.testing.assert_close(out[1, :5], model(b).logits[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("positional", ["learned", "rope", "alibi"])
def test_packed_documents_equal_separate_runs(positional):
    for model in (tiny_gpt(positional=positional), tiny_bert(positional=positional)):
        a, b = torch.randint(1, 97, (1, 6)), torch.randint(1, 97, (1, 4))
        packed = torch.cat([a, b], dim=1)  # (1, 10), no padding
        docs = torch.tensor([[0] * 6 + [1] * 4])
        with torch.no_grad():
            out = head_output(model(packed, document_ids=docs))
            torch.testing.assert_close(out[:, :6], head_output(model(a)), atol=1e-5, rtol=0)
            torch.testing.assert_close(out[:, 6:], head_output(model(b)), atol=1e-5, rtol=0)


def test_positions_restart_per_document():
    docs = torch.tensor([[0, 0, 0, 1, 1, 2], [5, 5, 5, 5, 5, 5]])
    assert positions_from_documents(docs).tolist() == [[0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 4, 5]]


def test_gpt_matches_a_float64_math_reference():
    model = tiny_gpt(positional="rope", n_kv_heads=2)
    ref = build_model(model.config.replace(backend="math")).double().eval()
    ref.load_state_dict(model.state_dict())
    ids = torch.randint(0, 97, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(
            model(ids).logits.double(), ref(ids).logits, atol=1e-5, rtol=1e-5
        )


@pytest.mark.parametrize("name", variants.names())
def test_gpt_and_bert_run_with_every_attention_variant(name):
    params = {"block_size": 4} if name in ("bigbird", "local") else {}
    if name == "bigbird":
        params.update(num_random_blocks=1)
    for model in (
        tiny_gpt(attention=name, attention_params=params),
        tiny_bert(attention=name, attention_params=params),
    ):
        ids = torch.randint(1, 97, (2, 16))
        with torch.no_grad():
            out = head_output(model(ids))
        assert torch.isfinite(out).all() and out.shape[:2] == (2, 16)


@pytest.fixture
def debug_env(monkeypatch):
    """Set ATTNKIT_DEBUG for the test (``debug_env("1")``); read again before and after."""
    from attnkit._util import env

    def set_to(value: str | None) -> bool:
        if value is None:
            monkeypatch.delenv("ATTNKIT_DEBUG", raising=False)
        else:
            monkeypatch.setenv("ATTNKIT_DEBUG", value)
        return env.refresh_debug()

    yield set_to
    monkeypatch.undo()
    env.refresh_debug()


def test_bad_inputs_name_the_value(debug_env):
    model = tiny_gpt()
    debug_env(None)
    with pytest.raises(IndexError):  # without ATTNKIT_DEBUG=1: no host sync, the embedding fails
        model(torch.tensor([[1, 97]]))
    assert debug_env("1")
    with pytest.raises(ValueError, match=r"input_ids holds 97, outside \[0, 97\)"):
        model(torch.tensor([[1, 97]]))
    assert not debug_env("0")
    with pytest.raises(ValueError, match=r"attention_mask must have shape \(B, Tk\) = \(1, 2\)"):
        model(torch.tensor([[1, 2]]), attention_mask=torch.ones(1, 3))
    with pytest.raises(ValueError, match="300 tokens.*exceeds max_seq_len=256"):
        model(torch.zeros(1, 300, dtype=torch.long))
    with pytest.raises(ValueError, match="type_vocab_size=0"):
        model(torch.tensor([[1, 2]]), token_type_ids=torch.zeros(1, 2, dtype=torch.long))


def test_tied_embeddings_are_one_tensor_and_training_lowers_the_loss():
    model = tiny_gpt(dropout=0.1, attn_dropout=0.1).train()
    assert model.lm_head.proj.weight is model.embed.tok.weight
    assert model.num_parameters() == sum(p.numel() for p in model.parameters())
    ids = torch.randint(0, 97, (2, 17))
    losses = []
    for _ in range(40):  # plain gradient descent: gradients reach every parameter
        logits = model(ids[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 97), ids[:, 1:].reshape(-1))
        model.zero_grad()
        loss.backward()
        with torch.no_grad():
            for p in model.parameters():
                p -= 0.5 * p.grad
        losses.append(loss.item())
    assert losses[0] == pytest.approx(math.log(97), rel=0.1)
    assert losses[-1] < 0.3 * losses[0], losses
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, model(ids).logits)  # dropout is off in eval


# ------------------------------------------------------------------------------- BERT
def test_bert_heads_and_pooling():
    ids = torch.randint(1, 97, (3, 8))
    mask = torch.ones(3, 8, dtype=torch.long)
    mask[1, 5:] = 0
    enc = tiny_bert()
    with torch.no_grad():
        h = enc(ids, attention_mask=mask).hidden_states
        assert h.shape == (3, 8, 32)
        mean = enc.pool(h, mask, "mean")
        torch.testing.assert_close(mean[1], h[1, :5].mean(0))
        torch.testing.assert_close(enc.pool(h, mask, "cls"), h[:, 0])
        mlm = tiny_bert(head="mlm")
        assert (
            mlm(ids).logits.shape == (3, 8, 97) and mlm.mlm.decoder.weight is mlm.embed.tok.weight
        )
        cls = tiny_bert(head="classification", num_labels=5)
        assert cls(ids, attention_mask=mask).logits.shape == (3, 5)
        types = torch.zeros(3, 8, dtype=torch.long)
        types[:, 4:] = 1
        diff = enc(ids, token_type_ids=types).hidden_states - enc(ids).hidden_states
        assert diff.abs().max() > 1e-4
    with pytest.raises(ValueError, match="pooling must be one of.*'max'"):
        enc.pool(h, mask, "max")


def test_sliding_window_limits_what_a_token_sees():
    model = build_model(
        get_preset(
            "tiny", n_layer=1, d_model=32, n_heads=4, vocab_size=97, window=3, positional="rope"
        )
    ).eval()
    ids = torch.randint(0, 97, (1, 12))
    changed = ids.clone()
    changed[0, 0] = (changed[0, 0] + 1) % 97
    with torch.no_grad():
        a, b = model(ids).logits, model(changed).logits
    # one layer, window 3: position p sees p-2..p, so token 0 reaches positions 0..2 only
    assert (a[0, :3] - b[0, :3]).abs().max() > 1e-4
    torch.testing.assert_close(a[0, 3:], b[0, 3:], atol=0, rtol=0)


def test_config_is_frozen_and_holds_the_class_labels():
    import dataclasses

    cfg = get_preset("tiny-bert", head="classification", id2label=["neg", "neu", "pos"])
    assert cfg.num_labels == 3 and cfg.id2label == ("neg", "neu", "pos")
    assert dict(cfg.label2id) == {"neg": 0, "neu": 1, "pos": 2}
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.pooling = "mean"  # type: ignore[misc]
    with pytest.raises(TypeError):
        cfg.label2id["neg"] = 5  # type: ignore[index]
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.replace(id2label=("a", "b")).num_labels == 2
    with pytest.raises(ValueError, match=r"ModelConfig.num_labels must be 3, the number of labels"):
        cfg.replace(num_labels=4)
    with pytest.raises(ValueError, match="ModelConfig.id2label must be distinct non-empty"):
        cfg.replace(id2label=("a", "a"))
    assert ModelConfig().label2id == {}


def test_old_field_names_still_load_and_derived_fields_are_resolved():
    old = {"arch": "gpt", "vocab_size": 64, "n_layer": 1, "n_head": 4, "d_model": 32}
    cfg = ModelConfig.from_dict({**old, "n_kv_head": 2})
    assert (cfg.n_heads, cfg.n_kv_heads, cfg.d_ff) == (4, 2, 128)
    assert ModelConfig.from_dict(old).n_kv_heads == 4
    with pytest.raises(ValueError, match="both 'n_head' .* and 'n_heads'"):
        ModelConfig.from_dict({**old, "n_heads": 4})
    mha = ModelConfig.from_dict(old)
    assert mha.replace(n_heads=8).n_kv_heads == 8 and mha.replace(d_model=64).d_ff == 256
    assert cfg.replace(n_heads=8).n_kv_heads == 2
    assert mha.replace(d_ff=100, d_model=64).d_ff == 100


def _xent64(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the targets that are not -100, in float64, written out."""
    logits, keep = logits.double(), target != -100
    logp = logits - logits.exp().sum(-1, keepdim=True).log()  # (N, K)
    picked = logp[keep].gather(1, target[keep][:, None])[:, 0]  # (n,)
    return -picked.sum() / keep.sum()


def test_models_take_labels_and_return_the_loss_of_their_head():
    ids = torch.randint(1, 97, (3, 10))
    gpt = tiny_gpt()
    labels = ids.clone()
    labels[0, 4:] = -100  # ignored positions
    with torch.no_grad():
        out = gpt(ids, labels=labels)
    assert isinstance(out, ModelOutput) and out.logits.shape == (3, 10, 97)
    assert out.hidden_states.shape == (3, 10, 32) and gpt(ids).loss is None
    # position t predicts token t + 1
    want = _xent64(out.logits[:, :-1].reshape(-1, 97), labels[:, 1:].reshape(-1))
    assert abs(out.loss.item() - want.item()) < 1e-5

    mlm = tiny_bert(head="mlm")
    labels = torch.full_like(ids, -100)
    labels[:, [2, 5]] = ids[:, [2, 5]]
    with torch.no_grad():
        out = mlm(ids, labels=labels)
    want = _xent64(out.logits.reshape(-1, 97), labels.reshape(-1))
    assert abs(out.loss.item() - want.item()) < 1e-5

    cls = tiny_bert(head="classification", num_labels=4)
    classes = torch.tensor([0, 3, 1])
    with torch.no_grad():
        out = cls(ids, labels=classes)
    assert out.logits.shape == (3, 4)
    assert abs(out.loss.item() - _xent64(out.logits, classes).item()) < 1e-5

    with pytest.raises(ValueError, match=r"labels must have shape \(3,\)"):
        cls(ids, labels=ids)
    with pytest.raises(ValueError, match="labels need a head"):
        tiny_bert()(ids, labels=ids)
    with pytest.raises(ValueError, match="labels must be an integer tensor"):
        gpt(ids, labels=ids.float())


def _graph_breaks(model: torch.nn.Module, *args, **kwargs) -> tuple[int, list[str]]:
    """(how many graph breaks torch.compile makes in ``model(*args, **kwargs)``, their
    reasons as ``"reason | file:line <- file:line"``)."""
    import torch._dynamo

    from attnkit.attention.planner import PLANS

    PLANS.clear()  # as on the first call of a shape: nothing planned yet
    torch._dynamo.reset()
    try:
        explained = torch._dynamo.explain(model)(*args, **kwargs)
    finally:
        torch._dynamo.reset()
    out = []
    for b in explained.break_reasons:
        where = [f"{f.filename.rsplit('/src/', 1)[-1]}:{f.lineno}" for f in b.user_stack[-2:]]
        out.append(f"{str(b.reason).splitlines()[0]} | {' <- '.join(reversed(where))}")
    return explained.graph_break_count, out


TRACED = [("tiny", False), ("tiny", True), ("tiny-bert", False), ("tiny-bert", True)]


def _traced(preset: str, masked: bool):
    model = build_model(get_preset(preset, vocab_size=97)).eval()
    ids = torch.randint(1, 97, (2, 16))
    mask = torch.ones(2, 16, dtype=torch.long)
    mask[1, 10:] = 0
    return model, ids, (mask if masked else None)


@pytest.mark.parametrize("preset, masked", TRACED)
def test_forward_compiles_without_graph_breaks(preset, masked, debug_env):
    """No host sync in a forward pass (the ids range and all-real mask checks run only under
    ATTNKIT_DEBUG=1), so torch.compile makes one graph: no break anywhere, attention included."""
    debug_env(None)
    model, ids, mask = _traced(preset, masked)
    count, breaks = _graph_breaks(model, ids, attention_mask=mask)
    assert count == 0 and not breaks, breaks


@pytest.mark.parametrize("family", ["gpt-gqa", "marian"])
def test_forward_with_dynamic_lengths_compiles_without_graph_breaks(family, debug_env):
    """With batch and length marked dynamic (torch.compile's view of length-bucketed training
    batches), the flags attention derives from shapes (causal for more than one query, grouped
    heads) stay plain bools: no break at SDPA, for a GQA GPT and an encoder-decoder."""
    import torch._dynamo

    from attnkit.models.encdec import EncoderDecoder
    from attnkit.models.encdec_config import get_encdec_preset

    debug_env(None)
    ids = torch.randint(1, 97, (2, 12))
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[1, 7:] = 0
    for d in (0, 1):
        torch._dynamo.mark_dynamic(ids, d)
        torch._dynamo.mark_dynamic(mask, d)
    if family == "gpt-gqa":
        model = build_model(get_preset("tiny", vocab_size=97, n_kv_heads=1)).eval()
        count, breaks = _graph_breaks(model, ids, attention_mask=mask)
    else:
        cfg = get_encdec_preset(
            "tiny-marian", vocab_size=97, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0
        )
        model = EncoderDecoder(cfg).eval()
        dec = torch.randint(1, 97, (2, 9))
        for d in (0, 1):
            torch._dynamo.mark_dynamic(dec, d)
        count, breaks = _graph_breaks(
            model, input_ids=ids, attention_mask=mask, decoder_input_ids=dec
        )
    assert count == 0 and not breaks, breaks
