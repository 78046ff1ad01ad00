"""Hugging Face <-> attnkit checkpoints: one declarative key map per architecture.

:mod:`~attnkit.checkpoints.hf.bert` and :mod:`~attnkit.checkpoints.hf.gpt2` hold the maps
and config translations; :mod:`~attnkit.checkpoints.hf.convert` applies them, checked by shape.
"""

from attnkit.checkpoints.hf.convert import (
    ARCHITECTURES,
    convert_from_hf,
    export_hf,
    load_hf_dir,
    load_hf_tokenizer,
    to_hf_state_dict,
)

__all__ = [
    "ARCHITECTURES",
    "convert_from_hf",
    "export_hf",
    "load_hf_dir",
    "load_hf_tokenizer",
    "to_hf_state_dict",
]
