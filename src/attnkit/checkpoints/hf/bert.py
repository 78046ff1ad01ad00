"""BERT (HF ``model_type`` "bert"): key map and config translation.

Covers BertModel, BertForMaskedLM, BertForSequenceClassification and sentence-transformers
BERT models. BERT's separate query/key/value linears stack into attnkit's fused ``qkv_proj``.
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

_L = "encoder.layer.{i}"
_QKV = tuple(f"{_L}.attention.self.{p}" for p in ("query", "key", "value"))

KEYMAP = KeyMap(
    model=(
        Rule("embeddings.word_embeddings.weight", "embed.tok.weight"),
        Rule("embeddings.position_embeddings.weight", "embed.pos.weight"),
        Rule("embeddings.token_type_embeddings.weight", "embed.types.weight"),
        *norm_rules("embeddings.LayerNorm", "embed.norm"),
    ),
    layer=(
        Rule(tuple(f"{p}.weight" for p in _QKV), "blocks.{i}.attn.qkv_proj.weight"),
        Rule(tuple(f"{p}.bias" for p in _QKV), "blocks.{i}.attn.qkv_proj.bias"),
        *linear_rules(f"{_L}.attention.output.dense", "blocks.{i}.attn.out_proj"),
        *norm_rules(f"{_L}.attention.output.LayerNorm", "blocks.{i}.norm1"),
        *linear_rules(f"{_L}.intermediate.dense", "blocks.{i}.mlp.up"),
        *linear_rules(f"{_L}.output.dense", "blocks.{i}.mlp.down"),
        *norm_rules(f"{_L}.output.LayerNorm", "blocks.{i}.norm2"),
    ),
    heads={
        "pooler": linear_rules("pooler.dense", "pooler.dense"),
        "mlm": (
            *linear_rules("cls.predictions.transform.dense", "mlm.dense"),
            *norm_rules("cls.predictions.transform.LayerNorm", "mlm.norm"),
            Rule("cls.predictions.bias", "mlm.bias"),
            Rule("cls.predictions.decoder.weight", "mlm.decoder.weight"),
        ),
        "classification": linear_rules("classifier", "classifier.proj"),
    },
    ignore=(
        r"embeddings\.position_ids",
        r"cls\.predictions\.decoder\.bias",
        r"cls\.seq_relationship\..*",
    ),
    prefix="bert.",
    hf_class={
        "none": "BertModel",
        "mlm": "BertForMaskedLM",
        "classification": "BertForSequenceClassification",
    },
)


def id2label(hf: Mapping[str, Any], path: Path) -> tuple[str, ...] | None:
    """HF's ``id2label`` ({"0": "neg", ...}) as a tuple of names by class id; None without.

    Args:
        hf: the parsed HF config.json.
        path: the config's file, named in errors.

    Raises:
        CheckpointError: if the ids are not ints or not exactly 0..n-1.

    Examples:
        >>> id2label({"id2label": {"0": "neg", "1": "pos"}}, path)  # ('neg', 'pos')
    """
    raw = hf.get("id2label")
    if not isinstance(raw, dict):
        return None
    try:
        by_id = {int(k): str(v) for k, v in raw.items()}
    except (TypeError, ValueError):
        raise CheckpointError(
            f'{path}: id2label={raw!r} must map class ids ("0", "1", ...) to names'
        ) from None
    if sorted(by_id) != list(range(len(by_id))):
        raise CheckpointError(
            f"{path}: id2label has class ids {sorted(by_id)}; expected 0..{len(by_id) - 1}"
        )
    return tuple(by_id[i] for i in range(len(by_id)))


def config_from_hf(hf: Mapping[str, Any], path: Path, head: str, has_pooler: bool) -> ModelConfig:
    """The :class:`~attnkit.models.config.ModelConfig` of an HF BERT config.json: a post-norm
    encoder with learned absolute positions, token types and a LayerNorm on the embeddings.

    Args:
        hf: the parsed HF config.json.
        path: the config's file, named in errors.
        head: the attnkit head, "none", "mlm" or "classification" (which keeps the labels).
        has_pooler: whether the checkpoint holds a pooler (``config.pooler``).

    Raises:
        CheckpointError: for a missing key, a position embedding other than "absolute", an
            unknown activation or bad labels.

    Examples:
        >>> config_from_hf(read_json(path), path, "mlm", True).arch  # 'bert'
    """
    pet = hf.get("position_embedding_type", "absolute")
    if pet != "absolute":
        raise CheckpointError(
            f"{path}: position_embedding_type={pet!r} is not supported; expected 'absolute'"
        )
    labels = id2label(hf, path)
    return ModelConfig(
        **encoder_fields(hf, path),
        positional="learned",
        max_seq_len=config_value(hf, "max_position_embeddings", path),
        head=head,
        pooler=has_pooler,
        num_labels=len(labels) if labels is not None else hf.get("num_labels", 2),
        id2label=labels if head == "classification" else None,
    )


def encoder_fields(hf: Mapping[str, Any], path: Path) -> dict[str, Any]:
    """The ModelConfig fields every BERT-like HF config.json (BERT, RoFormer) gives alike:
    sizes, a post-LayerNorm encoder with a LayerNorm on the embeddings, activation, dropout,
    token types, padding id, tying and init scale (positions, heads and the pooler are each
    architecture's own).

    Args:
        hf: the parsed HF config.json.
        path: the config's file, named in errors.

    Raises:
        CheckpointError: for a missing key or an unknown activation.

    Examples:
        >>> encoder_fields(read_json(path), path)["norm_placement"]  # 'post'
    """
    return dict(
        arch="bert",
        vocab_size=config_value(hf, "vocab_size", path),
        n_layer=config_value(hf, "num_hidden_layers", path),
        n_heads=config_value(hf, "num_attention_heads", path),
        d_model=config_value(hf, "hidden_size", path),
        d_ff=config_value(hf, "intermediate_size", path),
        norm="layernorm",
        norm_eps=float(config_value(hf, "layer_norm_eps", path, 1e-12)),
        norm_placement="post",
        mlp=activation(config_value(hf, "hidden_act", path, "gelu"), "hidden_act", path),
        dropout=float(hf.get("hidden_dropout_prob", 0.1)),
        attn_dropout=float(hf.get("attention_probs_dropout_prob", 0.1)),
        type_vocab_size=config_value(hf, "type_vocab_size", path, 2),
        embed_norm=True,
        final_norm=False,
        pad_token_id=hf.get("pad_token_id", 0),
        tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
        initializer_range=float(hf.get("initializer_range", 0.02)),
    )


def config_to_hf(cfg: ModelConfig) -> dict[str, Any]:
    """The HF BERT config.json (a dict) of an exportable attnkit BERT config; a
    classification head also writes ``id2label`` and ``label2id`` (``LABEL_i`` names when the
    config has none).

    Args:
        cfg: the model's config, of a layout BERT holds
            (:func:`~attnkit.checkpoints.hf.exportable.choose`).

    Examples:
        >>> config_to_hf(get_preset("tiny-bert"))["architectures"]  # ['BertModel']
    """
    out: dict[str, Any] = {
        "model_type": "bert",
        "architectures": [KEYMAP.hf_class[cfg.head]],
        **encoder_hf_fields(cfg),
        "position_embedding_type": "absolute",
    }
    if cfg.head == "classification":
        names = cfg.id2label or tuple(f"LABEL_{i}" for i in range(cfg.num_labels))
        out["id2label"] = {str(i): name for i, name in enumerate(names)}
        out["label2id"] = {name: i for i, name in enumerate(names)}
    return out


def encoder_hf_fields(cfg: ModelConfig) -> dict[str, Any]:
    """The config.json keys every BERT-like HF config (BERT, RoFormer) writes alike for an
    attnkit BERT config: sizes, activation, eps, dropout, token types, padding, init, tying.

    Args:
        cfg: the model's config.

    Examples:
        >>> encoder_hf_fields(get_preset("tiny-bert"))["hidden_size"]  # 64
    """
    return {
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "num_hidden_layers": cfg.n_layer,
        "num_attention_heads": cfg.n_heads,
        "intermediate_size": cfg.d_ff,
        "hidden_act": ACTIVATIONS_TO_HF[cfg.mlp],
        "max_position_embeddings": cfg.max_seq_len,
        "type_vocab_size": cfg.type_vocab_size,
        "layer_norm_eps": cfg.norm_eps,
        "hidden_dropout_prob": cfg.dropout,
        "attention_probs_dropout_prob": cfg.attn_dropout,
        "pad_token_id": cfg.pad_token_id if cfg.pad_token_id is not None else 0,
        "initializer_range": cfg.initializer_range,
        "tie_word_embeddings": cfg.tie_embeddings,
    }


ARCHITECTURE = Architecture(
    model_type="bert",
    arch="bert",
    keymap=KEYMAP,
    config_from_hf=config_from_hf,
    config_to_hf=config_to_hf,
    exportable=dict(
        arch="bert",
        positional="learned",
        norm="layernorm",
        norm_placement="post",
        embed_norm=True,
        final_norm=False,
        bias=True,
        attention="exact",
        window=None,
    ),
    name="BERT",
)
