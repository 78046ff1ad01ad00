"""Pre-training: one loop for a single process and torchrun, with its config, optimizer,
precision, metrics and checkpoint helpers."""

from attnkit.training.config import DataConfig, RunConfig, TrainConfig, build
from attnkit.training.loop import pretrain

__all__ = ["DataConfig", "RunConfig", "TrainConfig", "build", "pretrain"]
