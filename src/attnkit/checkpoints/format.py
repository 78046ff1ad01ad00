"""The attnkit checkpoint format: ``config.json`` + ``model.safetensors`` + ``tokenizer.json``.

Every file is written atomically: to a temporary name in the same directory, flushed and
fsynced, moved over the final name with ``os.replace`` and the directory fsynced, so a crash
leaves either the old file or the new one, never a torn one. ``config.json`` is written last:
a directory with a config has complete weights.

Loading checks everything before touching the model, in this order: the safetensors header
(:mod:`attnkit.checkpoints.header`: layout, offsets, sizes), then its keys, shapes and dtypes
against a model built from the config on the meta device (nothing allocated), then the
tokenizer's ids against ``vocab_size``; only then is the model built and are the tensors read
(CRC-32 and finiteness checked) and copied. A bad checkpoint raises :class:`CheckpointError`
naming the file and the problem; no half-loaded model is ever returned. Pickles (``.bin``,
``state.pt``) are read only with ``torch.load(weights_only=True)``
(:mod:`attnkit.checkpoints.pickles`).

``config.json`` holds ``{"format": "attnkit", "format_version": 2, "model": <ModelConfig>,
"meta": <ModelMeta>}``; version 1 (labels, max_length, fine-tuning and sentence settings at the
top level, ``n_head``/``n_kv_head``) is migrated on load (:func:`migrate`). The front door is
:func:`attnkit.checkpoints.load`.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from attnkit._util.fs import atomic_write, atomic_write_bytes, atomic_write_json
from attnkit.checkpoints import header as header_mod
from attnkit.checkpoints.errors import CheckpointError
from attnkit.checkpoints.pickles import read_pickle
from attnkit.models.common import ModelBase

if TYPE_CHECKING:  # pragma: no cover - for static tools only
    from tokenizers import Tokenizer

FORMAT = "attnkit"
FORMAT_VERSION = 2  # 1: no "meta"; what a model carried sat at the top level
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
TOKENIZER_NAME = "tokenizer.json"


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

    Examples:
        >>> save_tensors("weights.safetensors", {"w": torch.zeros(2, 3)})
    """
    from safetensors.torch import save_file

    flat = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    meta = dict(metadata or {})
    if checksums:
        meta.update({CHECKSUM_PREFIX + k: _crc32(v) for k, v in flat.items()})
    return atomic_write(path, lambda tmp: save_file(flat, tmp, metadata=meta))


