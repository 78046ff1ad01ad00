"""EncDecConfig: every architectural choice of an encoder-decoder model, checked once; and its
presets.

An encoder-decoder (``arch="encdec"``) is the translation/summarisation layout: a bidirectional
encoder over the source, a causal decoder over the target that attends to the encoder's output
through cross-attention, and an LM head. The fields cover the original Transformer (Vaswani et
al. 2017), Marian, BART and T5:

* positions: ``"sinusoidal"`` (fixed; sines in the first half of the channels, cosines in the
  second, as Marian and tensor2tensor), ``"learned"`` (``position_offset`` is added to every
  position: BART's table has 2 extra rows it never uses), ``"relative"`` (T5's bucketed
  relative position bias, one table per stack, added to the attention scores) or ``"none"``;
* norms: ``norm`` (layernorm, rmsnorm) placed ``norm_placement`` "pre" or "post" the sublayer,
  ``embed_norm`` (BART's LayerNorm after the embeddings), ``final_norm`` (the last norm of each
  stack, for pre-norm models);
* ``mlp`` (relu, gelu, gelu_tanh, silu, relu2, swiglu), ``bias`` on every linear and norm;
* ``scale_attention`` (False: T5's unscaled scores), ``scale_embedding`` (token embeddings times
  sqrt(d_model)), ``share_embeddings`` (one token table for encoder and decoder),
  ``tie_embeddings`` (the LM head is the decoder's token table), ``logits_bias`` (a bias over
  the vocabulary, HF's ``final_logits_bias``), ``scale_decoder_output`` (T5: the decoder output
  times d_model^-0.5 before the LM head);
* ``encoder_attention``: "exact" or a variant from :mod:`attnkit.attention.variants` for the
  encoder's self-attention, with its keyword arguments in ``encoder_attention_params``;
* token ids: ``pad_token_id``, ``eos_token_id``, ``bos_token_id`` and ``decoder_start_token_id``
  (the first decoder input; labels are shifted right behind it).

A config is plain data (saved as ``config.json``) and frozen once checked; :meth:`replace`
returns a new, checked copy.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn

from attnkit._util import checks

__all__ = [
    "ENCDEC_PRESETS",
    "EncDecConfig",
    "encdec_preset_names",
    "get_encdec_preset",
]

ARCH = "encdec"
POSITIONALS = ("sinusoidal", "learned", "relative", "none")
NORMS = ("layernorm", "rmsnorm")
NORM_PLACEMENTS = ("pre", "post")
MLPS = ("gelu", "gelu_tanh", "relu", "relu2", "silu", "swiglu")

# a field derived from others when the config is checked (see ModelConfig)
DERIVED: Any = None


def _name(field_name: str) -> str:
    return f"EncDecConfig.{field_name}"


def _fail(field_name: str, value: Any, expected: str) -> NoReturn:
    checks.fail(_name(field_name), value, expected)


@dataclass(frozen=True)
class EncDecConfig:
    """Architecture of an encoder-decoder (see the module docstring for the fields).

    ``n_encoder_layers`` and ``n_decoder_layers`` blocks of width ``d_model`` with ``n_heads``
    heads of ``head_dim`` channels (None: d_model // n_heads; T5 sets it apart) and an MLP of
    ``d_ff`` (None: 4 * d_model). ``max_seq_len`` bounds the positions of absolute encodings.

    Every field is checked when the config is made; a bad value is a ValueError naming the
    field, the value and what was expected.

    Examples:
        >>> cfg = EncDecConfig(vocab_size=512, n_encoder_layers=2, n_decoder_layers=2, d_model=64)
        >>> cfg.head_dim, cfg.d_ff  # derived: d_model // n_heads, 4 * d_model
        (8, 256)
    """

    arch: str = ARCH
    vocab_size: int = 32000
    n_encoder_layers: int = 6
    n_decoder_layers: int = 6
    d_model: int = 512
    n_heads: int = 8
    head_dim: int = DERIVED  # None: d_model // n_heads
    d_ff: int = DERIVED  # None: 4 * d_model
    max_seq_len: int = 512
    positional: str = "sinusoidal"
    position_offset: int = 0
    relative_buckets: int = 32
    relative_max_distance: int = 128
    norm: str = "layernorm"
    norm_eps: float = 1e-5
    norm_placement: str = "post"
    embed_norm: bool = False
    final_norm: bool = False
    mlp: str = "relu"
    bias: bool = True
    scale_attention: bool = True
    scale_embedding: bool = False
    share_embeddings: bool = True
    tie_embeddings: bool = True
    logits_bias: bool = False
    scale_decoder_output: bool = False
    dropout: float = 0.0
    attn_dropout: float = 0.0
    encoder_attention: str = "exact"
    encoder_attention_params: dict = field(default_factory=dict)
    backend: str = "auto"
    pad_token_id: int = 0
    eos_token_id: int = 1
    bos_token_id: int | None = None
    decoder_start_token_id: int = 0
    initializer_range: float = 0.02

    def __post_init__(self) -> None:
        checks.choice(_name("arch"), self.arch, (ARCH,))
        for name in (
            "vocab_size",
            "n_encoder_layers",
            "n_decoder_layers",
            "d_model",
            "n_heads",
            "max_seq_len",
            "relative_buckets",
            "relative_max_distance",
        ):
            checks.positive_int(_name(name), getattr(self, name))
        if self.head_dim is None:
            if self.d_model % self.n_heads:
                _fail("d_model", self.d_model, f"a multiple of n_heads={self.n_heads}")
            object.__setattr__(self, "head_dim", self.d_model // self.n_heads)
        checks.positive_int(_name("head_dim"), self.head_dim)
        if self.d_ff is None:
            object.__setattr__(self, "d_ff", 4 * self.d_model)
        checks.positive_int(_name("d_ff"), self.d_ff)
        checks.choice(_name("positional"), self.positional, POSITIONALS)
        checks.non_negative_int(_name("position_offset"), self.position_offset)
        if self.position_offset and self.positional != "learned":
            _fail("position_offset", self.position_offset, "0 unless positional='learned'")
        if self.positional == "relative":
            # each direction's buckets start with at least one exact distance, and the
            # logarithmic ones reach beyond the exact ones (decoder: buckets // 2 exact)
            if self.relative_buckets < 4:
                _fail("relative_buckets", self.relative_buckets, "an int >= 4")
            if self.relative_max_distance <= self.relative_buckets // 2:
                _fail(
                    "relative_max_distance",
                    self.relative_max_distance,
                    f"an int > relative_buckets // 2 = {self.relative_buckets // 2}",
                )
        checks.choice(_name("norm"), self.norm, NORMS)
        checks.positive_float(_name("norm_eps"), self.norm_eps)
        checks.choice(_name("norm_placement"), self.norm_placement, NORM_PLACEMENTS)
        checks.choice(_name("mlp"), self.mlp, MLPS)
        for name in (
            "embed_norm",
            "final_norm",
            "bias",
            "scale_attention",
            "scale_embedding",
            "share_embeddings",
            "tie_embeddings",
            "logits_bias",
            "scale_decoder_output",
        ):
            checks.flag(_name(name), getattr(self, name))
        checks.probability(_name("dropout"), self.dropout)
        checks.probability(_name("attn_dropout"), self.attn_dropout)
        checks.positive_float(_name("initializer_range"), self.initializer_range)
        if not isinstance(self.backend, str):
            _fail("backend", self.backend, "a backend name such as 'auto', 'sdpa' or 'math'")
        self._check_attention()
        for name in ("pad_token_id", "eos_token_id", "decoder_start_token_id"):
            self._check_token(name, getattr(self, name))
        if self.bos_token_id is not None:
            self._check_token("bos_token_id", self.bos_token_id)

    def _check_token(self, name: str, value: Any) -> None:
        if (
            isinstance(value, bool)
            or not isinstance(value, int)
            or not 0 <= value < self.vocab_size
        ):
            _fail(name, value, f"an int in [0, vocab_size={self.vocab_size})")

    def _check_attention(self) -> None:
        params = self.encoder_attention_params
        if not isinstance(params, dict):
            _fail("encoder_attention_params", params, "a dict of keyword arguments")
        object.__setattr__(self, "encoder_attention_params", dict(params))
        if self.encoder_attention == "exact":
            if params:
                _fail(
                    "encoder_attention_params",
                    params,
                    "empty when encoder_attention='exact' (parameters belong to a variant)",
                )
            return
        from attnkit.attention import variants

        if self.encoder_attention not in variants.names():
            _fail(
                "encoder_attention", self.encoder_attention, f"'exact' or one of {variants.names()}"
            )
        valid = variants.params(self.encoder_attention)
        unknown = sorted(set(params) - set(valid))
        if unknown:
            _fail(
                "encoder_attention_params",
                params,
                f"keyword arguments of variant {self.encoder_attention!r}: {sorted(valid)} "
                f"(unknown: {unknown})",
            )
        if self.positional == "relative" or not self.scale_attention:
            _fail(
                "encoder_attention",
                self.encoder_attention,
                "'exact' with positional='relative' or scale_attention=False (variants take no "
                "score bias and scale by 1/sqrt(head_dim))",
            )

    # ---------------------------------------------------------------------------------------
    @property
    def n_layer(self) -> int:
        """Blocks in all, encoder then decoder: as many as the model's self-attention layers
        (``attnkit.attention.recording.attention_layers``).

        Examples:
            >>> get_encdec_preset("tiny-t5").n_layer
            4
        """
        return self.n_encoder_layers + self.n_decoder_layers

    @property
    def head(self) -> str:
        """The output head: an encoder-decoder always has the LM head.

        Examples:
            >>> get_encdec_preset("tiny-t5").head
            'lm'
        """
        return "lm"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields: every field by name (derived ones hold their ints).

        Examples:
            >>> get_encdec_preset("tiny-t5").to_dict()["arch"]
            'encdec'
        """
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EncDecConfig:
        """Build from a dict (e.g. a config.json); unknown keys are an error naming them.

        Raises:
            TypeError: ``data`` is not a mapping.
            ValueError: a key is not a field, or a field's value is bad.

        Examples:
            >>> EncDecConfig.from_dict(get_encdec_preset("tiny-bart").to_dict()).position_offset
            2
        """
        if not isinstance(data, Mapping):
            raise TypeError(f"EncDecConfig.from_dict expects a dict, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(
                f"unknown EncDecConfig field(s) {unknown}; valid fields: {sorted(names)}"
            )
        return cls(**data)

    def replace(self, **changes: Any) -> EncDecConfig:
        """A copy with some fields changed (validated again). New ``d_model`` or ``n_heads``
        without ``head_dim`` re-derives it when it was derived; new ``d_model`` without
        ``d_ff`` keeps ``d_ff == 4 * d_model`` when it was so.

        Examples:
            >>> EncDecConfig(d_model=512, n_heads=8).replace(d_model=256).head_dim
            32
        """
        if (
            ("d_model" in changes or "n_heads" in changes)
            and "head_dim" not in changes
            and self.head_dim * self.n_heads == self.d_model
        ):
            changes["head_dim"] = None
        if "d_model" in changes and "d_ff" not in changes and self.d_ff == 4 * self.d_model:
            changes["d_ff"] = None
        return dataclasses.replace(self, **changes)


# --------------------------------------------------------------------------------------------
# presets
# --------------------------------------------------------------------------------------------
def _transformer_base() -> EncDecConfig:
    """Vaswani et al. (2017), the base model: 6 + 6 post-norm blocks of 512, 8 heads, d_ff
    2048, ReLU, sinusoidal positions, embeddings scaled by sqrt(d_model) and shared by encoder,
    decoder and output (a joint 37k BPE vocabulary), dropout 0.1."""
    return EncDecConfig(
        vocab_size=37000,
        n_encoder_layers=6,
        n_decoder_layers=6,
        d_model=512,
        n_heads=8,
        d_ff=2048,
        max_seq_len=1024,
        positional="sinusoidal",
        norm_placement="post",
        mlp="relu",
        scale_embedding=True,
        dropout=0.1,
        attn_dropout=0.1,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )


def _tiny_marian() -> EncDecConfig:
    """The Marian (opus-mt) layout at test size: sinusoidal positions, post-norm, swish,
    scaled embeddings, an output bias; the pad token starts the decoder."""
    return EncDecConfig(
        vocab_size=512,
        n_encoder_layers=2,
        n_decoder_layers=2,
        d_model=64,
        n_heads=4,
        d_ff=128,
        max_seq_len=256,
        positional="sinusoidal",
        norm_placement="post",
        mlp="silu",
        scale_embedding=True,
        logits_bias=True,
        pad_token_id=511,
        eos_token_id=0,
        decoder_start_token_id=511,
    )


def _tiny_bart() -> EncDecConfig:
    """The BART layout at test size: learned positions offset by 2, a LayerNorm after the
    embeddings, post-norm, GELU, an output bias; ``</s>`` (2) starts the decoder."""
    return EncDecConfig(
        vocab_size=512,
        n_encoder_layers=2,
        n_decoder_layers=2,
        d_model=64,
        n_heads=4,
        d_ff=128,
        max_seq_len=256,
        positional="learned",
        position_offset=2,
        norm_placement="post",
        embed_norm=True,
        mlp="gelu",
        logits_bias=True,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        decoder_start_token_id=2,
    )


def _tiny_t5() -> EncDecConfig:
    """The T5 layout at test size: relative position buckets, RMSNorm before each sublayer and
    at the end of each stack, ReLU, no biases, unscaled scores, the decoder output scaled by
    d_model^-0.5 before the tied LM head; the pad token (0) starts the decoder."""
    return EncDecConfig(
        vocab_size=512,
        n_encoder_layers=2,
        n_decoder_layers=2,
        d_model=64,
        n_heads=4,
        head_dim=16,
        d_ff=128,
        max_seq_len=512,
        positional="relative",
        relative_buckets=32,
        relative_max_distance=128,
        norm="rmsnorm",
        norm_eps=1e-6,
        norm_placement="pre",
        final_norm=True,
        mlp="relu",
        bias=False,
        scale_attention=False,
        scale_decoder_output=True,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )


ENCDEC_PRESETS: dict[str, Callable[[], EncDecConfig]] = {
    "transformer-base": _transformer_base,
    "tiny-marian": _tiny_marian,
    "tiny-bart": _tiny_bart,
    "tiny-t5": _tiny_t5,
}


def encdec_preset_names() -> list[str]:
    """The names :func:`get_encdec_preset` accepts, sorted.

    Examples:
        >>> encdec_preset_names()
        ['tiny-bart', 'tiny-marian', 'tiny-t5', 'transformer-base']
    """
    return sorted(ENCDEC_PRESETS)


def get_encdec_preset(name: str, **overrides: Any) -> EncDecConfig:
    """The encoder-decoder config called ``name``, with ``overrides`` applied (and checked).

    Raises:
        ValueError: ``name`` is not a preset (the message lists them), or an override is bad.

    Examples:
        >>> get_encdec_preset("tiny-marian", n_decoder_layers=1).n_layer
        3
    """
    try:
        make = ENCDEC_PRESETS[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown encoder-decoder preset {name!r}; expected one of {encdec_preset_names()}"
        ) from None
    cfg = make()
    return cfg.replace(**overrides) if overrides else cfg
