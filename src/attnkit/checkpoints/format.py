"""The attnkit checkpoint format: ``config.json`` + ``model.safetensors`` + ``tokenizer.json``.

Every file is written atomically: to a temporary name in the same directory, flushed and
fsynced, moved over the final name with ``os.replace`` and the directory fsynced, so a crash
leaves either the old file or the new one, never a torn one. ``config.json`` is written last:
a directory with a config has complete weights.

Loading checks everything before touching the model: every expected key present, no unknown
key, every shape and dtype right. A bad checkpoint raises :class:`CheckpointError` naming the
file and the key; no half-loaded model is ever returned.

``config.json`` holds ``{"format": "attnkit", "format_version": 2, "model": <ModelConfig>,
"meta": <ModelMeta>}``; version 1 (labels, max_length, fine-tuning and sentence settings at the
top level, ``n_head``/``n_kv_head``) is migrated on load (:func:`migrate`). The front door is
:func:`attnkit.checkpoints.load`.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from attnkit._util.fs import atomic_write, atomic_write_bytes, atomic_write_json
from attnkit.models.common import ModelBase

if TYPE_CHECKING:  # pragma: no cover - for static tools only
    from tokenizers import Tokenizer

FORMAT = "attnkit"
FORMAT_VERSION = 2  # 1: no "meta"; what a model carried sat at the top level
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
TOKENIZER_NAME = "tokenizer.json"


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message names the file and the key."""


CHECKSUM_PREFIX = "crc32:"


def _crc32(t: torch.Tensor) -> str:
    return (
        f"{zlib.crc32(t.reshape(-1).view(torch.uint8).numpy().data):08x}"
        if t.numel()
        else "00000000"
    )


def save_tensors(
    path: str | Path,
    tensors: Mapping[str, torch.Tensor],
    metadata: dict[str, str] | None = None,
    checksums: bool = True,
) -> Path:
    """Atomically write a safetensors file (tensors made contiguous, on CPU).

    With ``checksums`` the metadata holds a CRC-32 of every tensor's bytes
    (``"crc32:<key>"``), so :func:`read_tensors` can name a tensor whose bytes were damaged.
    """
    from safetensors.torch import save_file

    flat = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    meta = dict(metadata or {})
    if checksums:
        meta.update({CHECKSUM_PREFIX + k: _crc32(v) for k, v in flat.items()})
    return atomic_write(path, lambda tmp: save_file(flat, tmp, metadata=meta))


