"""Reading a Hugging Face model directory: its weights file, its tokenizer (tokenizer.json,
a BERT vocab.txt or GPT-2's vocab.json + merges.txt) and, for a sentence-transformers
directory, the pooling, normalisation and length of its modules; the tensors themselves are
converted by :func:`attnkit.checkpoints.hf.convert.convert_from_hf`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from attnkit.checkpoints.format import (
    CONFIG_NAME,
    CheckpointError,
    check_tokenizer_fits,
    load_tokenizer,
    read_json,
    read_tensors,
)
from attnkit.checkpoints.hf.convert import convert_from_hf
from attnkit.models.common import ModelBase
from attnkit.models.gpt import GPT

if TYPE_CHECKING:  # pragma: no cover - for static tools only
    from tokenizers import Tokenizer

__all__ = ["load_hf_dir", "load_hf_tokenizer", "read_json_list"]


def _find_weights(directory: Path) -> Path:
    """model.safetensors, else pytorch_model.bin (read only with ``weights_only=True``: a
    pickle holding anything but tensors is refused unrun, asking for safetensors)."""
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (directory / name).is_file():
            return directory / name
    raise CheckpointError(f"{directory}: no model.safetensors or pytorch_model.bin found")


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
    """The JSON list in ``path`` (a sentence-transformers ``modules.json``); unreadable JSON
    or a non-list raises CheckpointError naming the file.

    Args:
        path: the JSON file.

    Examples:
        >>> [m["type"] for m in read_json_list(directory / "modules.json")]
    """
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: cannot be read as JSON: {e}") from e
    if not isinstance(data, list):
        raise CheckpointError(f"{path}: expected a JSON list, got {type(data).__name__}")
    return data


def load_hf_tokenizer(directory: Path, max_length: int | None) -> Tokenizer | None:
    """tokenizer.json if present; else WordPiece from vocab.txt (BERT) or byte-level BPE from
    vocab.json + merges.txt (GPT-2); None when the directory has none of them.

    Args:
        directory: the HF model directory.
        max_length: truncate encodings to this many tokens; None: no truncation.

    Examples:
        >>> tok = load_hf_tokenizer(Path("bert-base-uncased"), 512)
    """
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
    the maximum length and the normalisation.

    The tokenizer (if any) is checked against the model's ``vocab_size``; an encoder's
    tokenizer truncates at its positions, a GPT's does not.

    Args:
        directory: the HF directory: config.json and model.safetensors or pytorch_model.bin.

    Raises:
        CheckpointError: naming the file and the problem.

    Examples:
        >>> model, meta, tok = load_hf_dir("all-MiniLM-L6-v2")  # meta: max_length, normalize
    """
    directory = Path(directory)
    hf_cfg = read_json(directory / CONFIG_NAME)
    weights = _find_weights(directory)
    sentence = _sentence_config(directory)
    model = convert_from_hf(
        read_tensors(weights), hf_cfg, weights, sentence.get("pooling"), directory / CONFIG_NAME
    )
    meta: dict[str, Any] = {}
    if sentence.get("max_seq_length"):
        meta["max_length"] = sentence["max_seq_length"]
    if "normalize" in sentence:
        meta["normalize"] = sentence["normalize"]
    # an encoder's texts are cut at its positions, as sentence-transformers does; a GPT's are
    # not: a prompt or a text to score that is too long is refused (or slid) by the code that
    # uses it, never cut silently at the tokenizer (which would keep the wrong end of a prompt)
    max_len = None if isinstance(model, GPT) else meta.get("max_length") or model.config.max_seq_len
    tokenizer = load_hf_tokenizer(directory, max_len)
    if tokenizer is not None:
        check_tokenizer_fits(tokenizer, model.config.vocab_size, _tokenizer_file(directory))
    return model, meta, tokenizer


def _tokenizer_file(directory: Path) -> Path:
    """The file :func:`load_hf_tokenizer` read the tokenizer from (for messages)."""
    for name in ("tokenizer.json", "vocab.txt", "vocab.json"):
        if (directory / name).is_file():
            return directory / name
    return directory
