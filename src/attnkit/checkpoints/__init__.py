"""Checkpoints: attnkit directories (safetensors, atomic writes) and Hugging Face conversion."""
from .io import CheckpointError, load, save

__all__ = ["CheckpointError", "load", "save"]
