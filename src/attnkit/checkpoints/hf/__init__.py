"""Hugging Face <-> attnkit checkpoints: one declarative key map per architecture.

:mod:`~attnkit.checkpoints.hf.bert`, :mod:`~attnkit.checkpoints.hf.roformer`,
:mod:`~attnkit.checkpoints.hf.gpt2` and :mod:`~attnkit.checkpoints.hf.llama` hold the maps and config translations;
:mod:`~attnkit.checkpoints.hf.convert` applies them, checked by shape,
:mod:`~attnkit.checkpoints.hf.directory` reads a model directory (weights, tokenizer,
sentence-transformers modules), and
:mod:`~attnkit.checkpoints.hf.exportable` picks the architecture a model exports to.
"""

from attnkit.checkpoints.hf.convert import (
    ARCHITECTURES,
    convert_from_hf,
    export_hf,
    to_hf_state_dict,
)
from attnkit.checkpoints.hf.directory import load_hf_dir, load_hf_tokenizer

__all__ = [
    "ARCHITECTURES",
    "convert_from_hf",
    "export_hf",
    "load_hf_dir",
    "load_hf_tokenizer",
    "to_hf_state_dict",
]
