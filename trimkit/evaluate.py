"""Accuracy and cost of a model on a split, per trim mode: `evaluate` (a model in memory: training,
calibration, bench) and `evaluate_checkpoint` (`trimkit eval`). `sample_indices` is the one seeded
subset of a split that evaluation, verify and calibration draw."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import torch

from .config import TrimConfig
from .data import VQASplit
from .errors import BadInputError
from .models import MeterModel, TrimOutput

__all__ = ["evaluate", "evaluate_checkpoint", "sample_indices", "closest_decisions", "using_trim"]
_QUANTILES = (0.01, 0.05, 0.5)


def sample_indices(n: int, samples: int | None, seed: int = 0) -> torch.Tensor:
    """The first `samples` of a seeded permutation of range(n) (all of them if samples is None)."""
    if samples is None or samples >= n:
        return torch.arange(n)
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:samples].sort().values


@contextlib.contextmanager
def using_trim(model: MeterModel, trim: TrimConfig | None = None) -> Iterator[MeterModel]:
    """Try TrimConfigs on `model` inside (`trim`, or whatever the body assigns to `model.trim`); the model's
    own TrimConfig is back afterwards, whatever happens. Trimmer weights are shared, only thresholds,
    ratios and modes differ, so no copy of the model is needed."""
    original = model.trim
    if trim is not None:
        model.trim = trim
    try:
        yield model
    finally:
        model.trim = original


@torch.no_grad()
def evaluate(model: MeterModel, split: VQASplit, *, modes: tuple[str, ...] = ("off", "prune"),
             samples: int | None = None, batch_size: int = 256, seed: int = 0,
             progress=None, decisions: bool = False) -> dict[str, Any]:
    """-> {mode: {accuracy, flops_ratio {mean, std, p10, p50, p90}, executed_flops_ratio {mean, p50},
    keep_per_layer [[vision, text], ...]}, "samples": n, "batch_size", "layout", "head_impl",
    "per_instance": {mode: {"ratio": [...], "correct": [...]}}}.
    `flops_ratio` is *decided* (the tokens and heads the trimmers keep); `executed_flops_ratio` is what the
    model ran for each question: its share of a batch of `batch_size` in the model's layout and head pruning
    (`TrimOutput.executed_flops_ratio`), so it depends on both.
    `decisions`: the first of the `prune` / `mask` modes also gets "decisions": how close each question's gate decisions came
    to the threshold (`closest_decisions`): quantiles p1/p5/p50 over questions of the closest one, relative to
    its scale and absolute, and p1 of the closest token decision per trimmed layer [[vision, text], ...]
    (None: no token decided there). Small values are the decisions an int8 or fp16 graph flips."""
    was_training = model.training
    model.eval()
    idx = sample_indices(len(split), samples, seed)
    result: dict[str, Any] = {"samples": int(idx.numel()), "batch_size": batch_size, "layout": model.layout,
                              "head_impl": model.head_impl, "per_instance": {}}
    margin_mode = next((m for m in ("prune", "mask") if m in modes), None) if decisions else None
    for mode in modes:
        correct, ratios, executed, keeps, closest = [], [], [], [], []
        for start in range(0, idx.numel(), batch_size):
            b = idx[start: start + batch_size]
            pv, ids, mask, y = split.batch(b)
            out = model(pv, ids, mask, mode=mode, details=mode == margin_mode)
            if mode == margin_mode and out.decisions:
                closest.append(closest_decisions(out))
            correct.append(out.logits.argmax(-1) == y)
            ratios.append(out.flops_ratio)
            executed.append(out.executed_flops_ratio)
            keeps.append(out.keep_counts.float())
            if progress is not None:
                progress(b.numel())
        c, r, k, e = torch.cat(correct), torch.cat(ratios), torch.cat(keeps), torch.cat(executed)
        q = torch.quantile(r, torch.tensor([0.1, 0.5, 0.9])).tolist()
        result[mode] = {
            "accuracy": float(c.float().mean()),
            "flops_ratio": {"mean": float(r.mean()), "std": float(r.std()) if r.numel() > 1 else 0.0,
                            "p10": q[0], "p50": q[1], "p90": q[2]},
            "executed_flops_ratio": {"mean": float(e.mean()), "p50": float(e.median())},
            "keep_per_layer": k.mean(0).tolist(),
        }
        result["per_instance"][mode] = {"ratio": r.tolist(), "correct": c.tolist()}
        if closest:
            rel, dist, layers = (torch.cat(x) for x in zip(*closest))
            result[mode]["decisions"] = {
                "relative": _quantiles(rel), "absolute": _quantiles(dist),
                "token_relative_p1_per_layer": [[_finite(torch.quantile(layers[:, i, m], 0.01, interpolation="lower"))
                                                 for m in range(2)] for i in range(layers.shape[1])]}
    if was_training:
        model.train()
    return result


def closest_decisions(out: TrimOutput) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per question, from a `details=True` output: the closest deciding gate decision's |logit - threshold| /
    scale (B,) and |logit - threshold| (B,), and the closest token decision's relative distance per trimmed
    layer and modality (B, T, 2) (inf where none decided). `scale` is the sum of |terms| of the trimmer's
    logit (`trimmers.Decisions`), so the relative distance is how large an error of its inputs it survives."""
    b = out.logits.shape[0]
    inf = torch.tensor(float("inf"))
    rel, dist = torch.full((b,), float("inf")), torch.full((b,), float("inf"))
    layers = torch.full((b, out.keep_counts.shape[1], 2), float("inf"))
    for d in out.decisions:
        a = torch.where(d.decides, d.distance.abs(), inf)
        r = (a / d.scale.clamp_min(1e-12)).amin(dim=1)
        rel, dist = torch.minimum(rel, r), torch.minimum(dist, a.amin(dim=1))
        if d.kind == "tokens":
            layers[:, d.trim_index, d.modality] = torch.minimum(layers[:, d.trim_index, d.modality], r)
    return rel, dist, layers


