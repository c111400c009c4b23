"""Backbones. Each family lives in its own module; `build_model` picks one by name."""

from __future__ import annotations

from ..config import ModelConfig, TrimConfig
from .meter import TRIM_MODES, MeterModel, TrimOutput

__all__ = ["MeterModel", "TrimOutput", "TRIM_MODES", "build_model"]


def build_model(config: ModelConfig, trim: TrimConfig | None = None) -> MeterModel:
    return MeterModel(config, trim)
