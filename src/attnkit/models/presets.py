"""Named model sizes: one function per preset, each returning a :class:`ModelConfig`.

>>> cfg = get_preset("gpt2")                      # the 124M GPT-2 layout
>>> cfg = get_preset("tiny", n_layer=4)           # overrides are validated like any config
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from attnkit.models.config import DERIVED, ModelConfig


def _gpt2(n_layer: int, n_heads: int, d_model: int) -> ModelConfig:
    return ModelConfig(
        arch="gpt",
        vocab_size=50257,
        n_layer=n_layer,
        n_heads=n_heads,
        d_model=d_model,
        max_seq_len=1024,
        positional="learned",
        norm="layernorm",
        norm_eps=1e-5,
        norm_placement="pre",
        mlp="gelu_tanh",
        head="lm",
        tie_embeddings=True,
        dropout=0.1,
        attn_dropout=0.1,
    )


def _bert(n_layer: int, n_heads: int, d_model: int, d_ff: int = DERIVED) -> ModelConfig:
    return ModelConfig(
        arch="bert",
        vocab_size=30522,
        n_layer=n_layer,
        n_heads=n_heads,
        d_model=d_model,
        d_ff=d_ff,
        max_seq_len=512,
        positional="learned",
        norm="layernorm",
        norm_eps=1e-12,
        norm_placement="post",
        mlp="gelu",
        head="none",
        type_vocab_size=2,
        embed_norm=True,
        final_norm=False,
        pooler=True,
        pad_token_id=0,
        tie_embeddings=True,
        dropout=0.1,
        attn_dropout=0.1,
    )


PRESETS: dict[str, Callable[[], ModelConfig]] = {
    # a few-thousand-parameter decoder for tests and demos
    "tiny": lambda: ModelConfig(
        arch="gpt", vocab_size=256, n_layer=2, n_heads=4, d_model=64, max_seq_len=256
    ),
    # the same size with the modern recipe: RoPE, RMSNorm, SwiGLU, grouped-query attention
    "tiny-llama": lambda: ModelConfig(
        arch="gpt",
        vocab_size=256,
        n_layer=2,
        n_heads=4,
        n_kv_heads=2,
        d_model=64,
        d_ff=172,
        max_seq_len=256,
        positional="rope",
        norm="rmsnorm",
        norm_eps=1e-6,
        mlp="swiglu",
        bias=False,
        tie_embeddings=False,
    ),
    "tiny-bert": lambda: _bert(2, 4, 64).replace(
        vocab_size=512, max_seq_len=128, dropout=0.0, attn_dropout=0.0
    ),
    "gpt2": lambda: _gpt2(12, 12, 768),
    "gpt2-medium": lambda: _gpt2(24, 16, 1024),
    "gpt2-large": lambda: _gpt2(36, 20, 1280),
    "bert-base": lambda: _bert(12, 12, 768),
    "bert-large": lambda: _bert(24, 16, 1024),
    "bert-mini": lambda: _bert(4, 4, 256),
    "bert-tiny": lambda: _bert(2, 2, 128),
    # sentence-transformers/all-MiniLM-L6-v2: BERT layout, 6 x 384, mean pooling
    "minilm-l6": lambda: _bert(6, 12, 384, d_ff=1536).replace(pooling="mean"),
}


def preset_names() -> list[str]:
    """The names :func:`get_preset` accepts, sorted.

    Examples:
        >>> "tiny" in preset_names()
    """
    return sorted(PRESETS)


def get_preset(name: str, **overrides: Any) -> ModelConfig:
    """The config called ``name``, with ``overrides`` applied (and validated).

    Examples:
        >>> get_preset("tiny-bert", n_layer=2).n_layer
    """
    try:
        make = PRESETS[name]
    except (KeyError, TypeError):
        from attnkit.models.encdec_config import ENCDEC_PRESETS

        if isinstance(name, str) and name in ENCDEC_PRESETS:
            raise ValueError(
                f"model preset {name!r} is an encoder-decoder; expected one of "
                f"{preset_names()} here, or get_encdec_preset({name!r}) / build_model({name!r})"
            ) from None
        raise ValueError(
            f"unknown model preset {name!r}; expected one of {preset_names()}"
        ) from None
    cfg = make()
    return cfg.replace(**overrides) if overrides else cfg
