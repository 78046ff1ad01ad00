"""Hugging Face <-> attnkit conversion of encoder-decoders (Marian, BART, T5).

The same declarative parts as BERT and GPT-2 (:mod:`attnkit.checkpoints.hf.keymap`: rules with
``{i}`` for the layer index, several HF names stacked into one fused tensor), in a key map with
the encoder's and the decoder's layers apart (:class:`Seq2SeqKeyMap`); the tables are in
:mod:`~attnkit.checkpoints.hf.marian`, :mod:`~attnkit.checkpoints.hf.bart` and
:mod:`~attnkit.checkpoints.hf.t5`.

A table lists every tensor the architecture can have; the model built from the converted config
decides which apply (a rule whose attnkit name the model lacks, such as a bias of a model
without biases, is left out). Every tensor is checked by shape; a missing or unknown key is
reported by name. HF names of tied copies (the decoder's token table, the LM head) are used
when the model ties them too, and ignored then.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from attnkit.checkpoints.format import CheckpointError, check_and_load, key_mismatch
from attnkit.checkpoints.hf.keymap import (
    ACTIVATIONS,
    ACTIVATIONS_TO_HF,
    KeyMap,
    Rule,
)
from attnkit.models.encdec import EncoderDecoder
from attnkit.models.encdec_config import EncDecConfig

__all__ = [
    "Seq2SeqArchitecture",
    "Seq2SeqKeyMap",
    "activation",
    "activation_to_hf",
    "convert_from_hf",
    "to_hf_state_dict",
]

# HF activation name -> attnkit mlp (Marian's opus-mt models use swish), and back
_ACTIVATIONS = {**ACTIVATIONS, "swish": "silu", "silu": "silu"}
_ACTIVATIONS_TO_HF = {**ACTIVATIONS_TO_HF, "silu": "swish"}


def activation(name: Any, key: str, path: Path) -> str:
    """The attnkit ``mlp`` for HF activation ``name`` (read from config key ``key``): those of
    :data:`~attnkit.checkpoints.hf.keymap.ACTIVATIONS`, plus swish and silu (Marian's).

    Args:
        name: the HF activation name, e.g. "swish".
        key: the config key it was read from, named in the error.
        path: the config's file, named in the error.

    Raises:
        CheckpointError: for an activation attnkit does not have.

    Examples:
        >>> activation("swish", "activation_function", path)  # 'silu'
    """
    if name not in _ACTIVATIONS:
        raise CheckpointError(
            f"{path}: {key}={name!r} is not supported; expected one of {sorted(_ACTIVATIONS)}"
        )
    return _ACTIVATIONS[name]


def activation_to_hf(mlp: str, model_type: str) -> str:
    """The HF activation name for attnkit ``mlp`` (silu is written as swish).

    Args:
        mlp: the attnkit config's ``mlp``.
        model_type: the HF model_type, named in the error.

    Raises:
        ValueError: for an ``mlp`` HF has no name for.

    Examples:
        >>> activation_to_hf("silu", "marian")  # 'swish'
    """
    if mlp not in _ACTIVATIONS_TO_HF:
        raise ValueError(
            f"mlp={mlp!r} cannot be exported as HF {model_type}; expected one of "
            f"{sorted(_ACTIVATIONS_TO_HF)}"
        )
    return _ACTIVATIONS_TO_HF[mlp]


@dataclass(frozen=True)
class Seq2SeqKeyMap:
    """Per-model rules, per-encoder-layer and per-decoder-layer rules (``{i}``: the layer),
    HF keys that are never converted (regular expressions), the HF class, and HF keys that
    hold copies of another key (``(copy, original)``: read only to check that they are equal,
    since attnkit keeps one table).

    Examples:
        >>> t5.KEYMAP.hf_class  # 'T5ForConditionalGeneration'
    """

    model: tuple[Rule, ...]
    encoder_layer: tuple[Rule, ...]
    decoder_layer: tuple[Rule, ...]
    ignore: tuple[str, ...]
    hf_class: str
    copies: tuple[tuple[str, str], ...] = ()

    def rules(self, n_encoder: int, n_decoder: int) -> list[Rule]:
        """Every rule, the layer rules written out for each layer: the per-model rules, then
        the encoder's layers, then the decoder's.

        Args:
            n_encoder: the number of encoder layers.
            n_decoder: the number of decoder layers.

        Examples:
            >>> len(t5.KEYMAP.rules(2, 2))  # 39
        """

        def expand(layer: tuple[Rule, ...], n: int) -> list[Rule]:
            return KeyMap((), layer, {}, (), "").backbone_rules(n, has_pooler=False)

        return [
            *self.model,
            *expand(self.encoder_layer, n_encoder),
            *expand(self.decoder_layer, n_decoder),
        ]


@dataclass(frozen=True)
class Seq2SeqArchitecture:
    """One HF ``model_type``: its key map, its config translations and what export needs
    (``exportable``: EncDecConfig field -> the value a model must have to be exported).

    Examples:
        >>> t5.ARCHITECTURE.exportable["positional"]  # 'relative'
    """

    model_type: str
    keymap: Seq2SeqKeyMap
    config_from_hf: Callable[[Mapping[str, Any], Path], EncDecConfig]
    config_to_hf: Callable[[EncDecConfig], dict[str, Any]]
    exportable: dict[str, Any]  # EncDecConfig field -> the value export needs


def _applicable(arch: Seq2SeqArchitecture, model: EncoderDecoder) -> list[Rule]:
    cfg = model.config
    own = model.state_dict()
    return [
        r for r in arch.keymap.rules(cfg.n_encoder_layers, cfg.n_decoder_layers) if r.ours in own
    ]


def convert_from_hf(
    arch: Seq2SeqArchitecture,
    tensors: Mapping[str, torch.Tensor],
    hf_cfg: Mapping[str, Any],
    source: str | Path = "<tensors>",
    config_path: str | Path | None = None,
) -> EncoderDecoder:
    """The attnkit encoder-decoder described by an HF config, filled from HF tensors.

    Every tensor is checked by shape against a meta-device model first; HF copies of a table
    attnkit keeps once must equal it.

    Args:
        arch: the architecture of the config's ``model_type``.
        tensors: HF state_dict, name -> tensor of the shape the HF model gives it, e.g.
            ``shared.weight`` (vocab_size, d_model).
        hf_cfg: the parsed HF config.json.
        source: the weights' file, named in errors.
        config_path: the config's file, named by config errors; default ``source``.

    Raises:
        CheckpointError: for a config that cannot be converted, keys and shapes that do not
            fit it, or copies that differ.

    Examples:
        >>> model = convert_from_hf(t5.ARCHITECTURE, read_tensors(weights), read_json(config))
    """
    source = Path(source)
    cfg_source = Path(config_path) if config_path is not None else source
    try:
        cfg = arch.config_from_hf(hf_cfg, cfg_source)
    except (TypeError, ValueError) as e:
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(f"{cfg_source}: config cannot be converted: {e}") from e
    with torch.device("meta"):  # the shapes the config implies, checked before allocating
        skeleton = EncoderDecoder(cfg)
    own = skeleton.state_dict()
    tied = set(skeleton.tied_keys())
    keys = set(tensors)
    ours: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    missing: list[str] = []
    for rule in _applicable(arch, skeleton):
        names = rule.hf_names
        used.update(n for n in names if n in keys)
        if rule.ours in tied:  # a tied copy: the weight it aliases is read by its own rule
            continue
        absent = [n for n in names if n not in keys]
        if absent:
            missing += absent
            continue
        parts = [tensors[n].t() if rule.transpose else tensors[n] for n in names]
        if rule.op == "concat" and len({tuple(p.shape[1:]) for p in parts}) > 1:
            shapes = {n: tuple(tensors[n].shape) for n in names}
            raise CheckpointError(f"{source}: keys {shapes} cannot be stacked into {rule.ours!r}")
        t = torch.cat(parts, dim=0) if rule.op == "concat" else parts[0]
        want = tuple(own[rule.ours].shape)
        if tuple(t.shape) != want:
            got = ", ".join(f"{n!r} {tuple(tensors[n].shape)}" for n in names)
            raise CheckpointError(
                f"{source}: key {got} gives {rule.ours!r} shape {tuple(t.shape)}; the config "
                f"(model_type={arch.model_type!r}) implies {want}"
            )
        ours[rule.ours] = t
    ignored = {k for k in keys if any(re.fullmatch(p, k) for p in arch.keymap.ignore)}
    unknown = sorted(keys - used - ignored)
    if missing or unknown:
        raise CheckpointError(
            f"{source}: {key_mismatch(sorted(missing), unknown)} for a {arch.keymap.hf_class}"
        )
    _check_copies(arch, skeleton, tensors, ours, source)
    model = EncoderDecoder(cfg)
    check_and_load(
        model,
        {k: v.float() if v.is_floating_point() else v for k, v in ours.items()},
        source,
        skip=tuple(tied),
    )
    return model


def _check_copies(
    arch: Seq2SeqArchitecture,
    skeleton: EncoderDecoder,
    tensors: Mapping[str, torch.Tensor],
    ours: Mapping[str, torch.Tensor],
    source: Path,
) -> None:
    """HF tensors that the attnkit model keeps once (a tied copy, or a key map's ``copies``)
    must equal the tensor that is read: an untied checkpoint whose tables differ would
    otherwise convert to a model with other outputs, silently."""
    params = dict(skeleton.named_parameters(remove_duplicate=False))
    pairs: list[tuple[str, str, torch.Tensor]] = [
        (copy, original, tensors[original])
        for copy, original in arch.keymap.copies
        if copy in tensors and original in tensors
    ]
    tied = set(skeleton.tied_keys())
    for rule in _applicable(arch, skeleton):
        if rule.ours not in tied or len(rule.hf_names) != 1 or rule.hf_names[0] not in tensors:
            continue
        target = next((k for k in ours if params.get(k) is params[rule.ours]), None)
        if target is not None:
            pairs.append((rule.hf_names[0], target, ours[target]))
    for copy, original, value in pairs:
        t = tensors[copy]
        if t.shape != value.shape or not torch.equal(t.to(value.dtype), value):
            diff = (
                f"max |difference| {(t.double() - value.double()).abs().max().item():.3g}"
                if t.shape == value.shape
                else f"shapes {tuple(t.shape)} and {tuple(value.shape)}"
            )
            raise CheckpointError(
                f"{source}: {copy!r} differs from the table it should equal ({original!r}; "
                f"{diff}); attnkit's {arch.model_type} keeps one table for both, so this "
                f"untied checkpoint cannot be converted without changing its outputs"
            )


def to_hf_state_dict(
    arch: Seq2SeqArchitecture, model: EncoderDecoder
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(HF tensors, HF config) of an attnkit encoder-decoder of ``arch``'s layout; a config
    field that layout cannot express is a ValueError naming it and the value it needs.

    Args:
        arch: the HF architecture to export as.
        model: the attnkit encoder-decoder.

    Raises:
        ValueError: for a config field ``arch`` cannot express.

    Examples:
        >>> tensors, hf_cfg = to_hf_state_dict(t5.ARCHITECTURE, build_model("tiny-t5"))
    """
    cfg = model.config
    need = arch.exportable
    bad = {k: getattr(cfg, k) for k, v in need.items() if getattr(cfg, k) != v}
    if bad:
        raise ValueError(
            f"this model cannot be exported as HF {arch.model_type}: config fields "
            f"{bad} must be {{{', '.join(f'{k}: {need[k]!r}' for k in bad)}}}"
        )
    hf_cfg = arch.config_to_hf(cfg)
    own = model.state_dict()
    tied = set(model.tied_keys())
    out: dict[str, torch.Tensor] = {}
    for rule in _applicable(arch, model):
        if rule.ours in tied:
            continue
        t = own[rule.ours]
        names = rule.hf_names
        pieces = t.chunk(len(names), dim=0) if rule.op == "concat" else (t,)  # [q | k | v]
        for name, piece in zip(names, pieces):
            piece = piece.t() if rule.transpose else piece
            out[name] = piece.contiguous().clone()
    return out, hf_cfg


def architecture_for(
    architectures: Mapping[str, Seq2SeqArchitecture], cfg: EncDecConfig
) -> Seq2SeqArchitecture:
    """The architecture whose layout ``cfg`` has (the first whose exportable fields all
    match); a ValueError naming, for each, the fields that differ."""
    differ: dict[str, dict[str, Any]] = {}
    for name, arch in architectures.items():
        bad = {k: getattr(cfg, k) for k, v in arch.exportable.items() if getattr(cfg, k) != v}
        if not bad:
            return arch
        differ[name] = bad
    raise ValueError(
        "this encoder-decoder has none of the layouts HF knows: "
        + "; ".join(
            f"{name} needs {', '.join(f'{k}={architectures[name].exportable[k]!r}' for k in bad)}"
            f" (has {bad})"
            for name, bad in differ.items()
        )
    )
