"""Example inputs for tracing and checking an export (no dataset needed)."""

from __future__ import annotations

import torch
from torch import Tensor

from ..config import ModelConfig

__all__ = ["sample_inputs"]


def sample_inputs(config: ModelConfig, batch: int, text_len: int, *, seed: int = 0,
                  ragged: bool = True) -> tuple[Tensor, Tensor, Tensor]:
    """Random pixels in [-1, 1]-ish, random word ids with [CLS] first and (if ragged) padded rows."""
    g = torch.Generator().manual_seed(seed)
    pv = torch.randn(batch, config.num_channels, config.image_size, config.image_size, generator=g)
    ids = torch.randint(3, max(4, config.vocab_size), (batch, text_len), generator=g)
    ids[:, 0] = 2  # [CLS]
    mask = torch.ones(batch, text_len, dtype=torch.int64)
    if ragged and text_len > 2:
        lengths = torch.randint(2, text_len + 1, (batch,), generator=g)
        lengths[0] = text_len  # the longest row sets the shape
        for i, n in enumerate(lengths.tolist()):
            mask[i, n:] = 0
            ids[i, n:] = 0
    return pv, ids, mask
