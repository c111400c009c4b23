"""SmartTrim training: objective, curriculum, loop (single process or torchrun DDP)."""

from ..config import TrainConfig
from .loop import TrainResult, last_path, train
from .objective import SmartTrimObjective

__all__ = ["TrainConfig", "TrainResult", "SmartTrimObjective", "last_path", "train"]
