"""Whole models against float64 forwards written here from their state_dicts.

Each reference uses plain torch operations only (indexing, matmul, exp, tanh, erf, rsqrt): no
attnkit code, no torch.nn layers and no F.scaled_dot_product_attention, so a mistake shared by
a model and its own math backend cannot hide. Three layouts:

* GPT (GPT-2): learned positions, pre-norm LayerNorm blocks, tanh GELU MLP, causal attention,
  tied LM head;
* BERT: token + position + segment embeddings, embedding LayerNorm, post-norm blocks, erf GELU,
  bidirectional attention over the real tokens, pooler (dense + tanh) and a classifier;
* the llama layout: RMSNorm, SwiGLU, RoPE (rotate-half pairs), grouped-query attention, no
  biases, an untied LM head.

The parameters are redrawn at a scale where every part matters (attention far from uniform,
norm weights and biases away from 1 and 0) before the model and the reference run.
"""

from __future__ import annotations

import math

import pytest
import torch

from attnkit.models import build_model

U32 = 2.0**-24


# ------------------------------------------------------------------- reference pieces
def layer_norm(x, w, b, eps):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)  # biased, as LayerNorm defines it
    y = (x - mu) / torch.sqrt(var + eps) * w
    return y if b is None else y + b


def rms_norm(x, w, eps):
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * w


def linear(x, w, b=None):
    y = x @ w.T
    return y if b is None else y + b


def gelu_erf(x):
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def gelu_tanh(x):
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def silu(x):
    return x / (1.0 + torch.exp(-x))


