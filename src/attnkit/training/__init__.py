"""Pre-training: one loop for a single process and torchrun, with its config, optimizer,
precision, metrics and checkpoint helpers."""
from .config import DataConfig, RunConfig, TrainConfig, build
from .loop import pretrain

__all__ = ["DataConfig", "RunConfig", "TrainConfig", "build", "pretrain"]
