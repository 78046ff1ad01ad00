"""attnkit against HF transformers' Llama on tiny random models built here (no download).

HF LlamaForCausalLM -> attnkit must reproduce HF's logits and loss (<= 1e-5, float32) with a
padded batch, for multi-head and grouped-query attention, tied and untied embeddings, with
and without biases; a RoPE/RMSNorm/SwiGLU attnkit GPT exported to HF must load in
``LlamaForCausalLM`` with the same logits, and ``attnkit.load`` reads the directory back.
"""

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

from hf_helpers import max_diff, padded_batch, perturb_norms_and_biases  # noqa: E402

import attnkit  # noqa: E402 (after the skip)
from attnkit.checkpoints import CheckpointError  # noqa: E402
from attnkit.checkpoints.hf import convert_from_hf, export_hf  # noqa: E402
from attnkit.models import ModelConfig, build_model  # noqa: E402

TOL = 1e-5
VOCAB = 97


def llama_config(**kw):
    base = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=56,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=64,
        rms_norm_eps=1e-6,
        initializer_range=0.1,
        tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": 500.0},
    )
    base.update(kw)
    return transformers.LlamaConfig(**base)


def random_llama(**kw):
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(llama_config(**kw)).eval()
    perturb_norms_and_biases(hf, 0.2)  # non-trivial norms and biases: a wrong map fails
    return hf


CASES = {
    "mha-untied": dict(),
    "gqa-tied": dict(num_key_value_heads=2, tie_word_embeddings=True),
    "mqa-bias": dict(num_key_value_heads=1, attention_bias=True, mlp_bias=True),
}


@pytest.mark.parametrize("case", list(CASES))
def test_hf_llama_to_attnkit_matches_transformers(tmp_path, case):
    hf = random_llama(**CASES[case])
    hf.save_pretrained(tmp_path)
    ours = attnkit.load(tmp_path)
    cfg = ours.config
    assert (cfg.positional, cfg.norm, cfg.mlp, cfg.head) == ("rope", "rmsnorm", "swiglu", "lm")
    assert cfg.n_kv_heads == hf.config.num_key_value_heads and cfg.rope_base == 500.0
    assert cfg.tie_embeddings == hf.config.tie_word_embeddings
    assert cfg.bias == bool(CASES[case].get("attention_bias"))
    ids, mask = padded_batch(VOCAB)
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask).logits
        got = ours(ids, attention_mask=mask).logits
    assert ref.abs().max() > 0.1  # a real signal
    assert max_diff(ref, got, mask) <= TOL
    labels = ids.masked_fill(mask == 0, -100)
    with torch.no_grad():
        want = hf(input_ids=ids, attention_mask=mask, labels=labels).loss.item()
        loss = ours(ids, attention_mask=mask, labels=labels).loss.item()
    assert abs(loss - want) <= TOL


def test_hf_llama_kv_cache_decoding_matches_the_full_forward():
    hf = random_llama(num_key_value_heads=2)
    ours = convert_from_hf(hf.state_dict(), hf.config.to_dict()).eval()
    ids = torch.randint(0, VOCAB, (2, 12))
    with torch.no_grad():
        ref = hf(input_ids=ids).logits
        cache = ours.new_cache()
        steps = [ours(ids[:, :5], cache=cache).logits] + [
            ours(ids[:, t : t + 1], cache=cache).logits for t in range(5, 12)
        ]
    assert (torch.cat(steps, 1) - ref).abs().max().item() <= TOL


def test_hf_llama_model_without_head_gives_the_hidden_states():
    torch.manual_seed(0)
    hf = transformers.LlamaModel(llama_config(num_key_value_heads=2)).eval()
    ours = convert_from_hf(hf.state_dict(), hf.config.to_dict()).eval()
    assert ours.config.head == "none"
    ids, mask = padded_batch(VOCAB)
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask).last_hidden_state
        got = ours(ids, attention_mask=mask).hidden_states
    assert max_diff(ref, got, mask) <= TOL


