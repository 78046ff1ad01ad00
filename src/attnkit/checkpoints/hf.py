"""Hugging Face <-> attnkit checkpoints, one declarative key map per architecture.

A map is a tuple of :class:`Rule`: Hugging Face name(s) -> attnkit name, and how the tensor
changes on the way:

* ``transpose``: GPT-2 stores its linears as ``Conv1D`` with weights (in, out); attnkit uses
  ``nn.Linear`` (out, in).
* ``concat``: BERT has separate query/key/value linears; attnkit has one fused ``qkv_proj``
  whose rows are ``[q | k | v]``. Several HF names become one attnkit tensor (rows stacked), and
  exporting splits it again.

``{i}`` in a name stands for the layer index. Every tensor is checked by shape against the
model built from the converted config; a missing or unknown key is reported by name, with the
file it came from. Keys in ``ignore`` (buffers, tied copies, pre-training heads attnkit does not
build) are skipped, and only those.

Supported: ``model_type`` "bert" (BertModel, BertForMaskedLM, BertForSequenceClassification,
sentence-transformers BERT models) and "gpt2" (GPT2Model, GPT2LMHeadModel).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from attnkit._util.fs import atomic_write_bytes, atomic_write_json
from attnkit.checkpoints.io import (
    CONFIG_NAME,
    CheckpointError,
    check_and_load,
    load_tokenizer,
    read_json,
    read_tensors,
    save_tensors,
)
from attnkit.models.common import ModelBase

if TYPE_CHECKING:  # pragma: no cover - for static tools only
    from tokenizers import Tokenizer


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


def _linear(hf: str, ours: str, transpose: bool = False) -> tuple[Rule, Rule]:
    return (Rule(f"{hf}.weight", f"{ours}.weight", transpose), Rule(f"{hf}.bias", f"{ours}.bias"))


def _norm(hf: str, ours: str) -> tuple[Rule, Rule]:
    return (Rule(f"{hf}.weight", f"{ours}.weight"), Rule(f"{hf}.bias", f"{ours}.bias"))


_L = "encoder.layer.{i}"
_QKV = tuple(f"{_L}.attention.self.{p}" for p in ("query", "key", "value"))

BERT = KeyMap(
    model=(
        Rule("embeddings.word_embeddings.weight", "embed.tok.weight"),
        Rule("embeddings.position_embeddings.weight", "embed.pos.weight"),
        Rule("embeddings.token_type_embeddings.weight", "embed.types.weight"),
        *_norm("embeddings.LayerNorm", "embed.norm"),
    ),
    layer=(
        Rule(tuple(f"{p}.weight" for p in _QKV), "blocks.{i}.attn.qkv_proj.weight"),
        Rule(tuple(f"{p}.bias" for p in _QKV), "blocks.{i}.attn.qkv_proj.bias"),
        *_linear(f"{_L}.attention.output.dense", "blocks.{i}.attn.out_proj"),
        *_norm(f"{_L}.attention.output.LayerNorm", "blocks.{i}.norm1"),
        *_linear(f"{_L}.intermediate.dense", "blocks.{i}.mlp.up"),
        *_linear(f"{_L}.output.dense", "blocks.{i}.mlp.down"),
        *_norm(f"{_L}.output.LayerNorm", "blocks.{i}.norm2"),
    ),
    heads={
        "pooler": _linear("pooler.dense", "pooler.dense"),
        "mlm": (
            *_linear("cls.predictions.transform.dense", "mlm.dense"),
            *_norm("cls.predictions.transform.LayerNorm", "mlm.norm"),
            Rule("cls.predictions.bias", "mlm.bias"),
            Rule("cls.predictions.decoder.weight", "mlm.decoder.weight"),
        ),
        "classification": _linear("classifier", "classifier.proj"),
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

_H = "h.{i}"
GPT2 = KeyMap(
    model=(
        Rule("wte.weight", "embed.tok.weight"),
        Rule("wpe.weight", "embed.pos.weight"),
        *_norm("ln_f", "norm"),
    ),
    layer=(
        *_norm(f"{_H}.ln_1", "blocks.{i}.norm1"),
        *_linear(f"{_H}.attn.c_attn", "blocks.{i}.attn.qkv_proj", transpose=True),
        *_linear(f"{_H}.attn.c_proj", "blocks.{i}.attn.out_proj", transpose=True),
        *_norm(f"{_H}.ln_2", "blocks.{i}.norm2"),
        *_linear(f"{_H}.mlp.c_fc", "blocks.{i}.mlp.up", transpose=True),
        *_linear(f"{_H}.mlp.c_proj", "blocks.{i}.mlp.down", transpose=True),
    ),
    heads={"lm": (Rule("lm_head.weight", "lm_head.proj.weight"),)},
    ignore=(r"h\.\d+\.attn\.(bias|masked_bias)",),
    prefix="transformer.",
    hf_class={"none": "GPT2Model", "lm": "GPT2LMHeadModel"},
)


# --------------------------------------------------------------------------------------------
# configs
# --------------------------------------------------------------------------------------------
_ACTIVATIONS = {
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "relu": "relu",
}
_ACT_BACK = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu"}


def _get(hf: Mapping[str, Any], key: str, path: Path, default: Any = ...) -> Any:
    if key in hf:
        return hf[key]
    if default is ...:
        raise CheckpointError(f"{path}: missing config key {key!r}")
    return default


def _activation(name: Any, key: str, path: Path) -> str:
    if name not in _ACTIVATIONS:
        raise CheckpointError(
            f"{path}: {key}={name!r} is not supported; expected one of {sorted(_ACTIVATIONS)}"
        )
    return _ACTIVATIONS[name]


def _id2label(hf: Mapping[str, Any], path: Path) -> tuple[str, ...] | None:
    """HF's ``id2label`` ({"0": "neg", ...}) as a tuple of names by class id; None without."""
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