def rope(x, base):
    """Rotate-half RoPE: channel i pairs with i + D/2; position t turns pair i by
    t * base^(-2i/D)."""
    T, D = x.shape[-2], x.shape[-1]
    inv = base ** (-torch.arange(0, D, 2, dtype=torch.float64) / D)  # (D/2,)
    ang = torch.arange(T, dtype=torch.float64)[:, None] * inv[None, :]  # (T, D/2)
    cos, sin = torch.cos(ang), torch.sin(ang)
    a, b = x[..., : D // 2], x[..., D // 2 :]
    return torch.cat([a * cos - b * sin, b * cos + a * sin], dim=-1)


def self_attention(h, sd, p, cfg, valid, causal, rope_base=None):
    """softmax(q k^T / sqrt(D) + mask) v over the heads of one block; ``valid`` (B, T) True =
    real token; ``cfg.window``: a query sees the ``window`` most recent keys. Query head i
    reads key/value head i // (Hq / Hkv)."""
    B, T, _ = h.shape
    H, Hkv = cfg.n_heads, cfg.n_kv_heads
    D = cfg.d_model // H
    qkv = linear(h, sd[p + "qkv_proj.weight"], sd.get(p + "qkv_proj.bias"))
    q = qkv[..., : H * D].reshape(B, T, H, D).transpose(1, 2)  # (B, H, T, D)
    k = qkv[..., H * D : (H + Hkv) * D].reshape(B, T, Hkv, D).transpose(1, 2)
    v = qkv[..., (H + Hkv) * D :].reshape(B, T, Hkv, D).transpose(1, 2)
    if rope_base is not None:
        q, k = rope(q, rope_base), rope(k, rope_base)
    group = torch.arange(H) // (H // Hkv)
    k, v = k[:, group], v[:, group]  # (B, H, T, D)
    s = q @ k.transpose(-1, -2) / math.sqrt(D)  # (B, H, T, T)
    ok = valid[:, None, None, :].expand(B, H, T, T)
    if causal:
        ok = ok & torch.ones(T, T, dtype=torch.bool).tril()
    if cfg.window is not None:
        ok = ok & torch.ones(T, T, dtype=torch.bool).triu(1 - cfg.window)
    s = s.masked_fill(~ok, -math.inf)
    e = torch.exp(s - s.amax(-1, keepdim=True))
    y = (e / e.sum(-1, keepdim=True)) @ v  # every query here sees at least one key
    y = y.transpose(1, 2).reshape(B, T, H * D)
    return linear(y, sd[p + "out_proj.weight"], sd.get(p + "out_proj.bias"))


def gpt_reference(sd, cfg, ids, valid):
    """GPT-2: x = tok + pos; per block x += attn(LN1 x); x += MLP(LN2 x); LN; tied head."""
    T = ids.shape[1]
    x = sd["embed.tok.weight"][ids] + sd["embed.pos.weight"][:T]
    for i in range(cfg.n_layer):
        p = f"blocks.{i}."
        h = layer_norm(x, sd[p + "norm1.weight"], sd[p + "norm1.bias"], cfg.norm_eps)
        x = x + self_attention(h, sd, p + "attn.", cfg, valid, causal=True)
        h = layer_norm(x, sd[p + "norm2.weight"], sd[p + "norm2.bias"], cfg.norm_eps)
        h = gelu_tanh(linear(h, sd[p + "mlp.up.weight"], sd[p + "mlp.up.bias"]))
        x = x + linear(h, sd[p + "mlp.down.weight"], sd[p + "mlp.down.bias"])
    x = layer_norm(x, sd["norm.weight"], sd["norm.bias"], cfg.norm_eps)
    return x @ sd["embed.tok.weight"].T  # tied: the LM head is the token embedding


def llama_reference(sd, cfg, ids, valid):
    """Pre-norm RMSNorm blocks, RoPE on q and k, GQA, SwiGLU (rows [gate | up]), untied head."""
    x = sd["embed.tok.weight"][ids]
    for i in range(cfg.n_layer):
        p = f"blocks.{i}."
        h = rms_norm(x, sd[p + "norm1.weight"], cfg.norm_eps)
        x = x + self_attention(h, sd, p + "attn.", cfg, valid, True, rope_base=cfg.rope_base)
        h = rms_norm(x, sd[p + "norm2.weight"], cfg.norm_eps)
        gu = linear(h, sd[p + "mlp.gate_up.weight"])
        gate, up = gu[..., : cfg.d_ff], gu[..., cfg.d_ff :]
        x = x + linear(silu(gate) * up, sd[p + "mlp.down.weight"])
    x = rms_norm(x, sd["norm.weight"], cfg.norm_eps)
    return x @ sd["lm_head.proj.weight"].T


def bert_reference(sd, cfg, ids, valid, types):
    """BERT: LN(tok + pos + segment); per block x = LN1(x + attn x); x = LN2(x + MLP x);
    pooled = tanh(dense(x[:, 0])); logits = classifier(pooled). Returns (hidden, logits)."""
    T = ids.shape[1]
    x = sd["embed.tok.weight"][ids] + sd["embed.pos.weight"][:T] + sd["embed.types.weight"][types]
    x = layer_norm(x, sd["embed.norm.weight"], sd["embed.norm.bias"], cfg.norm_eps)
    for i in range(cfg.n_layer):
        p = f"blocks.{i}."
        a = self_attention(x, sd, p + "attn.", cfg, valid, causal=False)
        x = layer_norm(x + a, sd[p + "norm1.weight"], sd[p + "norm1.bias"], cfg.norm_eps)
        h = gelu_erf(linear(x, sd[p + "mlp.up.weight"], sd[p + "mlp.up.bias"]))
        m = linear(h, sd[p + "mlp.down.weight"], sd[p + "mlp.down.bias"])
        x = layer_norm(x + m, sd[p + "norm2.weight"], sd[p + "norm2.bias"], cfg.norm_eps)
    pooled = torch.tanh(linear(x[:, 0], sd["pooler.dense.weight"], sd["pooler.dense.bias"]))
    return x, linear(pooled, sd["classifier.proj.weight"], sd["classifier.proj.bias"])


# ------------------------------------------------------------------------------ setup
def redraw(model, seed=0):
    """Parameters at a scale where every part of the forward shows in the output: linear
    weights N(0, 1/fan_in) (q.k of a few units, so attention is far from uniform), embeddings
    N(0, 1), norm weights 1 + N(0, 0.2), biases N(0, 0.1)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():  # tied parameters appear once
            r = torch.randn(p.shape, generator=g, dtype=torch.float64)
            if name.endswith("bias"):
                r = 0.1 * r
            elif "norm" in name:
                r = 1.0 + 0.2 * r
            elif p.dim() == 2 and "embed" not in name:
                r = r / math.sqrt(p.shape[1])
            p.copy_(r)
    return model.eval()


def inputs(cfg, B=2, T=24, seed=1):
    """ids (B, T) and attention_mask (B, T): the second row's last 7 tokens are padding."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, cfg.vocab_size, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, T - 7 :] = 0
    return ids, mask


def float64_state(model):
    return {k: v.detach().double() for k, v in model.state_dict().items()}


def assert_matches(got, ref, what, rel):
    """|got - ref| <= rel * max|ref| everywhere (got from float32 or float64 arithmetic)."""
    err = (got.double() - ref).abs().max().item()
    tol = rel * ref.abs().max().item()
    assert err <= tol, f"{what}: error {err:.3g} > {tol:.3g}"


# Tolerances, relative to the largest output. float64 runs of the model: the two float64
# computations differ in summation order only (measured: under 2e-15); 1e-10 leaves room and
# still fails any difference of formula. float32 runs: a few u32 = 6e-8 per operation through
# two blocks and the head, with sums of up to 344 terms (measured: 3.5e-7, about 6 u32); 4e-6
# (about 70 u32) leaves a margin of 10 and still fails an RMSNorm eps of 1e-4 for 1e-6 or an
# erf GELU for a tanh one (8e-5); a wrong mask, rotation or head grouping shows at 0.07 or more.
REL64, REL32 = 1e-10, 4e-6


@pytest.mark.parametrize(
    "backend,window", [("auto", None), ("sdpa", None), ("math", None), ("windowed", 8)]
)
def test_gpt_matches_its_float64_reference(backend, window):
    model = build_model("tiny", dropout=0.0, attn_dropout=0.0, backend=backend, window=window)
    model = redraw(model)
    cfg = model.config
    ids, mask = inputs(cfg)
    ref = gpt_reference(float64_state(model), cfg, ids, mask.bool())
    with torch.no_grad():
        assert_matches(model(ids, attention_mask=mask).logits, ref, "float32 GPT", REL32)
        model.double()
        assert_matches(model(ids, attention_mask=mask).logits, ref, "float64 GPT", REL64)


@pytest.mark.parametrize("backend", ["auto", "sdpa", "math"])
def test_llama_layout_matches_its_float64_reference(backend):
    model = redraw(build_model("tiny-llama", backend=backend))
    cfg = model.config
    assert (cfg.norm, cfg.mlp, cfg.positional) == ("rmsnorm", "swiglu", "rope")
    assert cfg.n_kv_heads < cfg.n_heads and not cfg.bias and not cfg.tie_embeddings
    ids, mask = inputs(cfg)
    ref = llama_reference(float64_state(model), cfg, ids, mask.bool())
    with torch.no_grad():
        assert_matches(model(ids, attention_mask=mask).logits, ref, "float32 llama", REL32)
        model.double()
        assert_matches(model(ids, attention_mask=mask).logits, ref, "float64 llama", REL64)


@pytest.mark.parametrize("backend", ["auto", "sdpa", "math"])
def test_bert_matches_its_float64_reference(backend):
    model = build_model("tiny-bert", head="classification", num_labels=3, backend=backend)
    model = redraw(model)
    cfg = model.config
    ids, mask = inputs(cfg)
    types = (torch.arange(ids.shape[1]) >= 10).long().expand_as(ids)  # two segments
    hidden, logits = bert_reference(float64_state(model), cfg, ids, mask.bool(), types)
    for dtype, rel in ((torch.float32, REL32), (torch.float64, REL64)):
        model.to(dtype)
        with torch.no_grad():
            out = model(ids, attention_mask=mask, token_type_ids=types)
        assert_matches(out.hidden_states, hidden, f"{dtype} BERT hidden states", rel)
        assert_matches(out.logits, logits, f"{dtype} BERT logits", rel)