def attnkit_llama(**kw) -> ModelConfig:
    base = dict(
        arch="gpt",
        vocab_size=VOCAB,
        n_layer=2,
        n_heads=4,
        n_kv_heads=2,
        d_model=32,
        d_ff=48,
        max_seq_len=64,
        positional="rope",
        rope_base=1000.0,
        norm="rmsnorm",
        norm_eps=1e-5,
        mlp="swiglu",
        bias=False,
        tie_embeddings=True,
        initializer_range=0.1,
    )
    base.update(kw)
    return ModelConfig(**base)


@pytest.mark.parametrize(
    "overrides",
    [dict(), dict(tie_embeddings=False, n_kv_heads=4), dict(bias=True, n_kv_heads=1)],
    ids=["gqa-tied", "mha-untied", "mqa-bias"],
)
def test_attnkit_llama_exports_and_loads_in_transformers(tmp_path, overrides):
    cfg = attnkit_llama(**overrides)
    torch.manual_seed(0)
    ours = build_model(cfg).eval()
    with torch.no_grad():
        for name, p in ours.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(0.2 * torch.randn_like(p))
    export_hf(ours, tmp_path)
    hf_cfg = json.loads((tmp_path / "config.json").read_text())
    assert hf_cfg["model_type"] == "llama" and hf_cfg["architectures"] == ["LlamaForCausalLM"]
    hf = transformers.LlamaForCausalLM.from_pretrained(tmp_path).eval()
    assert hf.config.num_key_value_heads == cfg.n_kv_heads
    assert hf.config.tie_word_embeddings == cfg.tie_embeddings
    ids, mask = padded_batch(VOCAB)
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask).logits
        got = ours(ids, attention_mask=mask).logits
    assert ref.abs().max() > 0.1
    assert max_diff(ref, got, mask) <= TOL
    again = attnkit.load(tmp_path)  # and back
    assert again.config.replace(dropout=0.0) == cfg.replace(dropout=0.0)
    with torch.no_grad():
        assert max_diff(ref, again(ids, attention_mask=mask).logits, mask) <= TOL


@pytest.mark.parametrize(
    "change, message",
    [
        (
            dict(rope_parameters={"rope_type": "llama3", "rope_theta": 1e4, "factor": 8.0}),
            r"rope_type='llama3' \(scaled RoPE\) is not supported; expected 'default'",
        ),
        (dict(hidden_act="gelu"), r"hidden_act='gelu' is not supported; expected 'silu'"),
        (
            dict(attention_bias=True, mlp_bias=False),
            r"attention_bias=True with mlp_bias=False is not supported; expected both",
        ),
        (dict(head_dim=16), r"head_dim=16 is not supported; expected hidden_size / "),
    ],
)
def test_hf_llama_configs_attnkit_cannot_hold_are_named(tmp_path, change, message):
    hf_cfg = llama_config().to_dict()
    hf_cfg.update(change)
    (tmp_path / "config.json").write_text(json.dumps(hf_cfg))
    with pytest.raises(CheckpointError, match=message):
        convert_from_hf({}, hf_cfg, tmp_path / "model.safetensors", config_path=tmp_path / "c")


def test_attnkit_rope_is_hf_llamas_rotate_half_convention():
    """Every attnkit model built from a config rotates channel i with i + D/2 (HF Llama's
    rotate_half), so q/k weights convert unpermuted: the rotation itself matches HF's."""
    from transformers.models.llama.modeling_llama import (
        LlamaRotaryEmbedding,
        apply_rotary_pos_emb,
    )

    from attnkit.checkpoints.hf import llama

    cfg = attnkit_llama(n_layer=1)
    ours = build_model(cfg)
    rotary = ours.blocks[0].attn.rotary
    assert rotary.layout == "half"
    hf_cfg = transformers.LlamaConfig(**llama.config_to_hf(cfg))
    q = torch.randn(2, cfg.n_heads, 11, cfg.head_dim)
    k = torch.randn(2, cfg.n_kv_heads, 11, cfg.head_dim)
    pos = torch.arange(11)[None].expand(2, -1)
    cos, sin = LlamaRotaryEmbedding(hf_cfg)(q, pos)
    want_q, want_k = apply_rotary_pos_emb(q, k, cos, sin)
    got_q, got_k = rotary(q, k)
    assert (got_q - want_q).abs().max().item() <= 1e-5
    assert (got_k - want_k).abs().max().item() <= 1e-5
    assert (got_q - q).abs().max().item() > 0.1  # it does rotate