def bert_config(hf: Mapping[str, Any], path: Path, head: str, has_pooler: bool):
    from attnkit.models import ModelConfig

    pet = hf.get("position_embedding_type", "absolute")
    if pet != "absolute":
        raise CheckpointError(
            f"{path}: position_embedding_type={pet!r} is not supported; expected 'absolute'"
        )
    return ModelConfig(
        arch="bert",
        vocab_size=_get(hf, "vocab_size", path),
        n_layer=_get(hf, "num_hidden_layers", path),
        n_head=_get(hf, "num_attention_heads", path),
        d_model=_get(hf, "hidden_size", path),
        d_ff=_get(hf, "intermediate_size", path),
        max_seq_len=_get(hf, "max_position_embeddings", path),
        positional="learned",
        norm="layernorm",
        norm_eps=float(_get(hf, "layer_norm_eps", path, 1e-12)),
        norm_placement="post",
        mlp=_activation(_get(hf, "hidden_act", path, "gelu"), "hidden_act", path),
        dropout=float(hf.get("hidden_dropout_prob", 0.1)),
        attn_dropout=float(hf.get("attention_probs_dropout_prob", 0.1)),
        head=head,
        type_vocab_size=_get(hf, "type_vocab_size", path, 2),
        embed_norm=True,
        final_norm=False,
        pooler=has_pooler,
        pad_token_id=hf.get("pad_token_id", 0),
        num_labels=len(hf["id2label"])
        if isinstance(hf.get("id2label"), dict)
        else hf.get("num_labels", 2),
        id2label=_id2label(hf, path) if head == "classification" else None,
        tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
        initializer_range=float(hf.get("initializer_range", 0.02)),
    )