def read_header(path: str | Path) -> header_mod.Header:
    """The checked header of a safetensors file (:mod:`attnkit.checkpoints.header`); a bad one
    raises CheckpointError naming the file and the problem.

    Examples:
        >>> read_header("runs/char/model.safetensors")
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such weights file")
    try:
        return header_mod.read_header(path)
    except header_mod.HeaderError as e:
        msg = str(e) if str(e).startswith("truncated") else f"corrupt safetensors header: {e}"
        raise CheckpointError(f"{path}: {msg}") from None


def read_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file, or of a ``.bin``/``.pt`` file through
    ``torch.load(weights_only=True)``. Unreadable files raise CheckpointError naming them.

    A safetensors header is checked in full (:func:`read_header`) before any tensor is read,
    and each tensor's CRC-32, when the file records one, after.

    Examples:
        >>> tensors = read_tensors("runs/char/model.safetensors")  # name -> tensor
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such weights file")
    if path.suffix != ".safetensors":
        obj = read_pickle(path, "a dict of name -> tensor (or the weights as model.safetensors)")
        if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
            raise CheckpointError(
                f"{path}: expected a dict of name -> tensor, got {type(obj).__name__}"
            )
        return dict(obj)
    from safetensors import safe_open

    header = read_header(path)
    out: dict[str, torch.Tensor] = {}
    key = None
    try:
        with safe_open(str(path), framework="pt") as f:
            for key in header.tensors:
                out[key] = f.get_tensor(key)
    except Exception as e:  # the file changed under us, or a case the header check missed
        where = f" at key {key!r}" if key is not None else ""
        raise CheckpointError(f"{path}: corrupt or truncated safetensors file{where}: {e}") from e
    for key, t in out.items():
        want = header.metadata.get(CHECKSUM_PREFIX + key)
        if want is not None and _crc32(t) != want:
            raise CheckpointError(
                f"{path}: key {key!r} is corrupt: its bytes have CRC-32 "
                f"{_crc32(t)}, the file recorded {want}"
            )
    return out


def key_mismatch(missing: list[str], unknown: list[str]) -> str:
    """``"missing key(s) [...]; unexpected key(s) [...]"``, naming only what is not empty.

    Args:
        missing: the keys the model expects that the file lacks.
        unknown: the keys the file holds that the model does not expect.

    Examples:
        >>> key_mismatch(["lm_head.weight"], [])  # "missing key(s) ['lm_head.weight']"
    """
    parts = []
    if missing:
        parts.append(f"missing key(s) {missing}")
    if unknown:
        parts.append(f"unexpected key(s) {unknown}")
    return "; ".join(parts)


def _check_specs(
    own: Mapping[str, tuple[tuple[int, ...], torch.dtype]],
    got: Mapping[str, tuple[tuple[int, ...], torch.dtype]],
    source: str | Path,
) -> None:
    """Every key of ``own`` in ``got`` and no other, each of the same shape and of a floating
    dtype exactly where ``own`` has one."""
    missing = sorted(set(own) - set(got))
    unknown = sorted(set(got) - set(own))
    if missing or unknown:
        raise CheckpointError(f"{source}: {key_mismatch(missing, unknown)}")
    for key, (want_shape, want_dtype) in own.items():
        shape, dtype = got[key]
        if tuple(shape) != tuple(want_shape):
            raise CheckpointError(
                f"{source}: key {key!r} has shape {tuple(shape)}, the model "
                f"expects {tuple(want_shape)}"
            )
        if dtype.is_floating_point != want_dtype.is_floating_point:
            raise CheckpointError(
                f"{source}: key {key!r} has dtype {dtype}, the model expects {want_dtype}"
            )


def _specs(
    model: nn.Module, skip: tuple[str, ...]
) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    return {k: (tuple(v.shape), v.dtype) for k, v in model.state_dict().items() if k not in skip}


def check_header(
    model: nn.Module, header: header_mod.Header, source: str | Path, skip: tuple[str, ...] = ()
) -> None:
    """The checks of :func:`check_and_load` on a file's header alone, before any tensor is
    read (``model`` may live on the meta device): the same keys as the model's state_dict,
    each of the same shape, floating exactly where the model's is.

    Args:
        model: the model the file must fit.
        header: the file's checked header (:func:`read_header`).
        source: the file, named in the error.
        skip: state_dict keys not expected in the file (tied aliases).

    Raises:
        CheckpointError: naming the first key, shape or dtype that does not fit.

    Examples:
        >>> check_header(skeleton, read_header(path), path, skip=tuple(skeleton.tied_keys()))
    """
    got = {k: (t.shape, t.dtype) for k, t in header.tensors.items()}
    _check_specs(_specs(model, skip), got, source)


def check_and_load(
    model: nn.Module,
    tensors: Mapping[str, torch.Tensor],
    source: str | Path,
    skip: tuple[str, ...] = (),
) -> nn.Module:
    """Copy ``tensors`` into ``model`` after checking every key, shape and dtype first.

    ``skip`` lists state_dict keys that are not expected (tied aliases). Nothing is copied
    unless everything checks out.

    Examples:
        >>> check_and_load(model, read_tensors(path), path)
    """
    own = _specs(model, skip)
    _check_specs(own, {k: (tuple(v.shape), v.dtype) for k, v in tensors.items()}, source)
    for key in own:
        got = tensors[key]
        if got.dtype.is_floating_point and not bool(torch.isfinite(got).all()):
            raise CheckpointError(f"{source}: key {key!r} holds NaN or infinite values")
    model.load_state_dict({k: tensors[k] for k in own}, strict=False, assign=False)
    return model


# --------------------------------------------------------------------------------------------
# attnkit directories
# --------------------------------------------------------------------------------------------
def save_dir(model: ModelBase, directory: str | Path, tokenizer: Tokenizer | None = None) -> Path:
    """Write ``model`` as an attnkit checkpoint directory: weights, ``config.json`` (the model
    config and ``model.meta``) and the tokenizer (``tokenizer``, else ``model.meta.tokenizer``).

    The directory is made if needed; every file is written atomically, ``config.json`` last.
    Tied aliases (``model.tied_keys()``) are not stored.

    Args:
        model: the attnkit model to write.
        directory: where to write it.
        tokenizer: the tokenizer to store; None: ``model.meta.tokenizer`` (if any).

    Returns:
        ``directory`` as a Path.

    Examples:
        >>> save_dir(model, "runs/char")  # Path('runs/char')
    """
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
    """The JSON object in ``path``; a missing file, bad JSON or a non-object raises
    CheckpointError naming the file.

    Args:
        path: the JSON file, e.g. a checkpoint's ``config.json``.

    Examples:
        >>> read_json(Path("runs/char/config.json"))["format"]  # 'attnkit'
    """
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

    Args:
        data: the parsed config.json, with a ``"model"`` key.
        path: the config file, named in errors.

    Raises:
        CheckpointError: for an unknown top-level key, or a "meta" or "sentence" that is
            not an object.

    Examples:
        >>> migrate({"format": "attnkit", "model": {}, "labels": ["neg", "pos"]}, path)
        ({'id2label': ['neg', 'pos'], 'num_labels': 2}, {})
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
    caller makes the :class:`~attnkit.models.meta.ModelMeta`.

    Everything is checked (config, header against a meta-device model, tokenizer ids against
    ``vocab_size``) before the model is built and its tensors are read.

    Args:
        directory: the checkpoint directory.

    Raises:
        CheckpointError: naming the file and the problem.

    Examples:
        >>> model, meta, tok = load_dir(Path("runs/char"))
    """
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
    weights = directory / WEIGHTS_NAME
    header = read_header(weights)
    with torch.device("meta"):  # the shapes the config implies, without allocating them
        skeleton = build_model(config)
    check_header(skeleton, header, weights, skip=tuple(skeleton.tied_keys()))
    tok_path = directory / TOKENIZER_NAME
    tokenizer = (
        load_tokenizer(tok_path, vocab_size=config.vocab_size) if tok_path.is_file() else None
    )
    model = build_model(config)
    check_and_load(model, read_tensors(weights), weights, skip=tuple(model.tied_keys()))
    return model, meta, tokenizer