def _check_layout(path: Path) -> None:
    """Read the safetensors header and check that every tensor's bytes lie inside the file;
    a truncated file is reported with the first tensor it cuts."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path}: truncated safetensors file ({size} bytes, no header)")
        n = struct.unpack("<Q", head)[0]
        if n > size - 8:
            raise CheckpointError(
                f"{path}: truncated or corrupt safetensors file: header of {n} "
                f"bytes does not fit in {size} bytes"
            )
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{path}: corrupt safetensors header: {e}") from e
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: corrupt safetensors header (not a JSON object)")
    data = size - 8 - n
    for key, info in header.items():
        if key == "__metadata__":
            continue
        try:
            begin, end = info["data_offsets"]
        except (TypeError, KeyError, ValueError):
            raise CheckpointError(f"{path}: corrupt safetensors header at key {key!r}") from None
        if end > data:
            raise CheckpointError(
                f"{path}: truncated safetensors file: key {key!r} needs bytes "
                f"{begin}..{end} of the data section but only {data} remain"
            )


# --------------------------------------------------------------------------------------------
# reading weights
# --------------------------------------------------------------------------------------------
def read_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file, or of a ``.bin``/``.pt`` file through
    ``torch.load(weights_only=True)``. Unreadable files raise CheckpointError naming them."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such weights file")
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        _check_layout(path)
        out: dict[str, torch.Tensor] = {}
        key = None
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                for key in f.keys():
                    out[key] = f.get_tensor(key)
        except Exception as e:  # safetensors raises its own error types for bad headers/data
            where = f" at key {key!r}" if key is not None else ""
            raise CheckpointError(
                f"{path}: corrupt or truncated safetensors file{where}: {e}"
            ) from e
        for key, t in out.items():
            want = meta.get(CHECKSUM_PREFIX + key)
            if want is not None and _crc32(t) != want:
                raise CheckpointError(
                    f"{path}: key {key!r} is corrupt: its bytes have CRC-32 "
                    f"{_crc32(t)}, the file recorded {want}"
                )
        return out
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(
            f"{path}: cannot be read as a PyTorch weights file "
            f"(torch.load with weights_only=True): {e}"
        ) from e
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(
            f"{path}: expected a dict of name -> tensor, got {type(obj).__name__}"
        )
    return dict(obj)


def key_mismatch(missing: list[str], unknown: list[str]) -> str:
    """``"missing key(s) [...]; unexpected key(s) [...]"``, naming only what is not empty."""
    parts = []
    if missing:
        parts.append(f"missing key(s) {missing}")
    if unknown:
        parts.append(f"unexpected key(s) {unknown}")
    return "; ".join(parts)


def check_and_load(
    model: nn.Module,
    tensors: Mapping[str, torch.Tensor],
    source: str | Path,
    skip: tuple[str, ...] = (),
) -> nn.Module:
    """Copy ``tensors`` into ``model`` after checking every key, shape and dtype first.

    ``skip`` lists state_dict keys that are not expected (tied aliases). Nothing is copied
    unless everything checks out.
    """
    own = {k: v for k, v in model.state_dict().items() if k not in skip}
    missing = sorted(set(own) - set(tensors))
    unknown = sorted(set(tensors) - set(own))
    if missing or unknown:
        raise CheckpointError(f"{source}: {key_mismatch(missing, unknown)}")
    for key, want in own.items():
        got = tensors[key]
        if tuple(got.shape) != tuple(want.shape):
            raise CheckpointError(
                f"{source}: key {key!r} has shape {tuple(got.shape)}, the model "
                f"expects {tuple(want.shape)}"
            )
        if got.dtype.is_floating_point != want.dtype.is_floating_point:
            raise CheckpointError(
                f"{source}: key {key!r} has dtype {got.dtype}, the model expects {want.dtype}"
            )
        if got.dtype.is_floating_point and not bool(torch.isfinite(got).all()):
            raise CheckpointError(f"{source}: key {key!r} holds NaN or infinite values")
    model.load_state_dict({k: tensors[k] for k in own}, strict=False, assign=False)
    return model


# --------------------------------------------------------------------------------------------
# attnkit directories
# --------------------------------------------------------------------------------------------
def save_dir(model: ModelBase, directory: str | Path, tokenizer: Tokenizer | None = None) -> Path:
    """Write ``model`` as an attnkit checkpoint directory: weights, ``config.json`` (the model
    config and ``model.meta``) and the tokenizer (``tokenizer``, else ``model.meta.tokenizer``)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    skip = set(model.tied_keys())
    tensors = {k: v for k, v in model.state_dict().items() if k not in skip}
    save_tensors(directory / WEIGHTS_NAME, tensors, metadata={"format": FORMAT})
    tokenizer = tokenizer if tokenizer is not None else model.meta.tokenizer
    if tokenizer is not None:
        atomic_write_bytes(directory / TOKENIZER_NAME, tokenizer.to_str().encode())
    atomic_write_json(
        directory / CONFIG_NAME,
        {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "model": model.config.to_dict(),
            "meta": model.meta.to_dict(),
        },
    )
    return directory


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def migrate(data: dict[str, Any], path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(model config dict, meta dict) of a config.json, older layouts included.

    Before ``"meta"`` existed, what a model carried sat at the top level: ``"labels"`` (now
    ``config.id2label``), ``"max_length"`` (now ``meta.max_length``), ``"finetune"`` or
    ``"classification"`` (now ``meta.finetune``) and ``"sentence"`` (pooling -> ``config.pooling``,
    max_seq_length -> ``meta.max_length``, normalize -> ``meta.normalize``).
    """
    model = dict(data["model"])
    meta = data.get("meta", {})
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: 'meta' must be a JSON object, got {meta!r}")
    meta = dict(meta)
    known = {"format", "format_version", "model", "meta"}
    old = {"labels", "max_length", "finetune", "classification", "sentence"}
    unknown = sorted(set(data) - known - old)
    if unknown:
        raise CheckpointError(
            f"{path}: unknown top-level key(s) {unknown}; expected {sorted(known)}"
        )
    if "labels" in data and data["labels"] is not None:
        model.setdefault("id2label", data["labels"])
        model.setdefault("num_labels", len(data["labels"]))
    if data.get("max_length") is not None:
        meta.setdefault("max_length", data["max_length"])
    for key in ("finetune", "classification"):
        if data.get(key) is not None:
            meta.setdefault("finetune", data[key])
    sentence = data.get("sentence") or {}
    if not isinstance(sentence, dict):
        raise CheckpointError(f"{path}: 'sentence' must be a JSON object, got {sentence!r}")
    if sentence.get("pooling") is not None:
        model["pooling"] = sentence["pooling"]  # the rule the old loader applied
    if sentence.get("max_seq_length") is not None:
        meta.setdefault("max_length", sentence["max_seq_length"])
    if "normalize" in sentence:
        meta.setdefault("normalize", bool(sentence["normalize"]))
    return model, meta


def load_dir(directory: Path) -> tuple[ModelBase, dict[str, Any], Tokenizer | None]:
    """(model with its weights, meta dict, tokenizer or None) of an attnkit directory; the
    caller makes the :class:`~attnkit.models.meta.ModelMeta`."""
    from attnkit.models import build_model, config_from_dict

    cfg_path = directory / CONFIG_NAME
    data = read_json(cfg_path)
    if data.get("format") != FORMAT or "model" not in data:
        raise CheckpointError(
            f"{cfg_path}: not an attnkit config (expected keys 'format': "
            f"'attnkit' and 'model'), got keys {sorted(data)}"
        )
    version = data.get("format_version", 1)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{cfg_path}: format_version {version!r} is not supported; expected 1..{FORMAT_VERSION} "
            f"(a checkpoint written by a newer attnkit?)"
        )
    model_dict, meta = migrate(data, cfg_path)
    try:
        config = config_from_dict(model_dict)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{cfg_path}: bad model config: {e}") from e
    model = build_model(config)
    weights = directory / WEIGHTS_NAME
    check_and_load(model, read_tensors(weights), weights, skip=tuple(model.tied_keys()))
    tok_path = directory / TOKENIZER_NAME
    return model, meta, load_tokenizer(tok_path) if tok_path.is_file() else None


def load_tokenizer(path: str | Path, max_length: int | None = None) -> Tokenizer:
    """A ``tokenizers.Tokenizer`` from a tokenizer.json, with padding off and truncation at
    ``max_length`` (when given)."""
    from tokenizers import Tokenizer

    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as e:
        raise CheckpointError(f"{path}: cannot be read as a tokenizer.json: {e}") from e
    tok.no_padding()
    if max_length is not None:
        tok.enable_truncation(max_length)
    return tok
