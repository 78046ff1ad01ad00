"""The parts every Hugging Face key map is made of: rules, key maps, architectures.

A map is a tuple of :class:`Rule`: Hugging Face name(s) -> attnkit name, and how the tensor
changes on the way:

* ``transpose``: GPT-2 stores its linears as ``Conv1D`` with weights (in, out); attnkit uses
  ``nn.Linear`` (out, in).
* ``concat``: BERT has separate query/key/value linears; attnkit has one fused ``qkv_proj``
  whose rows are ``[q | k | v]``. Several HF names become one attnkit tensor (rows stacked), and
  exporting splits it again.

``{i}`` in a name stands for the layer index. An :class:`Architecture` adds the two config
translations (HF config.json <-> :class:`~attnkit.models.config.ModelConfig`) and the config
values a model must have to be exported.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from attnkit.checkpoints.format import CheckpointError
from attnkit.models.config import ModelConfig

__all__ = [
    "ACTIVATIONS",
    "ACTIVATIONS_TO_HF",
    "Architecture",
    "KeyMap",
    "Rule",
    "activation",
    "config_value",
    "linear_rules",
    "norm_rules",
]


@dataclass(frozen=True)
class Rule:
    """HF name(s) -> attnkit name. Several HF names are concatenated along dim 0."""

    hf: str | tuple[str, ...]
    ours: str
    transpose: bool = False

    @property
    def hf_names(self) -> tuple[str, ...]:
        return self.hf if isinstance(self.hf, tuple) else (self.hf,)

    @property
    def op(self) -> str:
        return "concat" if len(self.hf_names) > 1 else "copy"


@dataclass(frozen=True)
class KeyMap:
    """The key map of one architecture: per-model rules, per-layer rules (with ``{i}``),
    rules per head, HF keys that are never converted, and the HF prefix of each head's class."""

    model: tuple[Rule, ...]
    layer: tuple[Rule, ...]
    heads: dict[str, tuple[Rule, ...]]
    ignore: tuple[str, ...]  # regular expressions on HF names (after the prefix is removed)
    prefix: str  # prefix of the backbone inside task models ("bert.", "transformer.")
    hf_class: dict[str, str] = field(default_factory=dict)  # attnkit head -> HF class

    def backbone_rules(self, n_layer: int, has_pooler: bool) -> list[Rule]:
        """Rules for the backbone (HF names under ``prefix`` in task models)."""
        out = list(self.model)
        for i in range(n_layer):
            out += [
                Rule(
                    tuple(n.format(i=i) for n in r.hf_names)
                    if r.op == "concat"
                    else r.hf_names[0].format(i=i),
                    r.ours.format(i=i),
                    r.transpose,
                )
                for r in self.layer
            ]
        if has_pooler:
            out += list(self.heads.get("pooler", ()))
        return out

    def head_rules(self, head: str) -> list[Rule]:
        """Rules for a task head (HF names outside the backbone prefix)."""
        return list(self.heads.get(head, ())) if head != "pooler" else []


def linear_rules(hf: str, ours: str, transpose: bool = False) -> tuple[Rule, Rule]:
    """Weight and bias of a linear layer."""
    return (Rule(f"{hf}.weight", f"{ours}.weight", transpose), Rule(f"{hf}.bias", f"{ours}.bias"))


def norm_rules(hf: str, ours: str) -> tuple[Rule, Rule]:
    """Weight and bias of a LayerNorm."""
    return (Rule(f"{hf}.weight", f"{ours}.weight"), Rule(f"{hf}.bias", f"{ours}.bias"))


# HF activation name -> attnkit mlp, and back
ACTIVATIONS = {
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "relu": "relu",
}
ACTIVATIONS_TO_HF = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu"}


def config_value(hf: Mapping[str, Any], key: str, path: Path, default: Any = ...) -> Any:
    """``hf[key]``; without a ``default`` a missing key is a CheckpointError naming it."""
    if key in hf:
        return hf[key]
    if default is ...:
        raise CheckpointError(f"{path}: missing config key {key!r}")
    return default


def activation(name: Any, key: str, path: Path) -> str:
    """The attnkit ``mlp`` for HF activation ``name`` (read from config key ``key``)."""
    if name not in ACTIVATIONS:
        raise CheckpointError(
            f"{path}: {key}={name!r} is not supported; expected one of {sorted(ACTIVATIONS)}"
        )
    return ACTIVATIONS[name]


@dataclass(frozen=True)
class Architecture:
    """One HF ``model_type``: its key map, its config translations and what export needs."""

    model_type: str  # HF model_type ("bert", "gpt2")
    arch: str  # ModelConfig.arch it maps to
    keymap: KeyMap
    # (HF config, its path, head, has a pooler) -> ModelConfig
    config_from_hf: Callable[[Mapping[str, Any], Path, str, bool], ModelConfig]
    config_to_hf: Callable[[ModelConfig], dict[str, Any]]
    # ModelConfig field -> the value a model must have to be exported, or a tuple of the
    # values it may have (besides n_kv_heads == n_heads unless ``grouped_kv``)
    exportable: dict[str, Any]
    name: str = ""  # how messages name it ("GPT-2", "Llama")
    grouped_kv: bool = False  # holds fewer key/value heads than query heads (GQA/MQA)
    # every bias exists in HF: a model without biases (config.bias=False) is exported with
    # zero biases, and an HF file read as bias=False must hold only zero biases
    zero_bias: bool = False
