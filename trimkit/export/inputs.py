"""Example inputs for tracing and checking an export (no dataset needed)."""

from __future__ import annotations

import torch
from torch import Tensor

from ..config import ModelConfig

__all__ = ["sample_inputs"]


def sample_inputs(config: ModelConfig, batch: int, text_len: int, *, seed: int = 0,
                  ragged: bool = True, tokenizer=None) -> tuple[Tensor, Tensor, Tensor]:
    """Random pixels in [-1, 1]-ish, random word ids with [CLS] first and (if ragged) padded rows.
    With the model's `tokenizer`, its own [CLS]/[PAD] ids (a WordPiece vocabulary's are not 2/0) and
    word ids above its special tokens."""
    cls_id, pad_id, low = 2, 0, 3
    index = getattr(tokenizer, "index", None)
    if hasattr(tokenizer, "first_word_id"):  # byte-level BPE: <s>, <pad>, </s>, <unk> first
        cls_id, pad_id, low = tokenizer.cls_id, tokenizer.pad_id, tokenizer.first_word_id
    elif index is not None:
        cls_id, pad_id = index["[CLS]"], tokenizer.pad_id
        low = 1 + max(index[t] for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]") if t in index)
    g = torch.Generator().manual_seed(seed)
    pv = torch.randn(batch, config.num_channels, config.image_size, config.image_size, generator=g)
    ids = torch.randint(low, max(low + 1, config.vocab_size), (batch, text_len), generator=g)
    ids[:, 0] = cls_id
    mask = torch.ones(batch, text_len, dtype=torch.int64)
    if ragged and text_len > 2:
        lengths = torch.randint(2, text_len + 1, (batch,), generator=g)
        lengths[0] = text_len  # the longest row sets the shape
        for i, n in enumerate(lengths.tolist()):
            mask[i, n:] = 0
            ids[i, n:] = pad_id
    return pv, ids, mask
