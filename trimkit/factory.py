"""Fresh models: a preset backbone sized for a dataset, with stable-initialized trimmers."""

from __future__ import annotations

from typing import Any

import torch

from .config import PRESETS, TrimConfig, preset_config
from .data import WordTokenizer, task_vocabulary
from .errors import BadInputError
from .models import MeterModel, build_model

__all__ = ["new_model"]


def new_model(preset: str, data: str, *, seed: int = 0, trim: TrimConfig | None = None,
              **overrides: Any) -> MeterModel:
    """A `preset` model whose labels and word-level tokenizer come from dataset `data`."""
    if preset not in PRESETS:
        raise BadInputError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
    labels, texts = task_vocabulary(data)
    max_len = overrides.pop("max_text_len", PRESETS[preset]["max_text_len"])
    tokenizer = WordTokenizer.build(texts, max_len=max_len)
    config = preset_config(preset, vocab_size=len(tokenizer), num_labels=len(labels), max_text_len=max_len,
                           **overrides)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = build_model(config, trim)
    model.labels = labels
    model.tokenizer = tokenizer
    model.meta = {"preset": preset, "data": data, "seed": seed}
    return model.eval()
