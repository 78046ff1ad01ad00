"""GPT-2 (HF ``model_type`` "gpt2"): key map and config translation.

Covers GPT2Model and GPT2LMHeadModel. GPT-2's ``Conv1D`` weights are (in, out): every linear
is transposed on the way in and out.

Every GPT-2 linear and LayerNorm has a bias. A bias-free attnkit GPT (``bias=False``, the
shipped character configs) is exported with zero biases, which computes the same function,
and ``"bias": false`` in config.json says so: reading such a directory back gives a bias-free
model again (and refuses one whose biases are not all zero).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from attnkit.checkpoints.format import CheckpointError
from attnkit.checkpoints.hf.keymap import (
    ACTIVATIONS_TO_HF,
    Architecture,
    KeyMap,
    Rule,
    activation,
    config_value,
    linear_rules,
    norm_rules,
)
from attnkit.models.config import ModelConfig

_H = "h.{i}"

KEYMAP = KeyMap(
    model=(
        Rule("wte.weight", "embed.tok.weight"),
        Rule("wpe.weight", "embed.pos.weight"),
        *norm_rules("ln_f", "norm"),
    ),
    layer=(
        *norm_rules(f"{_H}.ln_1", "blocks.{i}.norm1"),
        *linear_rules(f"{_H}.attn.c_attn", "blocks.{i}.attn.qkv_proj", transpose=True),
        *linear_rules(f"{_H}.attn.c_proj", "blocks.{i}.attn.out_proj", transpose=True),
        *norm_rules(f"{_H}.ln_2", "blocks.{i}.norm2"),
        *linear_rules(f"{_H}.mlp.c_fc", "blocks.{i}.mlp.up", transpose=True),
        *linear_rules(f"{_H}.mlp.c_proj", "blocks.{i}.mlp.down", transpose=True),
    ),
    heads={"lm": (Rule("lm_head.weight", "lm_head.proj.weight"),)},
    ignore=(r"h\.\d+\.attn\.(bias|masked_bias)",),
    prefix="transformer.",
    hf_class={"none": "GPT2Model", "lm": "GPT2LMHeadModel"},
)


def config_from_hf(hf: Mapping[str, Any], path: Path, head: str, has_pooler: bool) -> ModelConfig:
    """The :class:`~attnkit.models.config.ModelConfig` of an HF GPT-2 config.json: a pre-norm
    GPT with learned positions (``"bias": false`` gives a bias-free model).

    Args:
        hf: the parsed HF config.json.
        path: the config's file, named in errors.
        head: the attnkit head, "none" or "lm".
        has_pooler: unused (GPT-2 has no pooler); part of the common signature.

    Raises:
        CheckpointError: for a missing key or a setting attnkit cannot hold (scaled or
            reordered attention, a non-bool ``bias``, an unknown activation).

    Examples:
        >>> config_from_hf(read_json(path), path, "lm", False).positional  # 'learned'
    """
    for key in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn"):
        if hf.get(key):
            raise CheckpointError(f"{path}: {key}=True is not supported; expected False")
    if hf.get("scale_attn_weights", True) is False:
        raise CheckpointError(f"{path}: scale_attn_weights=False is not supported; expected True")
    bias = hf.get("bias", True)
    if not isinstance(bias, bool):
        raise CheckpointError(f"{path}: bias={bias!r} is not supported; expected true or false")
    return ModelConfig(
        arch="gpt",
        vocab_size=config_value(hf, "vocab_size", path),
        n_layer=config_value(hf, "n_layer", path),
        n_heads=config_value(hf, "n_head", path),
        d_model=config_value(hf, "n_embd", path),
        d_ff=config_value(hf, "n_inner", path, None),  # None: 4 * n_embd
        max_seq_len=config_value(hf, "n_positions", path),
        positional="learned",
        norm="layernorm",
        norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)),
        norm_placement="pre",
        mlp=activation(hf.get("activation_function", "gelu_new"), "activation_function", path),
        bias=bias,
        dropout=float(hf.get("resid_pdrop", 0.1)),
        attn_dropout=float(hf.get("attn_pdrop", 0.1)),
        head=head,
        tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
        initializer_range=float(hf.get("initializer_range", 0.02)),
    )


def config_to_hf(cfg: ModelConfig) -> dict[str, Any]:
    """The HF GPT-2 config.json (a dict) of an exportable attnkit GPT config.

    Args:
        cfg: the model's config, of a layout GPT-2 holds
            (:func:`~attnkit.checkpoints.hf.exportable.choose`).

    Examples:
        >>> config_to_hf(get_preset("tiny"))["architectures"]  # ['GPT2LMHeadModel']
    """
    return {
        "model_type": "gpt2",
        "architectures": [KEYMAP.hf_class[cfg.head]],
        "vocab_size": cfg.vocab_size,
        "n_embd": cfg.d_model,
        "n_layer": cfg.n_layer,
        "n_head": cfg.n_heads,
        "n_inner": cfg.d_ff,
        "n_positions": cfg.max_seq_len,
        "activation_function": ACTIVATIONS_TO_HF[cfg.mlp],
        "layer_norm_epsilon": cfg.norm_eps,
        "resid_pdrop": cfg.dropout,
        "embd_pdrop": cfg.dropout,
        "attn_pdrop": cfg.attn_dropout,
        "initializer_range": cfg.initializer_range,
        "tie_word_embeddings": cfg.tie_embeddings,
        **({} if cfg.bias else {"bias": False}),  # zero biases in the file (module docstring)
        # GPT2Config's default <|endoftext|> id, where the vocabulary has one that far
        **({} if cfg.vocab_size > 50256 else {"bos_token_id": None, "eos_token_id": None}),
    }


ARCHITECTURE = Architecture(
    model_type="gpt2",
    arch="gpt",
    keymap=KEYMAP,
    config_from_hf=config_from_hf,
    config_to_hf=config_to_hf,
    exportable=dict(
        arch="gpt",
        positional="learned",
        norm="layernorm",
        norm_placement="pre",
        embed_norm=False,
        final_norm=True,
        mlp=("gelu_tanh", "gelu", "relu"),  # those of ACTIVATIONS_TO_HF, its own first
        attention="exact",
        window=None,
        type_vocab_size=0,
    ),
    name="GPT-2",
    zero_bias=True,
)
