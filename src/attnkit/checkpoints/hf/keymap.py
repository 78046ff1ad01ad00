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
    """HF name(s) -> attnkit name. Several HF names are concatenated along dim 0.

    ``hf`` is one HF name or a tuple of them (stacked in that order), ``ours`` the attnkit
    state_dict name, ``transpose`` whether the tensor is transposed on the way (GPT-2's
    ``Conv1D``); ``{i}`` in the names stands for the layer index.

    Examples:
        >>> Rule("h.{i}.attn.c_attn.weight", "blocks.{i}.attn.qkv_proj.weight", transpose=True)
    """

    hf: str | tuple[str, ...]
    ours: str
    transpose: bool = False

    @property
    def hf_names(self) -> tuple[str, ...]:
        """The HF name(s) as a tuple, one entry for a single name.

        Examples:
            >>> Rule("wte.weight", "embed.tok.weight").hf_names  # ('wte.weight',)
        """
        return self.hf if isinstance(self.hf, tuple) else (self.hf,)

    @property
    def op(self) -> str:
        """``"concat"`` when several HF names stack into the attnkit tensor, else ``"copy"``.

        Examples:
            >>> Rule(("q.weight", "k.weight", "v.weight"), "qkv_proj.weight").op  # 'concat'
        """
        return "concat" if len(self.hf_names) > 1 else "copy"


@dataclass(frozen=True)
class KeyMap:
    """The key map of one architecture: per-model rules, per-layer rules (with ``{i}``),
    rules per head, HF keys that are never converted, and the HF prefix of each head's class.

    ``ignore`` holds regular expressions on HF names (after the prefix is removed);
    ``prefix`` is the backbone's prefix inside task models (``"bert."``, ``"transformer."``);
    ``hf_class`` maps an attnkit head to the HF class name.

    Examples:
        >>> gpt2.KEYMAP.prefix  # 'transformer.'
    """

    model: tuple[Rule, ...]
    layer: tuple[Rule, ...]
    heads: dict[str, tuple[Rule, ...]]
    ignore: tuple[str, ...]  # regular expressions on HF names (after the prefix is removed)
    prefix: str  # prefix of the backbone inside task models ("bert.", "transformer.")
    hf_class: dict[str, str] = field(default_factory=dict)  # attnkit head -> HF class

    def backbone_rules(self, n_layer: int, has_pooler: bool) -> list[Rule]:
        """Rules for the backbone (HF names under ``prefix`` in task models): the per-model
        rules, the layer rules written out for layers 0..n_layer-1, and the pooler's.

        Args:
            n_layer: the number of layers.
            has_pooler: add the ``"pooler"`` head's rules.

        Examples:
            >>> len(gpt2.KEYMAP.backbone_rules(2, False))  # 4 + 2 * 12
            28
        """
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
        """Rules for a task head (HF names outside the backbone prefix); none for
        ``"pooler"`` (part of the backbone) or a head the map lacks.

        Args:
            head: the attnkit head, e.g. "lm", "mlm" or "classification".

        Examples:
            >>> gpt2.KEYMAP.head_rules("lm")  # [Rule(hf='lm_head.weight', ...)]
        """
        return list(self.heads.get(head, ())) if head != "pooler" else []


def linear_rules(hf: str, ours: str, transpose: bool = False) -> tuple[Rule, Rule]:
    """Weight and bias of a linear layer (only the weight is transposed).

    Args:
        hf: the HF layer's name.
        ours: the attnkit layer's name.
        transpose: transpose the weight (GPT-2's ``Conv1D``).

    Examples:
        >>> linear_rules("h.{i}.mlp.c_fc", "blocks.{i}.mlp.up", transpose=True)  # (weight, bias)
    """
    return (Rule(f"{hf}.weight", f"{ours}.weight", transpose), Rule(f"{hf}.bias", f"{ours}.bias"))


def norm_rules(hf: str, ours: str) -> tuple[Rule, Rule]:
    """Weight and bias of a LayerNorm.

    Args:
        hf: the HF norm's name.
        ours: the attnkit norm's name.

    Examples:
        >>> norm_rules("ln_f", "norm")[0]  # Rule(hf='ln_f.weight', ours='norm.weight', ...)
    """
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
    """``hf[key]``; without a ``default`` a missing key is a CheckpointError naming it.

    Args:
        hf: the parsed HF config.json.
        key: the key to read.
        path: the config's file, named in the error.
        default: the value of a missing key; left out: a missing key is an error.

    Examples:
        >>> config_value({"n_layer": 12}, "n_layer", path)  # 12
    """
    if key in hf:
        return hf[key]
    if default is ...:
        raise CheckpointError(f"{path}: missing config key {key!r}")
    return default


def activation(name: Any, key: str, path: Path) -> str:
    """The attnkit ``mlp`` for HF activation ``name`` (read from config key ``key``).

    Args:
        name: the HF activation name, e.g. "gelu_new".
        key: the config key it was read from, named in the error.
        path: the config's file, named in the error.

    Raises:
        CheckpointError: for an activation not in :data:`ACTIVATIONS`.

    Examples:
        >>> activation("gelu_new", "activation_function", path)  # 'gelu_tanh'
    """
    if name not in ACTIVATIONS:
        raise CheckpointError(
            f"{path}: {key}={name!r} is not supported; expected one of {sorted(ACTIVATIONS)}"
        )
    return ACTIVATIONS[name]


@dataclass(frozen=True)
class Architecture:
    """One HF ``model_type``: its key map, its config translations and what export needs.

    ``exportable`` maps a ModelConfig field to the value a model must have to be exported,
    or a tuple of the values it may have; ``grouped_kv`` says the architecture holds fewer
    key/value heads than query heads; ``zero_bias`` that every bias exists in HF (a
    bias-free model is exported with zero biases); ``interleaved_rope`` that HF pairs RoPE
    channels (0, 1), (2, 3), ... (the q/k rows of each head are permuted on the way);
    ``extra_tensors`` computes tensors HF stores and attnkit does not (written on export).

    Examples:
        >>> gpt2.ARCHITECTURE.model_type, gpt2.ARCHITECTURE.arch  # ('gpt2', 'gpt')
    """

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
    # RoPE pairs channels (0, 1), (2, 3), ... of each head in HF, where attnkit pairs i with
    # i + D/2: the q and k rows of each head are permuted on the way (scores are unchanged)
    interleaved_rope: bool = False
    # tensors HF keeps that attnkit computes (RoFormer's sin/cos table): config -> backbone
    # name -> tensor, written on export
    extra_tensors: Callable[[ModelConfig], dict[str, Any]] | None = None
