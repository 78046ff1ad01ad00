"""Marian (HF ``model_type`` "marian", MarianMTModel): key map and config translation.

Marian is BART's layout (the same layer names: :mod:`~attnkit.checkpoints.hf.bart`) with fixed
sinusoidal positions (sines in the first half of the channels, cosines in the second; HF keeps
the table in the state dict but computes it, so it is neither read nor written), no LayerNorm
after the embeddings, embeddings scaled by sqrt(d_model) in the opus-mt models and swish.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from attnkit.checkpoints.hf.bart import (
    DECODER_LAYER,
    EMBEDDINGS,
    ENCODER_LAYER,
    EXPORTABLE,
    bart_like,
    bart_like_to_hf,
)
from attnkit.checkpoints.hf.seq2seq import Seq2SeqArchitecture, Seq2SeqKeyMap
from attnkit.models.encdec_config import EncDecConfig

KEYMAP = Seq2SeqKeyMap(
    model=EMBEDDINGS,
    encoder_layer=ENCODER_LAYER,
    decoder_layer=DECODER_LAYER,
    ignore=(
        r"model\.encoder\.embed_tokens\.weight",
        r"model\.(en|de)coder\.embed_positions\.weight",  # the sinusoidal table
        r"model\.(en|de)coder\.version",
    ),
    hf_class="MarianMTModel",
    copies=(("model.encoder.embed_tokens.weight", "model.shared.weight"),),
)


def config_from_hf(hf: Mapping[str, Any], path: Path) -> EncDecConfig:
    """The :class:`~attnkit.models.encdec_config.EncDecConfig` of an HF Marian config.json:
    BART's fields with sinusoidal positions and no LayerNorm after the embeddings.

    Args:
        hf: the parsed HF config.json.
        path: the config's file, named in errors.

    Raises:
        CheckpointError: as :func:`~attnkit.checkpoints.hf.bart.bart_like`.

    Examples:
        >>> config_from_hf(read_json(path), path).positional  # 'sinusoidal'
    """
    return EncDecConfig(**bart_like(hf, path), positional="sinusoidal", embed_norm=False)


def config_to_hf(cfg: EncDecConfig) -> dict[str, Any]:
    """The HF Marian config.json (a dict) of an exportable attnkit encoder-decoder config, with
    one vocabulary shared by encoder and decoder.

    Args:
        cfg: the encoder-decoder's config, of Marian's layout.

    Examples:
        >>> config_to_hf(get_encdec_preset("tiny-marian"))["model_type"]  # 'marian'
    """
    out = bart_like_to_hf(cfg, "marian", KEYMAP.hf_class)
    out["decoder_vocab_size"] = cfg.vocab_size
    out["share_encoder_decoder_embeddings"] = True
    return out


ARCHITECTURE = Seq2SeqArchitecture(
    model_type="marian",
    keymap=KEYMAP,
    config_from_hf=config_from_hf,
    config_to_hf=config_to_hf,
    exportable=dict(EXPORTABLE, positional="sinusoidal", position_offset=0, embed_norm=False),
)