def gpt2_config(hf: Mapping[str, Any], path: Path, head: str, has_pooler: bool):
    from attnkit.models import ModelConfig

    for key in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn"):
        if hf.get(key):
            raise CheckpointError(f"{path}: {key}=True is not supported; expected False")
    if hf.get("scale_attn_weights", True) is False:
        raise CheckpointError(f"{path}: scale_attn_weights=False is not supported; expected True")
    return ModelConfig(
        arch="gpt",
        vocab_size=_get(hf, "vocab_size", path),
        n_layer=_get(hf, "n_layer", path),
        n_head=_get(hf, "n_head", path),
        d_model=_get(hf, "n_embd", path),
        d_ff=hf.get("n_inner"),
        max_seq_len=_get(hf, "n_positions", path),
        positional="learned",
        norm="layernorm",
        norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)),
        norm_placement="pre",
        mlp=_activation(hf.get("activation_function", "gelu_new"), "activation_function", path),
        dropout=float(hf.get("resid_pdrop", 0.1)),
        attn_dropout=float(hf.get("attn_pdrop", 0.1)),
        head=head,
        tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
        initializer_range=float(hf.get("initializer_range", 0.02)),
    )


def bert_config_to_hf(cfg) -> dict[str, Any]:
    out = {
        "model_type": "bert",
        "architectures": [BERT.hf_class[cfg.head]],
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "num_hidden_layers": cfg.n_layer,
        "num_attention_heads": cfg.n_head,
        "intermediate_size": cfg.ff_dim,
        "hidden_act": _ACT_BACK[cfg.mlp],
        "max_position_embeddings": cfg.max_seq_len,
        "type_vocab_size": cfg.type_vocab_size,
        "layer_norm_eps": cfg.norm_eps,
        "hidden_dropout_prob": cfg.dropout,
        "attention_probs_dropout_prob": cfg.attn_dropout,
        "pad_token_id": cfg.pad_token_id if cfg.pad_token_id is not None else 0,
        "position_embedding_type": "absolute",
        "initializer_range": cfg.initializer_range,
        "tie_word_embeddings": cfg.tie_embeddings,
    }
    if cfg.head == "classification":
        names = cfg.id2label or tuple(f"LABEL_{i}" for i in range(cfg.num_labels))
        out["id2label"] = {str(i): name for i, name in enumerate(names)}
        out["label2id"] = {name: i for i, name in enumerate(names)}
    return out


def gpt2_config_to_hf(cfg) -> dict[str, Any]:
    return {
        "model_type": "gpt2",
        "architectures": [GPT2.hf_class[cfg.head]],
        "vocab_size": cfg.vocab_size,
        "n_embd": cfg.d_model,
        "n_layer": cfg.n_layer,
        "n_head": cfg.n_head,
        "n_inner": cfg.d_ff,
        "n_positions": cfg.max_seq_len,
        "activation_function": _ACT_BACK[cfg.mlp],
        "layer_norm_epsilon": cfg.norm_eps,
        "resid_pdrop": cfg.dropout,
        "embd_pdrop": cfg.dropout,
        "attn_pdrop": cfg.attn_dropout,
        "initializer_range": cfg.initializer_range,
        "tie_word_embeddings": cfg.tie_embeddings,
    }


@dataclass(frozen=True)
class Architecture:
    keymap: KeyMap
    config_from_hf: Callable[..., Any]
    config_to_hf: Callable[[Any], dict[str, Any]]
    # (ModelConfig fields, required values) that a model must have to be exported
    exportable: dict[str, Any]


ARCHITECTURES: dict[str, Architecture] = {
    "bert": Architecture(
        BERT,
        bert_config,
        bert_config_to_hf,
        dict(
            arch="bert",
            positional="learned",
            norm="layernorm",
            norm_placement="post",
            embed_norm=True,
            final_norm=False,
            bias=True,
            attention="exact",
            window=None,
            n_kv_head=None,
        ),
    ),
    "gpt2": Architecture(
        GPT2,
        gpt2_config,
        gpt2_config_to_hf,
        dict(
            arch="gpt",
            positional="learned",
            norm="layernorm",
            norm_placement="pre",
            embed_norm=False,
            final_norm=True,
            bias=True,
            attention="exact",
            window=None,
            n_kv_head=None,
            type_vocab_size=0,
        ),
    ),
}
_BY_ARCH = {"bert": "bert", "gpt": "gpt2"}