def load_tokenizer(
    path: str | Path, max_length: int | None = None, vocab_size: int | None = None
) -> Tokenizer:
    """A ``tokenizers.Tokenizer`` from a tokenizer.json, with padding off and truncation at
    ``max_length`` (when given). With ``vocab_size`` (the model's), a tokenizer that can give
    an id >= vocab_size is refused (:func:`check_tokenizer_fits`).

    Args:
        path: the tokenizer.json file.
        max_length: truncate encodings to this many tokens; None: no truncation.
        vocab_size: the model's vocabulary size; None: not checked.

    Raises:
        CheckpointError: if the file cannot be read as a tokenizer, or does not fit.

    Examples:
        >>> tok = load_tokenizer("runs/char/tokenizer.json", vocab_size=model.config.vocab_size)
    """
    from tokenizers import Tokenizer

    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as e:
        reason = " ".join(str(e).split())
        raise CheckpointError(f"{path}: cannot be read as a tokenizer.json: {reason}") from None
    if vocab_size is not None:
        check_tokenizer_fits(tok, vocab_size, path)
    tok.no_padding()
    if max_length is not None:
        tok.enable_truncation(max_length)
    return tok


def check_tokenizer_fits(tok: Tokenizer, vocab_size: int, source: str | Path) -> None:
    """Every id ``tok`` can give (added tokens included) is < ``vocab_size``, else a
    CheckpointError naming the largest one: such a tokenizer belongs to another model and would
    index past its embeddings.

    Args:
        tok: the tokenizer.
        vocab_size: the model's vocabulary size.
        source: the tokenizer's file, named in the error.

    Raises:
        CheckpointError: for an empty vocabulary or an id >= ``vocab_size``.

    Examples:
        >>> check_tokenizer_fits(tok, model.config.vocab_size, "runs/char/tokenizer.json")
    """
    vocab = tok.get_vocab(with_added_tokens=True)
    if not vocab:
        raise CheckpointError(f"{source}: the tokenizer has an empty vocabulary")
    token, top = max(vocab.items(), key=lambda kv: kv[1])
    if top >= vocab_size:
        raise CheckpointError(
            f"{source}: the tokenizer gives ids up to {top} (token {token!r}) but the model's "
            f"vocab_size is {vocab_size}; expected every id < {vocab_size} (the tokenizer of "
            f"another model?)"
        )
