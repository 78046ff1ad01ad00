"""Checkpoints: attnkit directories (safetensors, atomic writes) and Hugging Face conversion."""

from attnkit.checkpoints.io import CheckpointError, load, save

__all__ = ["CheckpointError", "load", "save"]
