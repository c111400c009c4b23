"""Accuracy and cost of a model on a split, per trim mode."""

from __future__ import annotations

from typing import Any

import torch

from ..data import VQASplit
from ..models import MeterModel

__all__ = ["evaluate", "sample_indices"]


def sample_indices(n: int, samples: int | None, seed: int = 0) -> torch.Tensor:
    """The first `samples` of a seeded permutation of range(n) (all of them if samples is None)."""
    if samples is None or samples >= n:
        return torch.arange(n)
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:samples].sort().values


@torch.no_grad()
def evaluate(model: MeterModel, split: VQASplit, *, modes: tuple[str, ...] = ("off", "prune"),
             samples: int | None = None, batch_size: int = 256, seed: int = 0,
             progress=None) -> dict[str, Any]:
    """-> {mode: {accuracy, flops_ratio {mean, std, p10, p50, p90}, keep_per_layer [[vision, text], ...]},
    "samples": n, "per_instance": {mode: {"ratio": [...], "correct": [...]}}}."""
    was_training = model.training
    model.eval()
    idx = sample_indices(len(split), samples, seed)
    result: dict[str, Any] = {"samples": int(idx.numel()), "per_instance": {}}
    for mode in modes:
        correct, ratios, keeps = [], [], []
        for start in range(0, idx.numel(), batch_size):
            b = idx[start: start + batch_size]
            pv, ids, mask, y = split.batch(b)
            out = model(pv, ids, mask, mode=mode)
            correct.append(out.logits.argmax(-1) == y)
            ratios.append(out.flops_ratio)
            keeps.append(out.keep_counts.float())
            if progress is not None:
                progress(b.numel())
        c, r, k = torch.cat(correct), torch.cat(ratios), torch.cat(keeps)
        q = torch.quantile(r, torch.tensor([0.1, 0.5, 0.9])).tolist()
        result[mode] = {
            "accuracy": float(c.float().mean()),
            "flops_ratio": {"mean": float(r.mean()), "std": float(r.std()) if r.numel() > 1 else 0.0,
                            "p10": q[0], "p50": q[1], "p90": q[2]},
            "keep_per_layer": k.mean(0).tolist(),
        }
        result["per_instance"][mode] = {"ratio": r.tolist(), "correct": c.tolist()}
    if was_training:
        model.train()
    return result
