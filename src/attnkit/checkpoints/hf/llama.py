"""Llama (HF ``model_type`` "llama"): key map and config translation.

Covers LlamaModel and LlamaForCausalLM: a pre-norm GPT with RMSNorm, rotary positions (RoPE),
a SwiGLU MLP, optional grouped-query attention and tied or untied embeddings. That is the HF
form of every attnkit GPT with ``positional="rope"``, ``norm="rmsnorm"`` and ``mlp="swiglu"``.

* **RoPE convention.** HF Llama rotates with ``rotate_half``: channel i of a head is paired
  with channel i + D/2. attnkit's RoPE uses that same "half" layout
  (:func:`attnkit.positional.apply_rotary`, the default of every model built from a config), so
  q/k weights are copied unpermuted. (An "interleaved" layout, pairs (0, 1), (2, 3), ..., would
  need the rows of each q/k head permuted; no attnkit config builds one.)
* **Projections.** HF's q_proj, k_proj and v_proj are stacked into attnkit's fused
  ``qkv_proj`` (rows ``[q | k | v]``, Hq*D + 2*Hkv*D of them under GQA); gate_proj and up_proj
  into ``gate_up`` (rows ``[gate | up]``). Linears are ``nn.Linear`` on both sides: nothing is
  transposed.
* **Biases.** ``attention_bias`` (q, k, v, o) and ``mlp_bias`` (gate, up, down) are both
  ``config.bias``; an HF config where they differ is refused. RMSNorm has no bias.
* Only the default RoPE is supported: scaled variants (``rope_type`` linear, dynamic, yarn,
  llama3, ...) and a ``head_dim`` other than hidden_size / num_attention_heads are refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from attnkit.checkpoints.format import CheckpointError
from attnkit.checkpoints.hf.keymap import Architecture, KeyMap, Rule, config_value
from attnkit.models.config import ModelConfig

_L = "layers.{i}"
_B = "blocks.{i}"


def _linear(hf: str, ours: str) -> tuple[Rule, Rule]:
    return (Rule(f"{hf}.weight", f"{ours}.weight"), Rule(f"{hf}.bias", f"{ours}.bias"))


def _stacked(hf: tuple[str, ...], ours: str) -> tuple[Rule, Rule]:
    return (
        Rule(tuple(f"{n}.weight" for n in hf), f"{ours}.weight"),
        Rule(tuple(f"{n}.bias" for n in hf), f"{ours}.bias"),
    )


KEYMAP = KeyMap(
    model=(
        Rule("embed_tokens.weight", "embed.tok.weight"),
        Rule("norm.weight", "norm.weight"),
    ),
    layer=(
        Rule(f"{_L}.input_layernorm.weight", f"{_B}.norm1.weight"),
        *_stacked(
            tuple(f"{_L}.self_attn.{p}_proj" for p in "qkv"), f"{_B}.attn.qkv_proj"
        ),  # [q | k | v]
        *_linear(f"{_L}.self_attn.o_proj", f"{_B}.attn.out_proj"),
        Rule(f"{_L}.post_attention_layernorm.weight", f"{_B}.norm2.weight"),
        *_stacked((f"{_L}.mlp.gate_proj", f"{_L}.mlp.up_proj"), f"{_B}.mlp.gate_up"),
        *_linear(f"{_L}.mlp.down_proj", f"{_B}.mlp.down"),
    ),
    heads={"lm": (Rule("lm_head.weight", "lm_head.proj.weight"),)},
    # older files carry the RoPE frequencies as a buffer; attnkit computes them
    ignore=(r"(layers\.\d+\.self_attn\.)?rotary_emb\.inv_freq",),
    prefix="model.",
    hf_class={"none": "LlamaModel", "lm": "LlamaForCausalLM"},
)


def _rope_theta(hf: Mapping[str, Any], path: Path) -> float:
    """The RoPE base of an HF config, refusing scaled RoPE (transformers >= 5 writes
    ``rope_parameters``; older files ``rope_theta`` and ``rope_scaling``)."""
    params = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    if not isinstance(params, Mapping):
        raise CheckpointError(
            f"{path}: rope_parameters={params!r} is not supported; expected a dict"
        )
    kind = params.get("rope_type", params.get("type", "default"))
    if kind != "default":
        raise CheckpointError(
            f"{path}: rope_type={kind!r} (scaled RoPE) is not supported; expected 'default'"
        )
    theta = params.get("rope_theta", hf.get("rope_theta", 10000.0))
    if isinstance(theta, bool) or not isinstance(theta, (int, float)):
        raise CheckpointError(f"{path}: rope_theta={theta!r} is not supported; expected a number")
    return float(theta)


def config_from_hf(hf: Mapping[str, Any], path: Path, head: str, has_pooler: bool) -> ModelConfig:
    """The :class:`~attnkit.models.config.ModelConfig` of an HF Llama config.json: a pre-norm
    GPT with RoPE, RMSNorm and SwiGLU (grouped-query when ``num_key_value_heads`` is fewer).

    Args:
        hf: the parsed HF config.json.
        path: the config's file, named in errors.
        head: the attnkit head, "none" or "lm".
        has_pooler: unused (Llama has no pooler); part of the common signature.

    Raises:
        CheckpointError: for a missing key or a setting attnkit cannot hold (an activation
            other than silu, differing attention and MLP biases, another head_dim, scaled
            RoPE).

    Examples:
        >>> config_from_hf(read_json(path), path, "lm", False).positional  # 'rope'
    """
    act = hf.get("hidden_act", "silu")
    if act != "silu":
        raise CheckpointError(
            f"{path}: hidden_act={act!r} is not supported; expected 'silu' (SwiGLU)"
        )
    attention_bias, mlp_bias = hf.get("attention_bias", False), hf.get("mlp_bias", False)
    if attention_bias != mlp_bias:
        raise CheckpointError(
            f"{path}: attention_bias={attention_bias!r} with mlp_bias={mlp_bias!r} is not "
            "supported; expected both true or both false (attnkit has one config.bias)"
        )
    d_model = config_value(hf, "hidden_size", path)
    n_heads = config_value(hf, "num_attention_heads", path)
    head_dim = hf.get("head_dim")
    if head_dim is not None and isinstance(d_model, int) and isinstance(n_heads, int):
        if n_heads <= 0 or head_dim * n_heads != d_model:
            raise CheckpointError(
                f"{path}: head_dim={head_dim!r} is not supported; expected hidden_size / "
                f"num_attention_heads = {d_model} / {n_heads}"
            )
    return ModelConfig(
        arch="gpt",
        vocab_size=config_value(hf, "vocab_size", path),
        n_layer=config_value(hf, "num_hidden_layers", path),
        n_heads=n_heads,
        n_kv_heads=hf.get("num_key_value_heads") or n_heads,
        d_model=d_model,
        d_ff=config_value(hf, "intermediate_size", path),
        max_seq_len=config_value(hf, "max_position_embeddings", path, 2048),
        positional="rope",
        rope_base=_rope_theta(hf, path),
        norm="rmsnorm",
        norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        norm_placement="pre",
        mlp="swiglu",
        bias=bool(attention_bias),
        dropout=0.0,
        attn_dropout=float(hf.get("attention_dropout", 0.0)),
        head=head,
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        pad_token_id=hf.get("pad_token_id"),
        initializer_range=float(hf.get("initializer_range", 0.02)),
    )


def config_to_hf(cfg: ModelConfig) -> dict[str, Any]:
    """The HF Llama config.json (a dict) of an exportable attnkit GPT config (RoPE, RMSNorm,
    SwiGLU), with the RoPE base under both the new and the old key.

    Args:
        cfg: the model's config, of a layout Llama holds
            (:func:`~attnkit.checkpoints.hf.exportable.choose`).

    Examples:
        >>> config_to_hf(get_preset("tiny-llama"))["architectures"]  # ['LlamaForCausalLM']
    """
    return {
        "model_type": "llama",
        "architectures": [KEYMAP.hf_class[cfg.head]],
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.d_ff,
        "num_hidden_layers": cfg.n_layer,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_seq_len,
        "rms_norm_eps": cfg.norm_eps,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_base},
        "rope_theta": cfg.rope_base,  # the key transformers < 5 reads
        "attention_bias": cfg.bias,
        "mlp_bias": cfg.bias,
        "attention_dropout": cfg.attn_dropout,
        "initializer_range": cfg.initializer_range,
        "tie_word_embeddings": cfg.tie_embeddings,
        "pad_token_id": cfg.pad_token_id,
        "bos_token_id": None,
        "eos_token_id": None,
    }


ARCHITECTURE = Architecture(
    model_type="llama",
    arch="gpt",
    keymap=KEYMAP,
    config_from_hf=config_from_hf,
    config_to_hf=config_to_hf,
    exportable=dict(
        arch="gpt",
        positional="rope",
        norm="rmsnorm",
        norm_placement="pre",
        mlp="swiglu",
        embed_norm=False,
        final_norm=True,
        attention="exact",
        window=None,
        type_vocab_size=0,
    ),
    name="Llama",
    grouped_kv=True,
)
