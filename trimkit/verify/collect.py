"""Collect outputs with runners: the artifact's, PyTorch's in the artifact's trim mode and PyTorch's
untrimmed, over the same batches, and interleaved timings per shape. No verdicts here."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import torch

from ..contract import INPUT_NAMES
from ..errors import BadInputError
from ..export.inputs import sample_inputs
from ..runtime import Runner
from ..runtime.timing import latency_summary, time_interleaved

__all__ = ["Outputs", "batches", "batch_shapes", "collect_outputs", "collect_outputs_many", "collect_speed"]


@dataclass
class Outputs:
    """Every runner's outputs over the same N samples."""

    ref_logits: np.ndarray  # (N, labels) PyTorch in the artifact's trim mode
    ref_counts: np.ndarray  # (N, layers, 2)
    art_logits: np.ndarray  # (N, labels)
    art_counts: np.ndarray  # (N, layers, 2)
    full_logits: np.ndarray  # (N, labels) PyTorch untrimmed
    flops_ratio: np.ndarray  # (N,) PyTorch's decided FLOPs ratio in the trim mode
    labels: np.ndarray | None  # (N,) or None for random inputs
    executed_ratio: np.ndarray | None = None  # (N,) executed FLOPs ratio in the artifact's layout and head pruning


def batches(model, data: str, samples: int, batch_size: int, seed: int) -> Iterator[tuple[np.ndarray, ...]]:
    """(pixel_values, input_ids, attention_mask, labels or None) batches from a dataset's test split, or
    random inputs."""
    if data == "random":
        n_done, i = 0, 0
        while n_done < samples:
            b = min(batch_size, samples - n_done)
            pv, ids, mask = sample_inputs(model.config, b, min(model.config.max_text_len, 12), seed=seed + i,
                                          tokenizer=getattr(model, "tokenizer", None))
            yield pv.numpy(), ids.numpy(), mask.numpy(), None
            n_done += b
            i += 1
        return
    from ..data import load_dataset
    from ..evaluate import sample_indices

    split = "test"
    task = load_dataset(data, tokenizer=model.tokenizer, labels=model.labels, image_size=model.config.image_size,
                        seed=seed, splits=(split,))
    s = task.split(split)
    idx = sample_indices(len(s), samples, seed)
    for start in range(0, idx.numel(), batch_size):
        pv, ids, mask, y = s.batch(idx[start: start + batch_size], trim_padding=True)
        yield pv.numpy(), ids.numpy(), mask.numpy(), y.numpy()


def batch_shapes(model, data: str, samples: int, batch_size: int, seed: int) -> list[tuple[int, int]]:
    """The (batch, text length) of every batch `batches` yields, without building pixels or running anything
    (a TensorRT engine's profiles are checked against them before any work)."""
    if data == "random":
        n = min(model.config.max_text_len, 12)
        return [(min(batch_size, samples - s), n) for s in range(0, samples, batch_size)]
    from ..data import load_dataset
    from ..evaluate import sample_indices

    task = load_dataset(data, tokenizer=model.tokenizer, labels=model.labels, image_size=model.config.image_size,
                        seed=seed, splits=("test",))
    s = task.split("test")
    idx = sample_indices(len(s), samples, seed)
    shapes = []
    for start in range(0, idx.numel(), batch_size):
        mask = s.attention_mask[idx[start: start + batch_size]]  # (b, T): trim_padding keeps the longest row
        shapes.append((len(mask), int(mask.sum(1).max())))
    return shapes


