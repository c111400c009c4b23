"""SmartTrim training: objective, curriculum, loop (single process or torchrun DDP), evaluation."""

from .config import TrainConfig
from .evaluate import evaluate
from .loop import TrainResult, last_path, train
from .objective import SmartTrimObjective

__all__ = ["TrainConfig", "TrainResult", "SmartTrimObjective", "evaluate", "last_path", "train"]
