"""BART (HF ``model_type`` "bart", BartForConditionalGeneration): key map and config translation.

BART is post-norm with learned positions (offset by 2: HF's table has two rows before position
0), a LayerNorm after the embeddings, GELU and an output bias (``final_logits_bias``). Its
layer names are Marian's too (:mod:`~attnkit.checkpoints.hf.marian` reuses the layer rules).
The separate q/k/v projections stack into attnkit's fused ``qkv_proj`` (self-attention) and
k/v into ``kv_proj`` (cross-attention).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from attnkit.checkpoints.format import CheckpointError
from attnkit.checkpoints.hf.keymap import Rule, config_value, linear_rules, norm_rules
from attnkit.checkpoints.hf.seq2seq import (
    Seq2SeqArchitecture,
    Seq2SeqKeyMap,
    activation,
    activation_to_hf,
)
from attnkit.models.encdec_config import EncDecConfig

_E = "model.encoder.layers.{i}"
_D = "model.decoder.layers.{i}"


def _stacked(base: str, parts: tuple[str, ...], ours: str) -> tuple[Rule, Rule]:
    """Weights and biases of several HF linears stacked into one attnkit linear."""
    return (
        Rule(tuple(f"{base}.{p}.weight" for p in parts), f"{ours}.weight"),
        Rule(tuple(f"{base}.{p}.bias" for p in parts), f"{ours}.bias"),
    )


_QKV = ("q_proj", "k_proj", "v_proj")

ENCODER_LAYER = (
    *_stacked(f"{_E}.self_attn", _QKV, "encoder.blocks.{i}.attn.qkv_proj"),
    *linear_rules(f"{_E}.self_attn.out_proj", "encoder.blocks.{i}.attn.out_proj"),
    *norm_rules(f"{_E}.self_attn_layer_norm", "encoder.blocks.{i}.norm1"),
    *linear_rules(f"{_E}.fc1", "encoder.blocks.{i}.mlp.up"),
    *linear_rules(f"{_E}.fc2", "encoder.blocks.{i}.mlp.down"),
    *norm_rules(f"{_E}.final_layer_norm", "encoder.blocks.{i}.norm2"),
)

DECODER_LAYER = (
    *_stacked(f"{_D}.self_attn", _QKV, "decoder.blocks.{i}.self_attn.qkv_proj"),
    *linear_rules(f"{_D}.self_attn.out_proj", "decoder.blocks.{i}.self_attn.out_proj"),
    *norm_rules(f"{_D}.self_attn_layer_norm", "decoder.blocks.{i}.norm1"),
    *linear_rules(f"{_D}.encoder_attn.q_proj", "decoder.blocks.{i}.cross_attn.q_proj"),
    *_stacked(f"{_D}.encoder_attn", ("k_proj", "v_proj"), "decoder.blocks.{i}.cross_attn.kv_proj"),
    *linear_rules(f"{_D}.encoder_attn.out_proj", "decoder.blocks.{i}.cross_attn.out_proj"),
    *norm_rules(f"{_D}.encoder_attn_layer_norm", "decoder.blocks.{i}.norm2"),
    *linear_rules(f"{_D}.fc1", "decoder.blocks.{i}.mlp.up"),
    *linear_rules(f"{_D}.fc2", "decoder.blocks.{i}.mlp.down"),
    *norm_rules(f"{_D}.final_layer_norm", "decoder.blocks.{i}.norm3"),
)

# the token tables, the LM head and its bias (Marian's too)
EMBEDDINGS = (
    Rule("model.shared.weight", "encoder.embed.tok.weight"),
    Rule("model.decoder.embed_tokens.weight", "decoder.embed.tok.weight"),
    Rule("lm_head.weight", "lm_head.proj.weight"),
    Rule("final_logits_bias", "logits_bias"),
)

KEYMAP = Seq2SeqKeyMap(
    model=(
        *EMBEDDINGS,
        Rule("model.encoder.embed_positions.weight", "encoder.embed.pos.weight"),
        Rule("model.decoder.embed_positions.weight", "decoder.embed.pos.weight"),
        *norm_rules("model.encoder.layernorm_embedding", "encoder.embed.norm"),
        *norm_rules("model.decoder.layernorm_embedding", "decoder.embed.norm"),
    ),
    encoder_layer=ENCODER_LAYER,
    decoder_layer=DECODER_LAYER,
    ignore=(r"model\.encoder\.embed_tokens\.weight", r"model\.(en|de)coder\.version"),
    hf_class="BartForConditionalGeneration",
    copies=(("model.encoder.embed_tokens.weight", "model.shared.weight"),),
)


def same_sizes(hf: Mapping[str, Any], path: Path, pairs: tuple[tuple[str, str], ...]) -> None:
    """Encoder and decoder keys that attnkit needs equal (one width of heads and MLP).

    Args:
        hf: the parsed HF config.json.
        path: the config's file, named in errors.
        pairs: (encoder key, decoder key) pairs, each read with :func:`config_value`.

    Raises:
        CheckpointError: for a missing key or a pair that differs.

    Examples:
        >>> same_sizes({"encoder_ffn_dim": 64, "decoder_ffn_dim": 64}, path, PAIRS[1:])
    """
    for enc, dec in pairs:
        a, b = config_value(hf, enc, path), config_value(hf, dec, path)
        if a != b:
            raise CheckpointError(f"{path}: {enc}={a!r} and {dec}={b!r}; expected them equal")


PAIRS = (
    ("encoder_attention_heads", "decoder_attention_heads"),
    ("encoder_ffn_dim", "decoder_ffn_dim"),
)


def bart_like(hf: Mapping[str, Any], path: Path) -> dict[str, Any]:
    """The EncDecConfig fields BART and Marian read alike (everything but the positions and
    the embedding norm), as keyword arguments.

    Args:
        hf: the parsed HF config.json.
        path: the config's file, named in errors.

    Raises:
        CheckpointError: for a missing key, encoder and decoder sizes that differ, unshared
            embeddings or a decoder vocabulary of its own.

    Examples:
        >>> EncDecConfig(**bart_like(hf, path), positional="sinusoidal", embed_norm=False)
    """
    same_sizes(hf, path, PAIRS)
    if hf.get("share_encoder_decoder_embeddings", True) is False:
        raise CheckpointError(
            f"{path}: share_encoder_decoder_embeddings=False is not supported; expected True"
        )
    vocab = config_value(hf, "vocab_size", path)
    if hf.get("decoder_vocab_size", vocab) != vocab:
        raise CheckpointError(
            f"{path}: decoder_vocab_size={hf['decoder_vocab_size']!r} differs from "
            f"vocab_size={vocab!r}; expected one vocabulary"
        )
    pad = config_value(hf, "pad_token_id", path)
    return dict(
        vocab_size=vocab,
        n_encoder_layers=config_value(hf, "encoder_layers", path),
        n_decoder_layers=config_value(hf, "decoder_layers", path),
        d_model=config_value(hf, "d_model", path),
        n_heads=config_value(hf, "encoder_attention_heads", path),
        d_ff=config_value(hf, "encoder_ffn_dim", path),
        max_seq_len=config_value(hf, "max_position_embeddings", path),
        norm="layernorm",
        norm_eps=1e-5,
        norm_placement="post",
        mlp=activation(config_value(hf, "activation_function", path), "activation_function", path),
        bias=True,
        scale_embedding=bool(hf.get("scale_embedding", False)),
        share_embeddings=True,
        tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
        logits_bias=True,
        dropout=float(hf.get("dropout", 0.1)),
        attn_dropout=float(hf.get("attention_dropout", 0.0)),
        pad_token_id=pad,
        eos_token_id=config_value(hf, "eos_token_id", path),
        bos_token_id=hf.get("bos_token_id"),
        decoder_start_token_id=hf.get("decoder_start_token_id", pad),
        initializer_range=float(hf.get("init_std", 0.02)),
    )


def bart_like_to_hf(cfg: EncDecConfig, model_type: str, hf_class: str) -> dict[str, Any]:
    """The HF config.json keys BART and Marian write alike, for ``model_type``.

    Args:
        cfg: the encoder-decoder's config.
        model_type: the HF model_type, "bart" or "marian".
        hf_class: the HF class, put in ``architectures``.

    Raises:
        ValueError: for an ``mlp`` HF has no name for.

    Examples:
        >>> bart_like_to_hf(cfg, "bart", "BartForConditionalGeneration")["d_model"]
    """
    out: dict[str, Any] = {
        "model_type": model_type,
        "architectures": [hf_class],
        "is_encoder_decoder": True,
        "vocab_size": cfg.vocab_size,
        "d_model": cfg.d_model,
        "encoder_layers": cfg.n_encoder_layers,
        "decoder_layers": cfg.n_decoder_layers,
        "encoder_attention_heads": cfg.n_heads,
        "decoder_attention_heads": cfg.n_heads,
        "encoder_ffn_dim": cfg.d_ff,
        "decoder_ffn_dim": cfg.d_ff,
        "max_position_embeddings": cfg.max_seq_len,
        "activation_function": activation_to_hf(cfg.mlp, model_type),
        "scale_embedding": cfg.scale_embedding,
        "tie_word_embeddings": cfg.tie_embeddings,
        "dropout": cfg.dropout,
        "attention_dropout": cfg.attn_dropout,
        "activation_dropout": 0.0,
        "init_std": cfg.initializer_range,
        "pad_token_id": cfg.pad_token_id,
        "eos_token_id": cfg.eos_token_id,
        "decoder_start_token_id": cfg.decoder_start_token_id,
        "forced_eos_token_id": None,
    }
    if cfg.bos_token_id is not None:
        out["bos_token_id"] = cfg.bos_token_id
    return out


def config_from_hf(hf: Mapping[str, Any], path: Path) -> EncDecConfig:
    """The :class:`~attnkit.models.encdec_config.EncDecConfig` of an HF BART config.json:
    learned positions offset by 2 and a LayerNorm after the embeddings.

    Args:
        hf: the parsed HF config.json.
        path: the config's file, named in errors.

    Raises:
        CheckpointError: as :func:`bart_like`.

    Examples:
        >>> config_from_hf(read_json(path), path).position_offset  # 2
    """
    # keys of older BART configs that HF's BART no longer reads (normalize_before,
    # add_final_layer_norm, ...) are ignored here too: HF's BART is always this layout
    return EncDecConfig(
        **bart_like(hf, path), positional="learned", position_offset=2, embed_norm=True
    )


def config_to_hf(cfg: EncDecConfig) -> dict[str, Any]:
    """The HF BART config.json (a dict) of an exportable attnkit encoder-decoder config.

    Args:
        cfg: the encoder-decoder's config, of BART's layout.

    Examples:
        >>> config_to_hf(get_encdec_preset("tiny-bart"))["model_type"]  # 'bart'
    """
    return bart_like_to_hf(cfg, "bart", KEYMAP.hf_class)


EXPORTABLE: dict[str, Any] = dict(
    norm="layernorm",
    norm_eps=1e-5,
    norm_placement="post",
    final_norm=False,
    bias=True,
    scale_attention=True,
    share_embeddings=True,
    logits_bias=True,
    scale_decoder_output=False,
    encoder_attention="exact",
)

ARCHITECTURE = Seq2SeqArchitecture(
    model_type="bart",
    keymap=KEYMAP,
    config_from_hf=config_from_hf,
    config_to_hf=config_to_hf,
    exportable=dict(EXPORTABLE, positional="learned", position_offset=2, embed_norm=True),
)