def _finite(x: torch.Tensor) -> float | None:
    return float(x) if torch.isfinite(x) else None


def _quantiles(x: torch.Tensor) -> dict[str, float | None]:
    """p1, p5, p50 over questions ("lower": an observed value, inf -> None where none decided)."""
    return {f"p{round(100 * q)}": _finite(torch.quantile(x, q, interpolation="lower")) for q in _QUANTILES}


def evaluate_checkpoint(path: str | os.PathLike, data: str, *, split: str = "test", samples: int | None = None,
                        batch_size: int = 256, seed: int = 0, modes: tuple[str, ...] = ("off", "mask", "prune"),
                        per_instance: bool = False) -> dict[str, Any]:
    """`trimkit eval`: a checkpoint on a dataset split, in every trim mode."""
    from .checkpoint import load_checkpoint
    from .data import load_dataset

    model = load_checkpoint(path)
    if model.tokenizer is None:
        raise BadInputError(f"{path}: checkpoint has no tokenizer")
    if split not in ("train", "val", "test"):
        raise BadInputError(f"unknown split {split!r}; choose train, val or test")
    task = load_dataset(data, tokenizer=model.tokenizer, labels=model.labels, image_size=model.config.image_size,
                        seed=seed, splits=(split,))
    res = evaluate(model, task.split(split), modes=modes, samples=samples, batch_size=batch_size, seed=seed,
                   decisions=True)
    if not per_instance:
        res.pop("per_instance")
    c = model.config
    layers = [{"depth": d, "kind": "fusion" if c.is_fusion(d) else "encoder"}
              for d in range(model.trim.first_trimmed_layer, c.num_layers)]
    return {"checkpoint": str(path), "data": data, "split": split, "modes": list(modes), "trimmed_layers": layers,
            **res}
