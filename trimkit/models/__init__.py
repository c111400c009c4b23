"""Backbones. Each family lives in its own module.

Three levels make models, each on the one below: `build_model` (an architecture from a config, fresh
weights), `trimkit.factory.new_model` (a preset sized for a dataset's labels and vocabulary) and
`trimkit.pretrained.import_model` (real pretrained weights mapped into the architecture)."""

from __future__ import annotations

from ..config import ModelConfig, TrimConfig
from .meter import TRIM_MODES, MeterModel, TrimOutput

__all__ = ["MeterModel", "TrimOutput", "TRIM_MODES", "build_model"]


def build_model(config: ModelConfig, trim: TrimConfig | None = None) -> MeterModel:
    """The architecture `config` describes, fresh weights, trimmers at their stable initialization."""
    return MeterModel(config, trim)
