"""GPT and BERT models built from a :class:`ModelConfig`.

>>> from attnkit.models import build_model, get_preset
>>> model = build_model(get_preset("tiny"))
>>> ids = torch.randint(0, 256, (2, 16))
>>> out = model(ids, labels=ids)           # ModelOutput
>>> out.logits.shape, out.loss             # (B, T, V), next-token cross-entropy
"""

from __future__ import annotations

from typing import Any

from attnkit.models.bert import Bert
from attnkit.models.common import ModelBase
from attnkit.models.config import ModelConfig
from attnkit.models.gpt import GPT
from attnkit.models.meta import ModelMeta, SwapRecord
from attnkit.models.outputs import ModelOutput
from attnkit.models.presets import PRESETS, get_preset, preset_names

_ARCH_CLASSES: dict[str, type[ModelBase]] = {"gpt": GPT, "bert": Bert}


def build_model(config: ModelConfig | str, **overrides: Any) -> ModelBase:
    """A freshly initialised model for a config or a preset name."""
    if isinstance(config, str):
        config = get_preset(config, **overrides)
    elif overrides:
        config = config.replace(**overrides)
    if not isinstance(config, ModelConfig):
        raise TypeError(
            f"config must be a ModelConfig or a preset name, got {type(config).__name__}"
        )
    return _ARCH_CLASSES[config.arch](config)


__all__ = [
    "ModelConfig",
    "ModelBase",
    "ModelMeta",
    "ModelOutput",
    "SwapRecord",
    "GPT",
    "Bert",
    "build_model",
    "get_preset",
    "preset_names",
    "PRESETS",
]