def collect_outputs_many(model, trim_mode: str, artifacts: dict[str, Runner], reference: Runner,
                         baseline: Runner, data: str, samples: int, batch_size: int,
                         seed: int, graph: dict[str, str] | None = None) -> dict[str, Outputs]:
    """Run PyTorch (trimmed and untrimmed) once and every artifact runner over the same batches;
    NaN/Inf input pixels are bad input (exit 2). `graph`: the artifact's model attributes ("layout",
    "head_impl") under which the FLOPs ratios are counted, so that the executed ratio is the artifact's."""
    keys = ("rl", "rc", "fl", "fr", "er", "y") + tuple(f"{k}:{name}" for name in artifacts for k in ("al", "ac"))
    parts: dict[str, list[np.ndarray]] = {k: [] for k in keys}
    labelled = True
    for pv, ids, mask, y in batches(model, data, samples, batch_size, seed):
        if not np.isfinite(pv).all():
            raise BadInputError(f"--data {data}: input pixels contain NaN or Inf")
        feeds = dict(zip(INPUT_NAMES, (pv, ids, mask)))
        runs = [(("rl", "rc"), reference), (("fl", None), baseline)]
        runs += [((f"al:{name}", f"ac:{name}"), r) for name, r in artifacts.items()]
        for (lk, ck), runner in runs:
            logits, counts = runner.run(feeds)
            parts[lk].append(logits)
            if ck:
                parts[ck].append(counts)
        with torch.no_grad(), _as_graph(model, graph or {}):
            out = model(*(torch.from_numpy(a) for a in (pv, ids, mask)), mode=trim_mode)
        parts["fr"].append(out.flops_ratio.numpy())
        parts["er"].append(out.executed_flops_ratio.numpy())
        if y is None:
            labelled = False
        else:
            parts["y"].append(y)
    cat = {k: np.concatenate(v) for k, v in parts.items() if v}
    return {name: Outputs(cat["rl"], cat["rc"], cat[f"al:{name}"], cat[f"ac:{name}"], cat["fl"], cat["fr"],
                          cat["y"] if labelled else None, cat["er"]) for name in artifacts}


@contextlib.contextmanager
def _as_graph(model, attrs: dict[str, str]) -> Iterator[None]:
    """The model's layout and head pruning set to an artifact's for one forward, then back: the reference
    runner shares the model and keeps its own."""
    saved = {k: getattr(model, k) for k in attrs}
    for k, v in attrs.items():
        setattr(model, k, v)
    try:
        yield
    finally:
        for k, v in saved.items():
            setattr(model, k, v)


def collect_outputs(model, trim_mode: str, artifact: Runner, reference: Runner, baseline: Runner,
                    data: str, samples: int, batch_size: int, seed: int) -> Outputs:
    """Run the three runners over the data; NaN/Inf input pixels are bad input (exit 2)."""
    return collect_outputs_many(model, trim_mode, {"artifact": artifact}, reference, baseline, data, samples,
                                batch_size, seed)["artifact"]


def collect_speed(model, runners: dict[str, Runner], batch_sizes, text_lens, repeats: int, seed: int,
                  say: Callable[[str], None]) -> list[dict[str, Any]]:
    """Latency per (batch, text length) of each runner, timed interleaved on one random batch per shape.
    The first runner is the artifact and the last PyTorch; a runner named `full-export` is the speed
    reference."""
    rows = []
    too_long = [n for n in text_lens if n > model.config.max_text_len]
    if too_long:
        say(f"skipping text lengths {', '.join(map(str, too_long))}: above the model's max_text_len "
            f"{model.config.max_text_len}")
    art, ref = list(runners)[0], list(runners)[-1]
    for b in batch_sizes:
        for n in (n for n in text_lens if n <= model.config.max_text_len):
            arrays = sample_inputs(model.config, b, n, seed=seed, ragged=False,
                                   tokenizer=getattr(model, "tokenizer", None))
            feeds = dict(zip(INPUT_NAMES, (t.numpy() for t in arrays)))
            lat = time_interleaved({name: partial(r.run, feeds) for name, r in runners.items()}, repeats)
            row = {"batch": b, "text_len": n, **{name: latency_summary(ts, b) for name, ts in lat.items()}}
            row["speedup_vs_pytorch"] = row[ref]["p50_ms"] / row[art]["p50_ms"]
            row["speedup_vs_full"] = (row["full-export"]["p50_ms"] / row[art]["p50_ms"]
                                      if "full-export" in row else None)
            rows.append(row)
    return rows