# --------------------------------------------------------------------------------------------
# HF -> attnkit
# --------------------------------------------------------------------------------------------
def _find_weights(directory: Path) -> Path:
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (directory / name).is_file():
            return directory / name
    raise CheckpointError(f"{directory}: no model.safetensors or pytorch_model.bin found")


def _detect_head(model_type: str, hf_cfg: Mapping[str, Any], keys: set[str]) -> str:
    classes = hf_cfg.get("architectures") or []
    keymap = ARCHITECTURES[model_type].keymap
    for head, cls in keymap.hf_class.items():
        if cls in classes and head != "none":
            return head
    for head, rules in keymap.heads.items():  # no class named: look at the keys
        if (
            head != "pooler"
            and head in keymap.hf_class
            and any(r.hf_names[0] in keys for r in rules)
        ):
            return head
    return "none"


def convert_from_hf(
    tensors: Mapping[str, torch.Tensor],
    hf_cfg: Mapping[str, Any],
    source: str | Path = "<tensors>",
    pooling: str | None = None,
) -> ModelBase:
    """Build the attnkit model described by an HF config and fill it from HF tensors
    (``pooling``: the sentence pooling rule, when the directory names one)."""
    from attnkit.models import build_model

    source = Path(source)
    model_type = hf_cfg.get("model_type")
    if model_type not in ARCHITECTURES:
        raise CheckpointError(
            f"{source}: model_type={model_type!r} is not supported; expected one "
            f"of {sorted(ARCHITECTURES)}"
        )
    arch = ARCHITECTURES[model_type]
    keymap = arch.keymap
    # strip the backbone prefix of task models ("bert.encoder..." -> "encoder...")
    original = {(k[len(keymap.prefix) :] if k.startswith(keymap.prefix) else k): k for k in tensors}
    stripped = {name: tensors[k] for name, k in original.items()}
    keys = set(stripped)
    uses_prefix = any(k.startswith(keymap.prefix) for k in tensors)
    head = _detect_head(model_type, hf_cfg, keys)
    has_pooler = any(r.hf_names[0] in keys for r in keymap.heads.get("pooler", ()))
    try:
        cfg = arch.config_from_hf(hf_cfg, source, head, has_pooler)
    except (TypeError, ValueError) as e:
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(f"{source}: config cannot be converted: {e}") from e
    if pooling is not None:
        cfg = cfg.replace(pooling=pooling)
    model = build_model(cfg)
    backbone = keymap.backbone_rules(cfg.n_layer, has_pooler)
    rules = backbone + keymap.head_rules(head)
    in_backbone = {n for r in backbone for n in r.hf_names}

    def file_name(n: str) -> str:  # a name as the file spells it
        if n in original:
            return original[n]
        return keymap.prefix + n if uses_prefix and n in in_backbone else n

    own = model.state_dict()
    tied = set(model.tied_keys())
    ours: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    missing: list[str] = []
    for rule in rules:
        if rule.ours in tied:  # the tied copy is the embedding matrix; use it if present
            used.update(n for n in rule.hf_names if n in keys)
            continue
        absent = [n for n in rule.hf_names if n not in keys]
        if absent:
            missing += absent
            used.update(n for n in rule.hf_names if n in keys)  # known, just incomplete
            continue
        parts = [stripped[n].t() if rule.transpose else stripped[n] for n in rule.hf_names]
        if rule.op == "concat" and len({tuple(p.shape[1:]) for p in parts}) > 1:
            shapes = {file_name(n): tuple(stripped[n].shape) for n in rule.hf_names}
            raise CheckpointError(f"{source}: keys {shapes} cannot be stacked into {rule.ours!r}")
        t = torch.cat(parts, dim=0) if rule.op == "concat" else parts[0]
        want = tuple(own[rule.ours].shape)
        if tuple(t.shape) != want:
            got = ", ".join(f"{file_name(n)!r} {tuple(stripped[n].shape)}" for n in rule.hf_names)
            how = (
                " (transposed)" if rule.transpose else (" (stacked)" if rule.op == "concat" else "")
            )
            raise CheckpointError(
                f"{source}: key {got} gives {rule.ours!r} shape {tuple(t.shape)}{how}; "
                f"the config (model_type={model_type!r}) implies {want}"
            )
        ours[rule.ours] = t
        used.update(rule.hf_names)
    ignored = {k for k in keys if any(re.fullmatch(p, k) for p in keymap.ignore)}
    unknown = sorted(file_name(k) for k in keys - used - ignored)
    missing = [file_name(n) for n in missing]
    if missing or unknown:
        problems = []
        if missing:
            problems.append(f"missing key(s) {sorted(missing)}")
        if unknown:
            problems.append(f"unexpected key(s) {unknown}")
        raise CheckpointError(
            f"{source}: {'; '.join(problems)} for a {keymap.hf_class.get(head, model_type)}"
        )
    # shapes, dtypes and completeness are checked before anything is copied
    check_and_load(
        model,
        {k: v.float() if v.is_floating_point() else v for k, v in ours.items()},
        source,
        skip=tuple(tied),
    )
    return model


