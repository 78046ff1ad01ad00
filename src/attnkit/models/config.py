"""ModelConfig: every architectural choice of a GPT or BERT model, checked once.

A config is plain data: it is saved as ``config.json`` next to the weights and turned back into
the same model by :func:`attnkit.models.build_model`. ``__post_init__`` checks every field, so
a bad value fails here, with the field's name, the value and what was expected, rather than as
a shape error deep inside a forward pass. A config is frozen once checked: :meth:`replace`
returns a new, checked copy.

Class labels live here, as in Hugging Face configs: ``id2label`` (label names, index = class
id) and the derived ``label2id``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, NoReturn

from attnkit._util import checks

ARCHS = ("gpt", "bert")
HEADS = {"gpt": ("lm", "none"), "bert": ("none", "mlm", "classification")}
POSITIONALS = ("learned", "sinusoidal", "rope", "alibi", "none")
NORMS = ("layernorm", "rmsnorm")
NORM_PLACEMENTS = ("pre", "post")
MLPS = ("gelu", "gelu_tanh", "relu", "relu2", "swiglu")
POOLINGS = ("cls", "mean")


# the default of a field that is derived from others when the config is checked: a checked
# config holds an int there (typed ``Any`` so that the field itself is typed ``int``)
DERIVED: Any = None

# names of fields before they were renamed -> their names now (old config.json / TOML files)
RENAMED_FIELDS = {"n_head": "n_heads", "n_kv_head": "n_kv_heads"}


def _name(field_name: str) -> str:
    return f"ModelConfig.{field_name}"


def _fail(field_name: str, value: Any, expected: str) -> NoReturn:
    checks.fail(_name(field_name), value, expected)


def translate_old_names(data: Mapping[str, Any]) -> dict[str, Any]:
    """``data`` with fields of their old names renamed (``n_head`` -> ``n_heads``, ``n_kv_head``
    -> ``n_kv_heads``), so config.json and TOML files written before the rename still load.
    Giving both the old and the new name is an error naming them.

    Examples:
        >>> translate_old_names({"n_head": 4})  # {'n_heads': 4}
    """
    out = dict(data)
    for old, new in RENAMED_FIELDS.items():
        if old in out:
            if new in out:
                raise ValueError(
                    f"config has both {old!r} (the old name) and {new!r}; expected only {new!r}"
                )
            out[new] = out.pop(old)
    return out


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of a decoder (``arch="gpt"``) or encoder (``arch="bert"``).

    Sizes: ``vocab_size``, ``n_layer`` blocks of width ``d_model`` with ``n_heads`` query
    heads and ``n_kv_heads`` key/value heads (fewer gives GQA/MQA), ``d_ff`` MLP width,
    ``max_seq_len`` positions. ``n_kv_heads`` and ``d_ff`` may be given as None and are then
    resolved when the config is checked: ``n_kv_heads = n_heads`` and ``d_ff = 4 * d_model``,
    so a checked config always holds ints there.

    Choices: ``positional`` (learned, sinusoidal, rope, alibi, none), ``norm`` (layernorm,
    rmsnorm) placed ``norm_placement`` "pre" (GPT-2) or "post" (BERT) the sublayer, ``mlp``
    (gelu = exact erf GELU, gelu_tanh = GPT-2's tanh approximation, relu, relu2 = squared
    ReLU, swiglu).

    Attention: ``attention`` is "exact" or a name from ``attnkit.attention.variants`` with its
    keyword arguments in ``attention_params``; ``window`` a sliding window for exact attention;
    ``backend`` the backend passed to ``attnkit.attention.attention``.

    BERT parts: ``type_vocab_size`` segment embeddings, ``embed_norm`` LayerNorm after the
    embeddings, ``pooler`` dense+tanh on the first token, ``pooling`` (cls or mean) for
    sentence vectors, ``head`` (none, mlm, classification) with ``num_labels`` classes named
    by ``id2label`` (a tuple of label names, index = class id; None: unnamed classes). When
    ``id2label`` is given, ``num_labels`` is its length (a different ``num_labels`` is an
    error); ``label2id`` is the derived read-only mapping.

    Old names: ``n_head`` and ``n_kv_head`` (before they were renamed ``n_heads`` and
    ``n_kv_heads``) are accepted by :meth:`from_dict`, so older config.json files still load
    (see :func:`translate_old_names`).

    Examples:
        >>> ModelConfig(arch="gpt", vocab_size=256, n_layer=2, d_model=64, n_heads=4, max_seq_len=128)
    """

    arch: str = "gpt"
    vocab_size: int = 50257
    n_layer: int = 12
    n_heads: int = 12
    n_kv_heads: int = DERIVED  # None: n_heads
    d_model: int = 768
    d_ff: int = DERIVED  # None: 4 * d_model
    max_seq_len: int = 1024
    positional: str = "learned"
    rope_base: float = 10000.0
    norm: str = "layernorm"
    norm_eps: float = 1e-5
    norm_placement: str = "pre"
    mlp: str = "gelu_tanh"
    bias: bool = True
    dropout: float = 0.0
    attn_dropout: float = 0.0
    tie_embeddings: bool = True
    attention: str = "exact"
    attention_params: dict = field(default_factory=dict)
    window: int | None = None
    backend: str = "auto"
    head: str = "lm"
    type_vocab_size: int = 0
    embed_norm: bool = False
    final_norm: bool = True
    pooler: bool = False
    pooling: str = "cls"
    num_labels: int = 2
    id2label: tuple[str, ...] | None = None
    pad_token_id: int | None = None
    initializer_range: float = 0.02

    def __post_init__(self) -> None:
        checks.choice(_name("arch"), self.arch, ARCHS)
        for name in ("vocab_size", "n_layer", "n_heads", "d_model", "max_seq_len", "num_labels"):
            checks.positive_int(_name(name), getattr(self, name))
        if self.n_kv_heads is None:
            object.__setattr__(self, "n_kv_heads", self.n_heads)
        checks.positive_int(_name("n_kv_heads"), self.n_kv_heads)
        if self.n_heads % self.n_kv_heads:
            _fail("n_kv_heads", self.n_kv_heads, f"a divisor of n_heads={self.n_heads}")
        if self.d_model % self.n_heads:
            _fail("d_model", self.d_model, f"a multiple of n_heads={self.n_heads}")
        if self.d_ff is None:
            object.__setattr__(self, "d_ff", 4 * self.d_model)
        checks.positive_int(_name("d_ff"), self.d_ff)
        checks.choice(_name("positional"), self.positional, POSITIONALS)
        if self.positional == "rope" and self.head_dim % 2:
            _fail(
                "positional",
                self.positional,
                f"not 'rope' with an odd head_dim={self.head_dim} (RoPE rotates channel pairs)",
            )
        for name in ("rope_base", "norm_eps", "initializer_range"):
            checks.positive_float(_name(name), getattr(self, name))
        checks.choice(_name("norm"), self.norm, NORMS)
        checks.choice(_name("norm_placement"), self.norm_placement, NORM_PLACEMENTS)
        checks.choice(_name("mlp"), self.mlp, MLPS)
        for name in ("bias", "tie_embeddings", "embed_norm", "final_norm", "pooler"):
            checks.flag(_name(name), getattr(self, name))
        checks.probability(_name("dropout"), self.dropout)
        checks.probability(_name("attn_dropout"), self.attn_dropout)
        self._check_attention()
        checks.optional_positive_int(_name("window"), self.window)
        from attnkit.attention.arguments import BACKENDS

        checks.choice(_name("backend"), self.backend, BACKENDS)
        checks.choice(_name("head"), self.head, HEADS[self.arch])
        checks.int_at_least(
            _name("type_vocab_size"),
            self.type_vocab_size,
            0,
            "an int >= 0 (0: no segment embeddings)",
        )
        checks.choice(_name("pooling"), self.pooling, POOLINGS)
        self._check_labels()
        if self.pad_token_id is not None and (
            isinstance(self.pad_token_id, bool)
            or not isinstance(self.pad_token_id, int)
            or not 0 <= self.pad_token_id < self.vocab_size
        ):
            _fail(
                "pad_token_id",
                self.pad_token_id,
                f"None or an int in [0, vocab_size={self.vocab_size})",
            )

    def _check_labels(self) -> None:
        if self.id2label is None:
            return
        if isinstance(self.id2label, (str, bytes, Mapping)) or not isinstance(
            self.id2label, (list, tuple)
        ):
            _fail("id2label", self.id2label, "None or a sequence of label names")
        labels = tuple(self.id2label)
        if not all(isinstance(x, str) and x for x in labels) or len(set(labels)) != len(labels):
            _fail("id2label", self.id2label, "distinct non-empty label names")
        if len(labels) != self.num_labels:
            _fail(
                "num_labels",
                self.num_labels,
                f"{len(labels)}, the number of labels in id2label={list(labels)}",
            )
        object.__setattr__(self, "id2label", labels)

    def _check_attention(self) -> None:
        if not isinstance(self.attention_params, dict):
            _fail("attention_params", self.attention_params, "a dict of keyword arguments")
        object.__setattr__(self, "attention_params", dict(self.attention_params))
        if self.attention == "exact":
            if self.attention_params:
                _fail(
                    "attention_params",
                    self.attention_params,
                    "empty when attention='exact' (parameters belong to a variant)",
                )
            return
        from attnkit.attention import variants

        if self.attention not in variants.names():
            _fail("attention", self.attention, f"'exact' or one of {variants.names()}")
        valid = variants.params(self.attention)
        unknown = sorted(set(self.attention_params) - set(valid))
        if unknown:
            _fail(
                "attention_params",
                self.attention_params,
                f"keyword arguments of variant {self.attention!r}: {sorted(valid)} (unknown: {unknown})",
            )
        if self.positional == "alibi":
            _fail(
                "positional",
                self.positional,
                f"not 'alibi' with attention={self.attention!r} (variants take no score bias)",
            )
        if self.window is not None:
            _fail("window", self.window, f"None with attention={self.attention!r}")

    # ---------------------------------------------------------------------------------------
    @property
    def head_dim(self) -> int:
        """Per-head width: ``d_model // n_heads``.

        Examples:
            >>> get_preset("tiny").head_dim
        """
        return self.d_model // self.n_heads

    @property
    def causal(self) -> bool:
        """True for a GPT (each token sees only earlier tokens), False for a BERT.

        Examples:
            >>> get_preset("tiny").causal
        """
        return self.arch == "gpt"

    @property
    def label2id(self) -> Mapping[str, int]:
        """label name -> class id (read-only; empty when ``id2label`` is None).

        Examples:
            >>> get_preset("tiny-bert", id2label=("neg", "pos")).label2id["pos"]
        """
        return MappingProxyType({name: i for i, name in enumerate(self.id2label or ())})

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (``id2label`` as a list).

        Examples:
            >>> ModelConfig.from_dict(get_preset("tiny").to_dict())
        """
        out = dataclasses.asdict(self)
        if self.id2label is not None:
            out["id2label"] = list(self.id2label)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelConfig:
        """Build from a dict (e.g. a config.json); unknown keys are an error naming them. Old
        field names are translated (:func:`translate_old_names`).

        Examples:
            >>> ModelConfig.from_dict(json.loads(Path("runs/char/config.json").read_text())["model"])
        """
        if not isinstance(data, Mapping):
            raise TypeError(f"ModelConfig.from_dict expects a dict, got {type(data).__name__}")
        data = translate_old_names(data)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(
                f"unknown ModelConfig field(s) {unknown}; valid fields: {sorted(names)}"
            )
        if data.get("id2label") is not None and "num_labels" not in data:
            data["num_labels"] = len(data["id2label"])
        return cls(**data)

    def replace(self, **changes: Any) -> ModelConfig:
        """A copy with some fields changed (validated again).

        Resolved defaults follow the fields they derive from: new ``n_heads`` without
        ``n_kv_heads`` keeps a config with ``n_kv_heads == n_heads`` so (and keeps a grouped
        one's ``n_kv_heads``); new ``d_model`` without ``d_ff`` keeps ``d_ff == 4 * d_model``
        so. New ``id2label`` without ``num_labels`` sets ``num_labels`` to its length.

        Examples:
            >>> get_preset("tiny").replace(n_layer=4).n_layer
        """
        if "n_heads" in changes and "n_kv_heads" not in changes and self.n_kv_heads == self.n_heads:
            changes["n_kv_heads"] = None
        if "d_model" in changes and "d_ff" not in changes and self.d_ff == 4 * self.d_model:
            changes["d_ff"] = None
        if changes.get("id2label") is not None and "num_labels" not in changes:
            changes["num_labels"] = len(changes["id2label"])
        return dataclasses.replace(self, **changes)
