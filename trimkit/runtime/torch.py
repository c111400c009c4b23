"""The PyTorch reference runner: a checkpoint's model in one trim mode."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from ..contract import INPUT_NAMES

__all__ = ["TorchRunner", "load"]


class TorchRunner:
    """PyTorch in one trim mode ("prune", "static" or "off"), optionally with its own TrimConfig on a
    model that other runners share (set before every call, so that runners taking turns each see theirs)."""

    name = "torch"

    def __init__(self, model, mode: str, *, trim=None, threads: int | None = None) -> None:
        self.model, self.mode, self.trim, self.threads = model, mode, trim, threads

    @torch.no_grad()
    def run(self, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        if self.trim is not None:
            self.model.trim = self.trim
        out = self.model(*(torch.from_numpy(feeds[k]) for k in INPUT_NAMES), mode=self.mode)
        return out.logits.numpy(), out.keep_counts.numpy()

    def describe(self) -> dict[str, Any]:
        return {"runtime": self.name, "version": torch.__version__, "precision": "fp32", "mode": self.mode,
                "threads": self.threads or torch.get_num_threads(), "device": "cpu"}


def load(path: str | os.PathLike, *, threads: int | None = None, precision: str | None = None, mode: str = "prune",
         trim=None) -> TorchRunner:
    """A checkpoint at `path` in trim mode `mode` (the model loads with weights_only=True)."""
    from ..checkpoint import load_checkpoint

    return TorchRunner(load_checkpoint(path), mode, trim=trim, threads=threads)
