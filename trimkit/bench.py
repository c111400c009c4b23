"""`trimkit bench`: a sweep over trim targets, batch sizes and text lengths, written as a report.

For each trim target (the checkpoint's own thresholds, `native`, and FLOPs ratios reached by a
global threshold offset calibrated on the validation split, no retraining) it measures accuracy
and the per-instance FLOPs ratio on the test split, the tokens kept entering each trimmed layer,
and (optionally) static per-layer keep ratios at the same mean cost. Every target is exported to
ONNX (adaptive) beside one `full` export, and latency is timed interleaved per shape for ONNX
Runtime (full and each adaptive export) and PyTorch (`off` and `prune`), on real images with the
questions' words repeated to each text length.

Writes the report (`trimkit.report.bench`: report.md, bench.json, three PNG plots) into DIR, built
beside its final place and renamed, so a failed or interrupted run leaves no half-written report.
(The `benchmarks/` scripts are the project's own measurements; this is the user-facing command.)
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .errors import BadInputError
from .report.bench import write_report

if TYPE_CHECKING:
    from .runtime import Runner

__all__ = ["bench", "parse_targets", "tiled_inputs", "total_steps"]


def parse_targets(text: str) -> list[float | None]:
    """'native,0.5,0.33' -> [None, 0.5, 0.33] (None = the checkpoint's own thresholds)."""
    out: list[float | None] = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        if part == "native":
            out.append(None)
            continue
        try:
            r = float(part)
        except ValueError:
            raise BadInputError(f"--targets: {part!r} is neither 'native' nor a FLOPs ratio") from None
        if not 0.0 < r <= 1.0:
            raise BadInputError(f"--targets: FLOPs ratio {r} is outside (0, 1]")
        out.append(r)
    if not out:
        raise BadInputError("--targets: give at least one target")
    return list(dict.fromkeys(out))


def tiled_inputs(split, idx: torch.Tensor, text_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Real images and questions; each question's words repeated to exactly `text_len` tokens
    ([CLS] first, no padding) so latency can be measured at text lengths the data does not have."""
    pv, ids, mask, _ = split.batch(idx)
    out = torch.empty(ids.shape[0], text_len, dtype=torch.int64)
    for i in range(ids.shape[0]):
        words = ids[i, 1: int(mask[i].sum())]
        words = words if words.numel() else ids[i, :1]
        out[i, 0] = ids[i, 0]
        out[i, 1:] = words.repeat(text_len // words.numel() + 1)[: text_len - 1]
    return pv.numpy(), out.numpy(), np.ones_like(out.numpy())


def _label(target: float | None) -> str:
    return "native" if target is None else f"{target:g}"


def bench(ckpt: str | os.PathLike, out: str | os.PathLike, *, data: str = "easyvqa",
          targets: list[float | None] | None = None, batch_sizes: tuple[int, ...] = (1, 8),
          text_lens: tuple[int, ...] = (8, 16, 24), samples: int = 1000, calib_samples: int = 500,
          repeats: int = 10, threads: int | None = None, static: bool = True, seed: int = 0,
          force: bool = False, progress: Callable[[str, float], None] | None = None) -> dict[str, Any]:
    """Run the sweep and write the report folder `out`; returns the results (also in bench.json)."""
    from .checkpoint import load_checkpoint
    from .data import load_dataset

    out = Path(out)
    if out.exists() and not force:
        raise BadInputError(f"{out}: already exists; pass --force to overwrite")
    if out.exists() and not out.is_dir():
        raise BadInputError(f"{out}: is a file, not a folder")
    if not out.parent.exists():
        raise BadInputError(f"{out}: folder {out.parent} does not exist")
    targets = targets if targets is not None else [None, 0.7, 0.5, 0.35]
    tick = progress or (lambda what, amount: None)
    t_start = time.perf_counter()
    model = load_checkpoint(ckpt)
    if model.tokenizer is None:
        raise BadInputError(f"{ckpt}: checkpoint has no tokenizer; bench needs labelled --data")
    lens = [n for n in text_lens if n <= model.config.max_text_len]
    if not lens:
        raise BadInputError(f"--text-lens: all above the model's max_text_len {model.config.max_text_len}")
    task = load_dataset(data, tokenizer=model.tokenizer, labels=model.labels, image_size=model.config.image_size,
                        seed=seed, splits=("train", "val", "test"))
    result: dict[str, Any] = {"checkpoint": str(ckpt), "data": data, "samples": min(samples, len(task.test)),
                              "calibration_samples": min(calib_samples, len(task.val)), "seed": seed,
                              "threads": threads, "repeats": repeats, "points": [], "latency": []}
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        configs = _accuracy_sweep(model, task, targets, samples, calib_samples, static, seed, result, tick)
        _latency_sweep(model, task, configs, batch_sizes, lens, repeats, threads, seed, work, result, tick)
        result["seconds"] = time.perf_counter() - t_start
        write_report(result, work)
        for f in work.glob("*.onnx"):
            f.unlink()
        if out.exists():
            shutil.rmtree(out)
        os.replace(work, out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return result


def _accuracy_sweep(model, task, targets, samples, calib_samples, static, seed, result, tick) -> dict[str, Any]:
    """Accuracy, FLOPs ratio and kept tokens per target; returns {label: TrimConfig} for export."""
    from .calibration import match_adaptive_budget, match_static_budget
    from .evaluate import evaluate, using_trim

    native = model.trim
    full = evaluate(model, task.test, modes=("off",), samples=samples, seed=seed)["off"]
    result["full"] = {"accuracy": full["accuracy"], "flops_ratio": 1.0,
                      "executed_flops_ratio": full["executed_flops_ratio"]["mean"]}
    configs = {}
    trimmed_layers = [d for d in range(model.config.num_layers) if d >= native.first_trimmed_layer]
    result["trimmed_layers"] = trimmed_layers
    for target in targets:
        label = _label(target)
        if target is None:
            trim, offset = native, 0.0
        else:
            trim, _ = match_adaptive_budget(model, task.val, target, samples=calib_samples, seed=seed)
            offset = trim.token_threshold - native.token_threshold
        tick(f"calibrated {label}", 1)
        with using_trim(model, trim):
            res = evaluate(model, task.test, modes=("prune",), samples=samples, seed=seed)
            r = res["prune"]
            point = {"target": target, "label": label, "threshold_offset": offset, "accuracy": r["accuracy"],
                     "flops_ratio": r["flops_ratio"]["mean"], "flops_p10": r["flops_ratio"]["p10"],
                     "flops_p90": r["flops_ratio"]["p90"], "executed_flops_ratio": r["executed_flops_ratio"]["mean"],
                     "keep_per_layer": r["keep_per_layer"]}
            # the executed ratio depends on how the evaluation ran: said once, beside the numbers
            result["executed"] = {k: res[k] for k in ("batch_size", "layout", "head_impl")}
            if static:  # static keep ratios matched to this target's adaptive cost
                static_trim, _ = match_static_budget(model, task.val, point["flops_ratio"], samples=calib_samples,
                                                     seed=seed)
                model.trim = static_trim
                s = evaluate(model, task.test, modes=("static",), samples=samples, seed=seed)["static"]
                point["static"] = {"accuracy": s["accuracy"], "flops_ratio": s["flops_ratio"]["mean"],
                                   "executed_flops_ratio": s["executed_flops_ratio"]["mean"]}
        configs[label] = trim
        result["points"].append(point)
        tick(f"evaluated {label}", 1)
    return configs


def _latency_sweep(model, task, configs, batch_sizes, lens, repeats, threads, seed, work, result, tick) -> None:
    from .contract import INPUT_NAMES
    from .evaluate import using_trim
    from .export.onnx import to_onnx
    from .runtime import load_runner
    from .runtime.timing import latency_summary, time_interleaved
    from .runtime.torch import TorchRunner

    native = model.trim
    runners: dict[str, Runner] = {
        "onnxruntime full": load_runner("onnxruntime", to_onnx(model, work / "full.onnx", mode="full").path,
                                        threads=threads)}
    tick("exported full", 1)
    for label, trim in configs.items():
        with using_trim(model, trim):
            path = to_onnx(model, work / f"adaptive-{label}.onnx", mode="adaptive").path
        runners[f"onnxruntime adaptive@{label}"] = load_runner("onnxruntime", path, threads=threads)
        tick(f"exported adaptive@{label}", 1)
    runners["pytorch off"] = TorchRunner(model, "off", trim=native)
    first = next(iter(configs))
    runners[f"pytorch prune@{first}"] = TorchRunner(model, "prune", trim=configs[first])
    g = torch.Generator().manual_seed(seed)
    with using_trim(model):  # the torch runners set their TrimConfig before every call
        for b in batch_sizes:
            idx = torch.randperm(len(task.test), generator=g)[:b]
            for n in lens:
                feeds = dict(zip(INPUT_NAMES, tiled_inputs(task.test, idx, n)))
                times = time_interleaved({name: partial(r.run, feeds) for name, r in runners.items()}, repeats)
                result["latency"].append({"batch": b, "text_len": n,
                                          **{name: latency_summary(ts, b) for name, ts in times.items()}})
                tick(f"timed batch {b} text {n}", 1)
    result["runtimes"] = list(runners)


def total_steps(targets, batch_sizes, lens) -> int:
    """Progress units `bench` reports: 2 per target, 1 per export, 1 per timed shape."""
    return 2 * len(targets) + 1 + len(targets) + len(batch_sizes) * len(lens)
