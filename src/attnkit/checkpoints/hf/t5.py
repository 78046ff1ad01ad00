"""T5 (HF ``model_type`` "t5", T5ForConditionalGeneration): key map and config translation.

T5 is pre-norm with RMSNorm (``T5LayerNorm``), a final norm per stack, no biases, unscaled
attention scores and a bucketed relative position bias, one table per stack kept in its first
layer (``block.0...relative_attention_bias``) and shared by every layer: attnkit keeps it once
per stack (``encoder.rel_bias``, ``decoder.rel_bias``). The decoder output is scaled by
d_model^-0.5 before the tied LM head (``scale_decoder_outputs``). A config with
``tie_word_embeddings: false`` (T5 v1.1) converts to a separate LM head read from
``lm_head.weight`` and no output scaling. Gated MLPs (v1.1's ``gated-gelu``) are not supported.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from attnkit.checkpoints.format import CheckpointError
from attnkit.checkpoints.hf.keymap import Rule, config_value
from attnkit.checkpoints.hf.seq2seq import (
    Seq2SeqArchitecture,
    Seq2SeqKeyMap,
    activation,
    activation_to_hf,
)
from attnkit.models.encdec_config import EncDecConfig

_E = "encoder.block.{i}.layer"
_D = "decoder.block.{i}.layer"


def _qkv(base: str) -> tuple[str, ...]:
    return tuple(f"{base}.{p}.weight" for p in ("q", "k", "v"))


ENCODER_LAYER = (
    Rule(_qkv(f"{_E}.0.SelfAttention"), "encoder.blocks.{i}.attn.qkv_proj.weight"),
    Rule(f"{_E}.0.SelfAttention.o.weight", "encoder.blocks.{i}.attn.out_proj.weight"),
    Rule(f"{_E}.0.layer_norm.weight", "encoder.blocks.{i}.norm1.weight"),
    Rule(f"{_E}.1.DenseReluDense.wi.weight", "encoder.blocks.{i}.mlp.up.weight"),
    Rule(f"{_E}.1.DenseReluDense.wo.weight", "encoder.blocks.{i}.mlp.down.weight"),
    Rule(f"{_E}.1.layer_norm.weight", "encoder.blocks.{i}.norm2.weight"),
)

DECODER_LAYER = (
    Rule(_qkv(f"{_D}.0.SelfAttention"), "decoder.blocks.{i}.self_attn.qkv_proj.weight"),
    Rule(f"{_D}.0.SelfAttention.o.weight", "decoder.blocks.{i}.self_attn.out_proj.weight"),
    Rule(f"{_D}.0.layer_norm.weight", "decoder.blocks.{i}.norm1.weight"),
    Rule(f"{_D}.1.EncDecAttention.q.weight", "decoder.blocks.{i}.cross_attn.q_proj.weight"),
    Rule(
        tuple(f"{_D}.1.EncDecAttention.{p}.weight" for p in ("k", "v")),
        "decoder.blocks.{i}.cross_attn.kv_proj.weight",
    ),
    Rule(f"{_D}.1.EncDecAttention.o.weight", "decoder.blocks.{i}.cross_attn.out_proj.weight"),
    Rule(f"{_D}.1.layer_norm.weight", "decoder.blocks.{i}.norm2.weight"),
    Rule(f"{_D}.2.DenseReluDense.wi.weight", "decoder.blocks.{i}.mlp.up.weight"),
    Rule(f"{_D}.2.DenseReluDense.wo.weight", "decoder.blocks.{i}.mlp.down.weight"),
    Rule(f"{_D}.2.layer_norm.weight", "decoder.blocks.{i}.norm3.weight"),
)

_BIAS = "block.0.layer.0.SelfAttention.relative_attention_bias.weight"

KEYMAP = Seq2SeqKeyMap(
    model=(
        Rule("shared.weight", "encoder.embed.tok.weight"),
        Rule("decoder.embed_tokens.weight", "decoder.embed.tok.weight"),
        Rule("lm_head.weight", "lm_head.proj.weight"),
        Rule(f"encoder.{_BIAS}", "encoder.rel_bias.weight"),
        Rule(f"decoder.{_BIAS}", "decoder.rel_bias.weight"),
        Rule("encoder.final_layer_norm.weight", "encoder.norm.weight"),
        Rule("decoder.final_layer_norm.weight", "decoder.norm.weight"),
    ),
    encoder_layer=ENCODER_LAYER,
    decoder_layer=DECODER_LAYER,
    ignore=(r"encoder\.embed_tokens\.weight",),
    hf_class="T5ForConditionalGeneration",
    copies=(("encoder.embed_tokens.weight", "shared.weight"),),
)


def config_from_hf(hf: Mapping[str, Any], path: Path) -> EncDecConfig:
    """The :class:`~attnkit.models.encdec_config.EncDecConfig` of an HF T5 config.json:
    pre-norm RMSNorm, no biases, unscaled scores and a relative position bias; untied
    embeddings (T5 v1.1) give a separate LM head and no output scaling.

    Args:
        hf: the parsed HF config.json.
        path: the config's file, named in errors.

    Raises:
        CheckpointError: for a missing key, a gated MLP or an unknown activation.

    Examples:
        >>> config_from_hf(read_json(path), path).positional  # 'relative'
    """
    proj = config_value(hf, "feed_forward_proj", path, "relu")
    if not isinstance(proj, str) or proj.startswith("gated-"):
        raise CheckpointError(
            f"{path}: feed_forward_proj={proj!r} is not supported; expected an ungated "
            f"activation such as 'relu'"
        )
    tie = bool(hf.get("tie_word_embeddings", True))
    return EncDecConfig(
        vocab_size=config_value(hf, "vocab_size", path),
        n_encoder_layers=config_value(hf, "num_layers", path),
        n_decoder_layers=hf.get("num_decoder_layers") or config_value(hf, "num_layers", path),
        d_model=config_value(hf, "d_model", path),
        n_heads=config_value(hf, "num_heads", path),
        head_dim=config_value(hf, "d_kv", path),
        d_ff=config_value(hf, "d_ff", path),
        max_seq_len=int(hf.get("n_positions", 512)),
        positional="relative",
        relative_buckets=config_value(hf, "relative_attention_num_buckets", path, 32),
        relative_max_distance=config_value(hf, "relative_attention_max_distance", path, 128),
        norm="rmsnorm",
        norm_eps=float(hf.get("layer_norm_epsilon", 1e-6)),
        norm_placement="pre",
        final_norm=True,
        mlp=activation(proj, "feed_forward_proj", path),
        bias=False,
        scale_attention=False,
        scale_embedding=False,
        share_embeddings=True,
        tie_embeddings=tie,
        logits_bias=False,
        scale_decoder_output=bool(hf.get("scale_decoder_outputs", tie)),
        dropout=float(hf.get("dropout_rate", 0.1)),
        attn_dropout=float(hf.get("dropout_rate", 0.1)),
        pad_token_id=config_value(hf, "pad_token_id", path, 0),
        eos_token_id=config_value(hf, "eos_token_id", path, 1),
        decoder_start_token_id=hf.get("decoder_start_token_id", hf.get("pad_token_id", 0)),
    )


def config_to_hf(cfg: EncDecConfig) -> dict[str, Any]:
    """The HF T5 config.json (a dict) of an exportable attnkit encoder-decoder config.

    Args:
        cfg: the encoder-decoder's config, of T5's layout.

    Raises:
        ValueError: if ``dropout`` and ``attn_dropout`` differ (HF T5 has one dropout_rate),
            or for an ``mlp`` HF has no name for.

    Examples:
        >>> config_to_hf(get_encdec_preset("tiny-t5"))["model_type"]  # 't5'
    """
    if cfg.dropout != cfg.attn_dropout:
        raise ValueError(
            f"HF T5 has one dropout_rate; expected dropout == attn_dropout, got "
            f"{cfg.dropout} and {cfg.attn_dropout}"
        )
    return {
        "model_type": "t5",
        "architectures": [KEYMAP.hf_class],
        "is_encoder_decoder": True,
        "vocab_size": cfg.vocab_size,
        "d_model": cfg.d_model,
        "d_kv": cfg.head_dim,
        "d_ff": cfg.d_ff,
        "num_layers": cfg.n_encoder_layers,
        "num_decoder_layers": cfg.n_decoder_layers,
        "num_heads": cfg.n_heads,
        "n_positions": cfg.max_seq_len,
        "relative_attention_num_buckets": cfg.relative_buckets,
        "relative_attention_max_distance": cfg.relative_max_distance,
        "layer_norm_epsilon": cfg.norm_eps,
        "feed_forward_proj": activation_to_hf(cfg.mlp, "t5"),
        "dropout_rate": cfg.dropout,
        "tie_word_embeddings": cfg.tie_embeddings,
        "pad_token_id": cfg.pad_token_id,
        "eos_token_id": cfg.eos_token_id,
        "decoder_start_token_id": cfg.decoder_start_token_id,
    }


ARCHITECTURE = Seq2SeqArchitecture(
    model_type="t5",
    keymap=KEYMAP,
    config_from_hf=config_from_hf,
    config_to_hf=config_to_hf,
    exportable=dict(
        positional="relative",
        norm="rmsnorm",
        norm_placement="pre",
        embed_norm=False,
        final_norm=True,
        bias=False,
        scale_attention=False,
        scale_embedding=False,
        share_embeddings=True,
        tie_embeddings=True,
        logits_bias=False,
        scale_decoder_output=True,
        encoder_attention="exact",
    ),
)