def _sentence_config(directory: Path) -> dict[str, Any]:
    """Pooling, normalisation and length of a sentence-transformers directory, if it is one."""
    out: dict[str, Any] = {}
    modules = directory / "modules.json"
    if not modules.is_file():
        return out
    mods = read_json_list(modules)
    types = [m.get("type", "") for m in mods]
    out["normalize"] = any(t.endswith("Normalize") for t in types)
    for m in mods:
        if m.get("type", "").endswith("Pooling"):
            pcfg = read_json(directory / m.get("path", "") / "config.json")
            if pcfg.get("pooling_mode_mean_tokens"):
                out["pooling"] = "mean"
            elif pcfg.get("pooling_mode_cls_token"):
                out["pooling"] = "cls"
            else:
                modes = sorted(k for k, v in pcfg.items() if k.startswith("pooling_mode") and v)
                raise CheckpointError(
                    f"{directory / m.get('path', '')}/config.json: pooling "
                    f"{modes} is not supported; expected mean or cls tokens"
                )
    sbert = directory / "sentence_bert_config.json"
    if sbert.is_file():
        out["max_seq_length"] = read_json(sbert).get("max_seq_length")
    return out


def read_json_list(path: Path) -> list[dict[str, Any]]:
    import json

    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: cannot be read as JSON: {e}") from e
    if not isinstance(data, list):
        raise CheckpointError(f"{path}: expected a JSON list, got {type(data).__name__}")
    return data


def load_hf_tokenizer(directory: Path, max_length: int | None) -> Tokenizer | None:
    """tokenizer.json if present; else WordPiece from vocab.txt (BERT) or byte-level BPE from
    vocab.json + merges.txt (GPT-2); None when the directory has none of them."""
    if (directory / "tokenizer.json").is_file():
        return load_tokenizer(directory / "tokenizer.json", max_length)
    if (directory / "vocab.txt").is_file():
        from tokenizers.implementations import BertWordPieceTokenizer

        tcfg = directory / "tokenizer_config.json"
        lower = read_json(tcfg).get("do_lower_case", True) if tcfg.is_file() else True
        tok = BertWordPieceTokenizer(str(directory / "vocab.txt"), lowercase=lower)._tokenizer
    elif (directory / "vocab.json").is_file() and (directory / "merges.txt").is_file():
        from tokenizers.implementations import ByteLevelBPETokenizer

        tok = ByteLevelBPETokenizer(
            str(directory / "vocab.json"), str(directory / "merges.txt")
        )._tokenizer
    else:
        return None
    if max_length is not None:
        tok.enable_truncation(max_length)
    return tok


