"""attnkit: self-attention kernels, modules and tools built on PyTorch.

Public names are resolved lazily, so ``import attnkit`` stays cheap (the command line starts
without importing the model code) and a half-built subpackage never breaks the import.

Note that ``attnkit.attention`` is the subpackage that holds the functional API; the function
itself is ``attnkit.attention.attention``. The name is not rebound to the function at the top
level, because Python rebinds a subpackage name on its parent whenever it is first imported,
and a function under that name would break ``import attnkit.attention.functional``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> (module that defines it, attribute or None for the module itself)
_LAZY: dict[str, tuple[str, str | None]] = {
    "attention": ("attnkit.attention", None),
    "explain": ("attnkit.attention", "explain"),
    "MultiHeadAttention": ("attnkit.attention.module", "MultiHeadAttention"),
    "load": ("attnkit.checkpoints", "load"),
    "save": ("attnkit.checkpoints", "save"),
    "Encoder": ("attnkit.tasks.sentence", "Encoder"),
    "ModelConfig": ("attnkit.models.config", "ModelConfig"),
    "build_model": ("attnkit.models", "build_model"),
    "get_preset": ("attnkit.models.presets", "get_preset"),
    "GPT": ("attnkit.models.gpt", "GPT"),
    "Bert": ("attnkit.models.bert", "Bert"),
    "generate": ("attnkit.generation", "generate"),
}

__all__ = [  # the names of _LAZY, spelled out for static tools
    "__version__",
    "attention",
    "explain",
    "MultiHeadAttention",
    "load",
    "save",
    "Encoder",
    "ModelConfig",
    "build_model",
    "get_preset",
    "GPT",
    "Bert",
    "generate",
]

if TYPE_CHECKING:  # pragma: no cover - for static tools only
    from attnkit import attention
    from attnkit.attention import explain
    from attnkit.attention.module import MultiHeadAttention
    from attnkit.checkpoints import load, save
    from attnkit.generation import generate
    from attnkit.models import build_model
    from attnkit.models.bert import Bert
    from attnkit.models.config import ModelConfig
    from attnkit.models.gpt import GPT
    from attnkit.models.presets import get_preset
    from attnkit.tasks.sentence import Encoder


def __getattr__(name: str) -> Any:
    try:
        module_name, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'attnkit' has no attribute {name!r}") from None
    module = importlib.import_module(module_name)
    value = module if attr is None else getattr(module, attr)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
