"""Hugging Face <-> attnkit conversion, driven by one declarative key map per architecture.

The maps live in :mod:`attnkit.checkpoints.hf.bert`, :mod:`attnkit.checkpoints.hf.roformer`,
:mod:`attnkit.checkpoints.hf.gpt2` and :mod:`attnkit.checkpoints.hf.llama` (parts in :mod:`attnkit.checkpoints.hf.keymap`); this
module applies them (:mod:`attnkit.checkpoints.hf.directory` reads a model directory and calls
:func:`convert_from_hf`). Every tensor is
checked by shape against the model built from the converted config; a missing or unknown key
is reported by name, with the file it came from. Keys in a map's ``ignore`` (buffers, tied
copies, pre-training heads attnkit does not build) are skipped, and only those.

Supported: ``model_type`` "bert" (BertModel, BertForMaskedLM, BertForSequenceClassification,
sentence-transformers BERT models), "roformer" (RoFormerModel, RoFormerForMaskedLM: BERT
with rotary positions), "gpt2" (GPT2Model, GPT2LMHeadModel) and "llama" (LlamaModel,
LlamaForCausalLM); the encoder-decoders
"marian", "bart" and "t5" (their ForConditionalGeneration classes) through
:mod:`attnkit.checkpoints.hf.seq2seq`.

A model without biases (``config.bias=False``) has no tensor for a map's bias rules: an
architecture without them (Llama) has none either; one whose every layer has a bias (GPT-2,
``zero_bias``) gets zeros on export and must hold only zeros to be read as bias-free. Export
picks the architecture that holds the model (:mod:`attnkit.checkpoints.hf.exportable`: GPT-2
for learned positions, Llama for RoPE/RMSNorm/SwiGLU; BERT for learned positions, RoFormer for
RoPE) and otherwise says what to change.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from attnkit._util.fs import atomic_write_bytes, atomic_write_json
from attnkit.checkpoints.format import (
    CONFIG_NAME,
    CheckpointError,
    check_and_load,
    key_mismatch,
    save_tensors,
)
from attnkit.checkpoints.hf import (
    bart,
    bert,
    exportable,
    gpt2,
    llama,
    marian,
    roformer,
    seq2seq,
    t5,
)
from attnkit.checkpoints.hf.keymap import ACTIVATIONS_TO_HF, Architecture, Rule
from attnkit.models.common import ModelBase
from attnkit.models.encdec import EncoderDecoder

ARCHITECTURES: dict[str, Architecture] = {
    a.model_type: a
    for a in (bert.ARCHITECTURE, roformer.ARCHITECTURE, gpt2.ARCHITECTURE, llama.ARCHITECTURE)
}
SEQ2SEQ_ARCHITECTURES: dict[str, seq2seq.Seq2SeqArchitecture] = {
    a.model_type: a for a in (marian.ARCHITECTURE, bart.ARCHITECTURE, t5.ARCHITECTURE)
}


# --------------------------------------------------------------------------------------------
# HF -> attnkit
# --------------------------------------------------------------------------------------------
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
    config_path: str | Path | None = None,
) -> ModelBase:
    """Build the attnkit model described by an HF config and fill it from HF tensors.

    The head is found from the config's ``architectures`` (else from the keys); every tensor
    is checked by shape against a meta-device model before anything is allocated, and a
    missing or unknown key is named. Encoder-decoders (Marian, BART, T5) go to
    :func:`attnkit.checkpoints.hf.seq2seq.convert_from_hf`.

    Args:
        tensors: HF state_dict, name -> tensor of the shape the HF model gives it, e.g.
            ``wte.weight`` (vocab_size, n_embd).
        hf_cfg: the parsed HF config.json.
        source: the weights' file, named in errors.
        pooling: the sentence pooling rule, when the directory names one.
        config_path: the config's file, named by config errors; default ``source``.

    Raises:
        CheckpointError: for an unsupported ``model_type`` or config, or keys and shapes that
            do not fit the config.

    Examples:
        >>> model = convert_from_hf(read_tensors(weights), read_json(config), weights)
    """
    from attnkit.models import build_model

    source = Path(source)
    cfg_source = Path(config_path) if config_path is not None else source  # config errors
    model_type = hf_cfg.get("model_type")
    if model_type in SEQ2SEQ_ARCHITECTURES:
        return seq2seq.convert_from_hf(
            SEQ2SEQ_ARCHITECTURES[model_type], tensors, hf_cfg, source, cfg_source
        )
    if model_type not in ARCHITECTURES:
        raise CheckpointError(
            f"{cfg_source}: model_type={model_type!r} is not supported; expected one "
            f"of {sorted([*ARCHITECTURES, *SEQ2SEQ_ARCHITECTURES])}"
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
        cfg = arch.config_from_hf(hf_cfg, cfg_source, head, has_pooler)
    except (TypeError, ValueError) as e:
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(f"{cfg_source}: config cannot be converted: {e}") from e
    if pooling is not None:
        cfg = cfg.replace(pooling=pooling)
    with torch.device("meta"):  # the shapes the config implies, checked before allocating
        skeleton = build_model(cfg)
    backbone = keymap.backbone_rules(cfg.n_layer, has_pooler)
    rules = backbone + keymap.head_rules(head)
    in_backbone = {n for r in backbone for n in r.hf_names}

    def file_name(n: str) -> str:  # a name as the file spells it
        if n in original:
            return original[n]
        return keymap.prefix + n if uses_prefix and n in in_backbone else n

    own = skeleton.state_dict()
    tied = set(skeleton.tied_keys())
    ours: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    missing: list[str] = []
    for rule in rules:
        if rule.ours in tied:  # the tied copy is the embedding matrix; use it if present
            used.update(n for n in rule.hf_names if n in keys)
            continue
        if rule.ours not in own:  # a bias of a bias-free model: none, or zeros in the file
            if arch.zero_bias:
                _check_zero(rule, stripped, file_name, source)
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
        if arch.interleaved_rope:
            t = rotary_rows(t, cfg, rule.ours, to_hf=False)
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
        raise CheckpointError(
            f"{source}: {key_mismatch(sorted(missing), unknown)} for a "
            f"{keymap.hf_class.get(head, model_type)}"
        )
    # shapes, dtypes and completeness are checked before anything is copied
    model = build_model(cfg)
    check_and_load(
        model,
        {k: v.float() if v.is_floating_point() else v for k, v in ours.items()},
        source,
        skip=tuple(tied),
    )
    return model


def _check_zero(
    rule: Rule, tensors: Mapping[str, torch.Tensor], file_name: Any, source: Path
) -> None:
    """A bias the model does not have must be absent or all zeros in the file."""
    for n in rule.hf_names:
        if n in tensors and bool(tensors[n].ne(0).any()):
            raise CheckpointError(
                f"{source}: key {file_name(n)!r} holds non-zero values, but the config says "
                f"bias=false (a bias-free model); expected zeros, or a config without bias=false"
            )


# --------------------------------------------------------------------------------------------
# attnkit -> HF
# --------------------------------------------------------------------------------------------
def to_hf_state_dict(model: ModelBase) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(HF tensors, HF config) for an attnkit model of an exportable layout.

    The architecture is chosen by :func:`~attnkit.checkpoints.hf.exportable.choose` (or, for
    an encoder-decoder, by its layout); fused tensors are split back into HF's, tied copies
    left out.

    Args:
        model: the attnkit model.

    Raises:
        ValueError: if no HF architecture holds the model, saying what to change.

    Examples:
        >>> tensors, hf_cfg = to_hf_state_dict(build_model("tiny"))
        >>> hf_cfg["model_type"]  # 'gpt2'
    """
    if isinstance(model, EncoderDecoder):
        arch_s2s = seq2seq.architecture_for(SEQ2SEQ_ARCHITECTURES, model.config)
        return seq2seq.to_hf_state_dict(arch_s2s, model)
    cfg = model.config
    arch = exportable.choose(cfg, list(ARCHITECTURES.values()))  # or a ValueError saying why
    if cfg.arch == "bert" and cfg.head == "classification" and not cfg.pooler:
        raise ValueError(
            "a classification model without a pooler cannot be exported as HF "
            "BertForSequenceClassification (which classifies the pooled first "
            "token); expected config.pooler=True"
        )
    if cfg.arch == "bert" and cfg.mlp not in ACTIVATIONS_TO_HF:
        raise ValueError(
            f"mlp={cfg.mlp!r} cannot be exported as HF {arch.model_type}; expected one "
            f"of {sorted(ACTIVATIONS_TO_HF)}"
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
            if rule.ours in own:
                t = own[rule.ours]
            elif arch.zero_bias and rule.ours.endswith(".bias"):  # bias-free: zero biases
                weight = own[rule.ours[: -len("bias")] + "weight"]
                t = torch.zeros(weight.shape[0], dtype=weight.dtype, device=weight.device)
            else:
                continue  # a bias the model and the architecture both go without
            if arch.interleaved_rope:
                t = rotary_rows(t, cfg, rule.ours, to_hf=True)
            names = rule.hf_names
            pieces = t.split(_split_sizes(cfg, rule, t.shape[0]), dim=0)  # [q | k | v], ...
            for name, piece in zip(names, pieces):
                piece = piece.t() if rule.transpose else piece
                out[pre + name] = piece.contiguous().clone()
    if arch.extra_tensors is not None:
        out.update({prefix + k: v for k, v in arch.extra_tensors(cfg).items()})
    return out, arch.config_to_hf(cfg)


def rotary_rows(t: torch.Tensor, cfg: Any, ours: str, *, to_hf: bool) -> torch.Tensor:
    """Permute the query and key rows of each head of a fused ``qkv_proj`` weight or bias
    between attnkit's RoPE layout (channel i paired with i + D/2) and the interleaved one
    (pairs (0, 1), (2, 3), ...); other tensors, and the value rows, are returned as they are.

    Queries and keys get the same permutation, so every attention score is unchanged.

    Args:
        t: the tensor of attnkit name ``ours``; for ``qkv_proj`` (Hq*D + 2*Hkv*D, ...) rows.
        cfg: the model's config (heads and head_dim).
        ours: the attnkit state_dict name.
        to_hf: attnkit -> interleaved when True, back when False.

    Examples:
        >>> hf_w = rotary_rows(w, cfg, "blocks.0.attn.qkv_proj.weight", to_hf=True)  # w (3C, C)
    """
    if ".attn.qkv_proj." not in ours:
        return t
    d = cfg.head_dim
    half = torch.arange(d // 2)
    order = torch.stack((half, half + d // 2), dim=1).flatten()  # interleaved row -> half row
    if not to_hf:
        order = torch.argsort(order)
    heads = cfg.n_heads + cfg.n_kv_heads  # the query and key heads, in that order
    qk = t[: heads * d].reshape(heads, d, *t.shape[1:])[:, order].reshape(heads * d, *t.shape[1:])
    return torch.cat((qk, t[heads * d :]), dim=0)


def _split_sizes(cfg: Any, rule: Rule, rows: int) -> list[int]:
    """Rows of each HF tensor in the attnkit tensor of ``rule`` (equal parts, except a fused
    qkv projection with fewer key/value heads: Hq*D, Hkv*D, Hkv*D)."""
    n = len(rule.hf_names)
    if n == 3 and ".qkv_proj." in rule.ours:
        q, kv = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
        return [q, kv, kv]
    return [rows // n] * n


def export_hf(model: ModelBase, directory: str | Path) -> Path:
    """Write ``model`` as a Hugging Face directory that ``transformers`` loads:
    model.safetensors, config.json and, when the model has one, tokenizer.json.

    Nothing is written when the model has no HF form.

    Args:
        model: the attnkit model.
        directory: where to write it (made if needed).

    Returns:
        ``directory`` as a Path.

    Raises:
        ValueError: if no HF architecture holds the model, saying what to change.

    Examples:
        >>> export_hf(attnkit.load("runs/char"), "runs/char-hf")  # Path('runs/char-hf')
    """
    directory = Path(directory)
    tensors, hf_cfg = to_hf_state_dict(model)  # a layout HF cannot express: nothing written
    directory.mkdir(parents=True, exist_ok=True)
    save_tensors(directory / "model.safetensors", tensors, metadata={"format": "pt"})
    tok = model.meta.tokenizer
    if tok is not None:
        atomic_write_bytes(directory / "tokenizer.json", tok.to_str().encode())
    atomic_write_json(directory / CONFIG_NAME, hf_cfg)
    return directory