def load_hf_dir(directory: str | Path) -> tuple[ModelBase, dict[str, Any], Tokenizer | None]:
    """(model, meta dict, tokenizer) of a Hugging Face directory (config.json + weights); for
    a sentence-transformers directory the pooling goes into the config and the meta dict holds
    the maximum length and the normalisation."""
    directory = Path(directory)
    hf_cfg = read_json(directory / CONFIG_NAME)
    weights = _find_weights(directory)
    sentence = _sentence_config(directory)
    model = convert_from_hf(read_tensors(weights), hf_cfg, weights, sentence.get("pooling"))
    meta: dict[str, Any] = {}
    if sentence.get("max_seq_length"):
        meta["max_length"] = sentence["max_seq_length"]
    if "normalize" in sentence:
        meta["normalize"] = sentence["normalize"]
    max_len = meta.get("max_length") or model.config.max_seq_len
    return model, meta, load_hf_tokenizer(directory, max_len)


# --------------------------------------------------------------------------------------------
# attnkit -> HF
# --------------------------------------------------------------------------------------------
def to_hf_state_dict(model: ModelBase) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(HF tensors, HF config) for an attnkit model of an exportable layout."""
    cfg = model.config
    model_type = _BY_ARCH[cfg.arch]
    arch = ARCHITECTURES[model_type]
    bad = {k: getattr(cfg, k) for k, v in arch.exportable.items() if getattr(cfg, k) != v}
    if bad:
        raise ValueError(
            f"this model cannot be exported as HF {model_type}: config fields "
            f"{bad} must be {{{', '.join(f'{k}: {arch.exportable[k]!r}' for k in bad)}}}"
        )
    if cfg.arch == "bert" and cfg.head == "classification" and not cfg.pooler:
        raise ValueError(
            "a classification model without a pooler cannot be exported as HF "
            "BertForSequenceClassification (which classifies the pooled first "
            "token); expected config.pooler=True"
        )
    if cfg.mlp not in _ACT_BACK:
        raise ValueError(
            f"mlp={cfg.mlp!r} cannot be exported as HF {model_type}; expected one "
            f"of {sorted(_ACT_BACK)}"
        )
    keymap = arch.keymap
    own = model.state_dict()
    tied = set(model.tied_keys())
    prefix = keymap.prefix if cfg.head != "none" else ""
    has_pooler = bool(cfg.pooler) if cfg.arch == "bert" else False
    out: dict[str, torch.Tensor] = {}
    for rules, pre in (
        (keymap.backbone_rules(cfg.n_layer, has_pooler), prefix),
        (keymap.head_rules(cfg.head), ""),
    ):
        for rule in rules:
            if rule.ours in tied:
                continue
            t = own[rule.ours]
            names = rule.hf_names
            pieces = t.chunk(len(names), dim=0) if rule.op == "concat" else (t,)  # [q | k | v]
            for name, piece in zip(names, pieces):
                piece = piece.t() if rule.transpose else piece
                out[pre + name] = piece.contiguous().clone()
    return out, arch.config_to_hf(cfg)


def export_hf(model: ModelBase, directory: str | Path) -> Path:
    """Write ``model`` as a Hugging Face directory that ``transformers`` loads."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors, hf_cfg = to_hf_state_dict(model)
    save_tensors(directory / "model.safetensors", tensors, metadata={"format": "pt"})
    tok = model.meta.tokenizer
    if tok is not None:
        atomic_write_bytes(directory / "tokenizer.json", tok.to_str().encode())
    atomic_write_json(directory / CONFIG_NAME, hf_cfg)
    return directory
