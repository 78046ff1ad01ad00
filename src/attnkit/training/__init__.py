"""Training: the pre-training loop (one code path for a single process and torchrun) with its
config, objectives, metrics and checkpoints, and the pieces every training loop shares
(fine-tuning included): optimizer groups and schedule (``optim``), precision (``precision``),
devices and processes (``distributed``)."""

from attnkit.training.config import DataConfig, RunConfig, TrainConfig, build
from attnkit.training.loop import pretrain

__all__ = ["DataConfig", "RunConfig", "TrainConfig", "build", "pretrain"]
