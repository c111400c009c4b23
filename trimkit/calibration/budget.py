"""Budget calibration without retraining.

Static part (used by `trimkit export --mode static` and by the adaptive-vs-static comparison):
per-layer fixed keep ratios and head counts that reproduce a target mean FLOPs ratio, derived
from the adaptive model's own average behaviour on a calibration set.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from ..config import TrimConfig
from ..contract import HEAD_KEEP_BATCH
from ..data import VQASplit
from ..evaluate import evaluate, sample_indices, using_trim
from ..models import MeterModel

__all__ = ["adaptive_profile", "with_head_batch_keep", "batch_keep_fraction", "static_trim_config", "match_static_budget", "match_adaptive_budget", "measure",
           "shift_thresholds"]


def batch_keep_fraction(mask: torch.Tensor, group: int = HEAD_KEEP_BATCH) -> tuple[float, int]:
    """(sum over groups, groups): the fraction of the H heads that at least one sample of each group of `group`
    consecutive rows of a (B, H) keep mask keeps (the last group may be short)."""
    kept = [float((chunk > 0).any(dim=0).float().mean()) for chunk in mask.split(group)]
    return sum(kept), len(kept)


@torch.no_grad()
def adaptive_profile(model: MeterModel, split: VQASplit, *, samples: int | None = 1000, batch_size: int = 256,
                     seed: int = 0, head_batch: int = HEAD_KEEP_BATCH) -> dict[str, Any]:
    """Mean kept fraction per trimmed layer and modality (of the input length), mean kept heads and, per
    attention module, the fraction of heads a serving batch of `head_batch` keeps (`TrimConfig.head_batch_keep`):
    the sampled questions in consecutive serving batches, across forwards of `batch_size`; a short last batch
    counts only when there is no full one."""
    if head_batch < 1:
        raise ValueError(f"head_batch must be >= 1, not {head_batch}")
    was_training = model.training
    model.eval()
    idx = sample_indices(len(split), samples, seed)
    frac_sum = None
    head_masks: list[list[list[torch.Tensor]]] | None = None  # per trimmed layer and module: (B, H) per forward
    ratios = []
    for start in range(0, idx.numel(), batch_size):
        pv, ids, mask, _ = split.batch(idx[start: start + batch_size])
        out = model(pv, ids, mask, mode="prune", details=True)
        lengths = torch.stack([torch.full((pv.shape[0],), out.token_masks[0][0].shape[1], dtype=torch.float32),
                               mask.sum(1).float()], dim=1)  # (B, 2) input lengths
        frac = (out.keep_counts.float() / lengths[:, None, :]).sum(0)  # (T, 2)
        frac_sum = frac if frac_sum is None else frac_sum + frac
        if head_masks is None:
            head_masks = [[[] for _ in mods] for mods in out.head_masks]
        for into, mods in zip(head_masks, out.head_masks):
            for parts, h in zip(into, mods):
                parts.append(h > 0)
        ratios.append(out.flops_ratio)
    model.train(was_training)
    n = idx.numel()
    full = (n // head_batch) * head_batch or n  # whole serving batches, or the one short batch there is
    masks = [[torch.cat(parts) for parts in mods] for mods in head_masks]
    return {"samples": n, "flops_ratio": float(torch.cat(ratios).mean()),
            "token_frac": (frac_sum / n).tolist(),
            "heads": [[float(m.sum()) / n for m in mods] for mods in masks],
            "head_batch_keep": [[round(s / g, 4) for s, g in (batch_keep_fraction(m[:full], head_batch) for m in mods)]
                                for mods in masks]}


def with_head_batch_keep(model: MeterModel, split: VQASplit, *, samples: int | None = 1000, seed: int = 0,
                         head_batch: int | None = None) -> TrimConfig:
    """The model's trim config with `head_batch_keep` measured on `split` at its current thresholds, for a serving
    batch of `head_batch` (default: the one the config already plans for)."""
    head_batch = model.trim.head_keep_batch if head_batch is None else head_batch
    profile = adaptive_profile(model, split, samples=samples, seed=seed, head_batch=head_batch)
    return dataclasses.replace(model.trim, head_batch_keep=profile["head_batch_keep"], head_keep_batch=head_batch)


def static_trim_config(model: MeterModel, profile: dict[str, Any], scale: float = 1.0) -> TrimConfig:
    """Static keep ratios = scale x the adaptive mean fractions; head counts = rounded means (>= 1)."""
    ratios = [[min(1.0, max(0.001, f * scale)) for f in layer] for layer in profile["token_frac"]]
    c = model.config
    first = model.trim.first_trimmed_layer
    heads = []
    for ti, mods in enumerate(profile["heads"]):
        hs = [c.layer_spec(first + ti, m).num_heads for m, _ in c.attention_modules(first + ti)]
        heads.append([int(min(h, max(1, round(x * min(1.0, scale) if scale < 1 else x)))) for h, x in zip(hs, mods)])
    return dataclasses.replace(model.trim, static_keep_ratios=ratios, static_head_keep=heads)


def measure(model: MeterModel, split: VQASplit, mode: str, *, samples: int | None = 1000, batch_size: int = 256,
            seed: int = 0) -> dict[str, float]:
    """Accuracy and mean FLOPs ratio in one mode (`evaluate`'s, on the same seeded sample)."""
    r = evaluate(model, split, modes=(mode,), samples=samples, batch_size=batch_size, seed=seed)[mode]
    return {"accuracy": r["accuracy"], "flops_ratio": r["flops_ratio"]["mean"]}


def _bisect_budget(model: MeterModel, split: VQASplit, target_ratio: float, make, lo: float, hi: float, mode: str,
                   *, increasing: bool, samples: int | None, tol: float, max_iter: int,
                   seed: int) -> tuple[TrimConfig, dict[str, float]]:
    """Bisection on one scalar x of `make(x) -> TrimConfig` until the mean FLOPs ratio measured in
    `mode` is target_ratio +- tol (the ratio grows with x when `increasing`); the closest config wins."""
    best: tuple[TrimConfig, dict[str, float]] | None = None
    with using_trim(model):
        for _ in range(max_iter):
            mid = (lo + hi) / 2
            model.trim = make(mid)
            m = measure(model, split, mode, samples=samples, seed=seed)
            if best is None or abs(m["flops_ratio"] - target_ratio) < abs(best[1]["flops_ratio"] - target_ratio):
                best = (model.trim, m)
            if abs(m["flops_ratio"] - target_ratio) <= tol:
                break
            if (m["flops_ratio"] > target_ratio) == increasing:
                hi = mid
            else:
                lo = mid
    return best


def match_static_budget(model: MeterModel, split: VQASplit, target_ratio: float, *, samples: int | None = 1000,
                        profile: dict[str, Any] | None = None, tol: float = 0.005, max_iter: int = 20,
                        seed: int = 0) -> tuple[TrimConfig, dict[str, float]]:
    """Static keep ratios whose measured mean FLOPs ratio on `split` is target_ratio (+- tol), by
    bisection on a common scale of the adaptive model's per-layer fractions."""
    profile = profile or adaptive_profile(model, split, samples=samples, seed=seed)
    return _bisect_budget(model, split, target_ratio, lambda x: static_trim_config(model, profile, x), 0.05, 4.0,
                          "static", increasing=True, samples=samples, tol=tol, max_iter=max_iter, seed=seed)


def shift_thresholds(trim: TrimConfig, offset: float) -> TrimConfig:
    """The trimmers' token and head decision thresholds moved by one global offset (logit units); head keep rates
    measured at the old thresholds are dropped."""
    return dataclasses.replace(trim, token_threshold=trim.token_threshold + offset,
                               head_threshold=trim.head_threshold + offset, head_batch_keep=None)


@torch.no_grad()
def layer_score_spread(model: MeterModel, split: VQASplit, *, samples: int | None = 1000, seed: int = 0) -> list[float]:
    """Standard deviation of the token trimmers' logits per trimmed layer (both modalities), in `prune`."""
    per_layer: list[list[torch.Tensor]] = [[] for _ in model.token_trimmers]
    hooks = [mod.register_forward_hook(lambda _m, _i, out, ti=ti: per_layer[ti].append(out.flatten()))
             for ti, mods in enumerate(model.token_trimmers) for mod in mods]
    try:
        measure(model, split, "prune", samples=samples, seed=seed)
    finally:
        for h in hooks:
            h.remove()
    return [float(torch.cat(x).std()) if x else 1.0 for x in per_layer]


def match_adaptive_budget(model: MeterModel, split: VQASplit, target_ratio: float, *, samples: int | None = 1000,
                          tol: float = 0.005, max_iter: int = 40, span: float = 8.0, per_layer: bool = False,
                          seed: int = 0) -> tuple[TrimConfig, dict[str, float]]:
    """Adaptive pruning at another budget without retraining, by bisection on the mean `prune`-mode
    FLOPs ratio on `split`: one global offset on the decision thresholds, or (`per_layer`) an offset
    per trimmed layer proportional to the spread of that layer's token scores (x * std_l / mean std),
    so layers whose scores are spread wide move further."""
    base = model.trim
    if not per_layer:
        make = lambda x: shift_thresholds(base, x)  # noqa: E731
    else:
        spread = layer_score_spread(model, split, samples=samples, seed=seed)
        mean = sum(spread) / len(spread)
        start = base.layer_threshold_offsets or [0.0] * len(spread)
        make = lambda x: dataclasses.replace(  # noqa: E731
            base, layer_threshold_offsets=[o + x * s / mean for o, s in zip(start, spread)], head_batch_keep=None)
    lo, hi = _bracket(model, split, make, target_ratio, span, samples=samples, seed=seed)
    return _bisect_budget(model, split, target_ratio, make, lo, hi, "prune", increasing=False, samples=samples,
                          tol=tol, max_iter=max_iter, seed=seed)


def _bracket(model: MeterModel, split: VQASplit, make, target_ratio: float, span: float, *, samples, seed,
             limit: float = 1e4) -> tuple[float, float]:
    """Widen [-span, span] (doubling) until the FLOPs ratio at +span is <= target and at -span >= target:
    trained trimmers' logits can be far larger than the initial span."""
    bounds = []
    with using_trim(model):
        for sign, ok in ((1.0, lambda r: r <= target_ratio), (-1.0, lambda r: r >= target_ratio)):
            s = span
            while s < limit:
                model.trim = make(sign * s)
                if ok(measure(model, split, "prune", samples=samples, seed=seed)["flops_ratio"]):
                    break
                s *= 2
            bounds.append(sign * s)
    return bounds[1], bounds[0]


def calibrate_budget(ckpt, data: str, target_ratio: float, out, *, samples: int = 1000, holdout: int = 2000,
                     per_layer: bool = False, heads_batch: int | None = None, seed: int = 0, force: bool = False,
                     log=None) -> dict[str, Any]:
    """`trimkit calibrate budget`: hit a mean FLOPs ratio without retraining.

    (a) adaptive: one global offset on the trimmers' decision thresholds (or per-layer offsets scaled
    by each layer's score spread, `per_layer`), bisected on `samples` validation questions; (b) static: per-layer keep ratios (and head counts) that reproduce the
    calibrated adaptive model's mean cost, stored for `trimkit export --mode static`; (c) the head keep rates
    `export --heads auto` plans with, for a serving batch of `heads_batch` (default: the checkpoint's own, 8 unless
    planned otherwise). Accuracy and FLOPs ratio before/after are measured on `holdout` test questions. Writes
    `out` (atomic).
    """
    from ..checkpoint import save_checkpoint
    from ..errors import BadInputError

    say = log or (lambda msg: None)
    if not 0.0 < target_ratio <= 1.0:
        raise BadInputError(f"--target {target_ratio} is outside (0, 1]")
    if samples < 1 or holdout < 1:
        raise BadInputError("--samples and --holdout must be positive")
    _check_heads_batch(heads_batch, samples)
    model, task = _checkpoint_and_data(ckpt, data, out, force=force, seed=seed)
    heads_batch = model.trim.head_keep_batch if heads_batch is None else heads_batch
    held = dict(samples=holdout, seed=seed)
    before = measure(model, task.test, "prune", **held)
    say(f"before: accuracy {100 * before['accuracy']:.2f}%, FLOPs ratio {before['flops_ratio']:.3f}; "
        f"calibrating thresholds on {min(samples, len(task.val))} validation questions ...")
    native = model.trim
    trim, calib = match_adaptive_budget(model, task.val, target_ratio, samples=samples, per_layer=per_layer,
                                        seed=seed)
    model.trim = trim
    if per_layer:
        start = native.layer_threshold_offsets or [0.0] * len(trim.layer_threshold_offsets)
        offsets = [after - before for after, before in zip(trim.layer_threshold_offsets, start)]
    else:
        offsets = [trim.token_threshold - native.token_threshold]
    say(f"adaptive: threshold offset{'s' if per_layer else ''} {', '.join(f'{o:+.3f}' for o in offsets)} -> "
        f"FLOPs ratio {calib['flops_ratio']:.3f} on validation; matching static keep ratios ...")
    # one profile of the calibrated model: the static ratios start from it, `export --heads auto` reads its head rates
    profile = adaptive_profile(model, task.val, samples=samples, seed=seed, head_batch=heads_batch)
    static_trim, static_calib = match_static_budget(model, task.val, calib["flops_ratio"], samples=samples,
                                                    profile=profile, seed=seed)
    model.trim = dataclasses.replace(trim, static_keep_ratios=static_trim.static_keep_ratios,
                                     static_head_keep=static_trim.static_head_keep,
                                     head_batch_keep=profile["head_batch_keep"], head_keep_batch=heads_batch)
    after = measure(model, task.test, "prune", **held)
    static = measure(model, task.test, "static", **held)
    record = {"data": data, "samples": min(samples, len(task.val)), "split": "val", "seed": seed,
              "target": target_ratio, "heads_batch": heads_batch,
              "method": "per-layer threshold offsets" if per_layer else "global threshold offset",
              "threshold_offset": offsets[0] if not per_layer else None, "layer_offsets": offsets if per_layer else None,
              "validation": {"adaptive": calib, "static": static_calib},
              "holdout": {"split": "test", "samples": min(holdout, len(task.test)), "before": before,
                          "adaptive": after, "static": static}}
    model.meta.pop("heads_calibration", None)  # measured at the old thresholds: the record above replaces it
    save_checkpoint(model, out, force=force, meta={"calibration": record})
    return record


def _checkpoint_and_data(ckpt, data: str, out, *, force: bool, seed: int):
    """(model, task) for a calibration writing `out`: the output checked writable before anything loads, the
    checkpoint, and the dataset read with its tokenizer and labels."""
    from ..checkpoint import load_checkpoint
    from ..data import load_dataset
    from ..errors import BadInputError
    from ..fileio import check_writable

    check_writable(out, force=force)
    model = load_checkpoint(ckpt)
    if model.tokenizer is None:
        raise BadInputError(f"{ckpt}: checkpoint has no tokenizer for --data {data}")
    return model, load_dataset(data, tokenizer=model.tokenizer, labels=model.labels,
                               image_size=model.config.image_size, seed=seed)


def _check_heads_batch(batch: int | None, samples: int) -> None:
    from ..contract import MAX_BATCH
    from ..errors import BadInputError

    if batch is not None and not 1 <= batch <= MAX_BATCH:
        raise BadInputError(f"--heads-batch {batch}: a serving batch is 1-{MAX_BATCH}")
    if batch is not None and batch > samples:
        raise BadInputError(f"--heads-batch {batch} is more than the {samples} questions (--samples) it is measured on")


def calibrate_heads(ckpt, data: str, out, *, heads_batch: int, samples: int = 1000, seed: int = 0,
                    force: bool = False, log=None) -> dict[str, Any]:
    """`trimkit calibrate heads`: re-plan `export --heads auto` for a serving batch of `heads_batch` without touching
    the thresholds: measure, on `samples` validation questions, the fraction of each attention module's heads a
    batch of that size keeps (`TrimConfig.head_batch_keep`). Writes `out` (atomic) and returns the record."""
    from ..checkpoint import save_checkpoint
    from ..contract import GATHER_MAX_KEEP
    from ..errors import BadInputError

    say = log or (lambda msg: None)
    if samples < 1:
        raise BadInputError("--samples must be positive")
    _check_heads_batch(heads_batch, samples)
    model, task = _checkpoint_and_data(ckpt, data, out, force=force, seed=seed)
    if not model.trim.head_trimming:
        raise BadInputError(f"{ckpt}: this checkpoint trims no heads: there is nothing to plan")
    model.head_impl = "auto"  # the plan `export --heads auto` makes, before and after
    before = (model.trim.head_keep_batch, model.heads_plan()) if model.trim.head_batch_keep is not None else None
    say(f"measuring head keep rates for batch {heads_batch} on {min(samples, len(task.val))} validation questions ...")
    model.trim = with_head_batch_keep(model, task.val, samples=samples, seed=seed, head_batch=heads_batch)
    record = {"data": data, "samples": min(samples, len(task.val)), "split": "val", "seed": seed,
              "heads_batch": heads_batch, "head_batch_keep": model.trim.head_batch_keep,
              "gather_max_keep": GATHER_MAX_KEEP, "plan": model.heads_plan(),
              "before": None if before is None else {"heads_batch": before[0], "plan": before[1]}}
    save_checkpoint(model, out, force=force, meta={"heads_calibration": record})
    return record
