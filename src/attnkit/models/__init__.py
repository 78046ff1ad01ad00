"""GPT and BERT models built from a :class:`ModelConfig`; encoder-decoders from an
:class:`EncDecConfig`.

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
from attnkit.models.encdec import EncoderDecoder
from attnkit.models.encdec_config import ENCDEC_PRESETS, EncDecConfig, get_encdec_preset
from attnkit.models.gpt import GPT
from attnkit.models.meta import ModelMeta, SwapRecord
from attnkit.models.outputs import ModelOutput
from attnkit.models.presets import PRESETS, get_preset, preset_names

_ARCH_CLASSES: dict[str, type[ModelBase]] = {"gpt": GPT, "bert": Bert}


def build_model(config: ModelConfig | EncDecConfig | str, **overrides: Any) -> ModelBase:
    """A freshly initialised model for a config or a preset name (an encoder-decoder for an
    :class:`EncDecConfig` or one of its presets).

    Examples:
        >>> model = build_model("tiny", n_layer=2)
    """
    if isinstance(config, str):
        if config in ENCDEC_PRESETS:
            config = get_encdec_preset(config, **overrides)
        else:
            config = get_preset(config, **overrides)
    elif overrides:
        config = config.replace(**overrides)
    if isinstance(config, EncDecConfig):
        return EncoderDecoder(config)
    if not isinstance(config, ModelConfig):
        raise TypeError(
            f"config must be a ModelConfig, an EncDecConfig or a preset name, got "
            f"{type(config).__name__}"
        )
    return _ARCH_CLASSES[config.arch](config)


def config_from_dict(data: dict[str, Any]) -> ModelConfig | EncDecConfig:
    """The config a config.json's ``"model"`` holds: an :class:`EncDecConfig` for
    ``arch="encdec"``, else a :class:`ModelConfig`.

    Examples:
        >>> config_from_dict(get_preset("tiny").to_dict()).n_layer
        2
    """
    if isinstance(data, dict) and data.get("arch") == "encdec":
        return EncDecConfig.from_dict(data)
    return ModelConfig.from_dict(data)


__all__ = [
    "ModelConfig",
    "EncDecConfig",
    "ModelBase",
    "ModelMeta",
    "ModelOutput",
    "SwapRecord",
    "GPT",
    "Bert",
    "EncoderDecoder",
    "build_model",
    "config_from_dict",
    "get_preset",
    "preset_names",
    "PRESETS",
]
