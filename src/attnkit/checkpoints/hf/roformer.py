"""RoFormer (HF ``model_type`` "roformer"): the HF form of a BERT with rotary positions.

Covers RoFormerModel and RoFormerForMaskedLM: BERT's post-norm encoder, embeddings (words and
token types, then a LayerNorm) and masked-LM head, with no position embedding; every layer
rotates its queries and keys by RoPE (base 10000, the whole head). That is the HF form of every
attnkit BERT with ``positional="rope"`` and ``rope_base=10000``.

* **RoPE convention.** RoFormer rotates channel pairs (0, 1), (2, 3), ... of each head (the
  "interleaved" layout); attnkit pairs channel i with i + D/2 (the "half" layout, as Llama).
  Attention scores are dot products of a query and a key, which a permutation of the channels
  applied to both leaves unchanged, so the q and k rows of each head are permuted on the way
  (attnkit row i -> RoFormer row 2i, row i + D/2 -> 2i + 1) and back; values are not rotated
  (``rotary_value`` must be false).
* **Positions table.** RoFormer keeps its sin/cos table as a frozen weight,
  ``roformer.encoder.embed_positions.weight`` (max_position_embeddings, head_dim); it is
  written on export (computed as RoFormer computes it) and not read on import.
* Heads: none and mlm. RoFormer's sequence classifier (dense and activation on the first
  token, no pooler) is not BERT's, so a classification model has no RoFormer form.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from attnkit.checkpoints.format import CheckpointError
from attnkit.checkpoints.hf import bert
from attnkit.checkpoints.hf.keymap import (
    Architecture,
    KeyMap,
    config_value,
)
from attnkit.models.config import ModelConfig

__all__ = ["ARCHITECTURE", "KEYMAP", "config_from_hf", "config_to_hf", "positions_table"]

KEYMAP = KeyMap(
    model=tuple(r for r in bert.KEYMAP.model if r.ours != "embed.pos.weight"),
    layer=bert.KEYMAP.layer,
    heads={"mlm": bert.KEYMAP.heads["mlm"]},
    ignore=(r"encoder\.embed_positions\.weight", r"cls\.predictions\.decoder\.bias"),
    prefix="roformer.",
    hf_class={"none": "RoFormerModel", "mlm": "RoFormerForMaskedLM"},
)


def config_from_hf(hf: Mapping[str, Any], path: Path, head: str, has_pooler: bool) -> ModelConfig:
    """The :class:`~attnkit.models.config.ModelConfig` of an HF RoFormer config.json: a
    post-norm BERT with rotary positions (base 10000) and no position embedding.

    Args:
        hf: the parsed HF config.json.
        path: the config's file, named in errors.
        head: the attnkit head, "none" or "mlm".
        has_pooler: unused (RoFormer has no pooler); kept for the common signature.

    Raises:
        CheckpointError: for a missing key, ``rotary_value`` true, an ``embedding_size``
            other than ``hidden_size``, a decoder config or an unknown activation.

    Examples:
        >>> config_from_hf(read_json(path), path, "mlm", False).positional  # 'rope'
    """
    hidden = config_value(hf, "hidden_size", path)
    for key, want in (("rotary_value", False), ("is_decoder", False)):
        if bool(hf.get(key, False)) != want:
            raise CheckpointError(
                f"{path}: {key}={hf.get(key)!r} is not supported; expected {want}"
            )
    emb = hf.get("embedding_size") or hidden
    if emb != hidden:
        raise CheckpointError(
            f"{path}: embedding_size={emb!r} is not supported; expected hidden_size={hidden}"
        )
    return ModelConfig(
        **bert.encoder_fields(hf, path),
        positional="rope",
        rope_base=10000.0,
        max_seq_len=config_value(hf, "max_position_embeddings", path),
        head=head,
        pooler=False,
    )


def config_to_hf(cfg: ModelConfig) -> dict[str, Any]:
    """The HF RoFormer config.json (a dict) of an exportable attnkit BERT config with RoPE.

    Args:
        cfg: the model's config, of a layout RoFormer holds
            (:func:`~attnkit.checkpoints.hf.exportable.choose`).

    Examples:
        >>> config_to_hf(cfg.replace(positional="rope"))["architectures"]  # ['RoFormerModel']
    """
    return {
        "model_type": "roformer",
        "architectures": [KEYMAP.hf_class[cfg.head]],
        **bert.encoder_hf_fields(cfg),
        "embedding_size": cfg.d_model,
        "rotary_value": False,
    }


def positions_table(cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """RoFormer's frozen sin/cos table, (max_seq_len, head_dim) float32: sin of position x
    frequency in the first half of each row, cos in the second, frequency i = 10000^(-2i/D).

    Args:
        cfg: the model's config.

    Returns:
        ``{"encoder.embed_positions.weight": table}`` (a backbone name, before the prefix).

    Examples:
        >>> positions_table(cfg)["encoder.embed_positions.weight"].shape  # (512, 64)
    """
    d = cfg.head_dim
    inv = torch.tensor([math.pow(10000.0, -2 * i / d) for i in range(d // 2)], dtype=torch.float64)
    angles = torch.arange(cfg.max_seq_len, dtype=torch.float64)[:, None] * inv[None, :]
    table = torch.cat((angles.sin(), angles.cos()), dim=1).float()  # (max_seq_len, D)
    return {"encoder.embed_positions.weight": table}


ARCHITECTURE = Architecture(
    model_type="roformer",
    arch="bert",
    keymap=KEYMAP,
    config_from_hf=config_from_hf,
    config_to_hf=config_to_hf,
    exportable=dict(
        arch="bert",
        positional="rope",
        rope_base=10000.0,
        norm="layernorm",
        norm_placement="post",
        embed_norm=True,
        final_norm=False,
        bias=True,
        attention="exact",
        window=None,
        pooler=False,
        head=("none", "mlm"),
    ),
    name="RoFormer",
    interleaved_rope=True,
    extra_tensors=positions_table,
)
