"""`trimkit verify`: prove an exported artifact against its checkpoint: numerics, task accuracy, speed.

Runs PyTorch (`prune` mode or whatever mode the artifact was exported in, and `off` as the
baseline), the artifact (ONNX Runtime for `.onnx`, TensorRT for a `.plan` with its manifest), and
a `full` export of the same checkpoint built on the fly for the speed reference. Every check is a
record with its value, threshold and verdict; any failed check -> exit 1 (CheckFailedError from
the CLI), a mismatched checkpoint/artifact or bad input -> exit 2.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .checkpoint import load_checkpoint
from .contract import INPUT_NAMES, TRIM_MODE_OF, artifact_metadata, check_match, tolerance
from .errors import BadInputError
from .export.inputs import sample_inputs
from .models import MeterModel
from .runtime import load_runner, run_arrays
from .runtime.timing import latency_summary, time_interleaved
from .runtime.torch import TorchRunner

__all__ = ["verify", "Check", "VerifyReport", "write_junit"]



@dataclass
class Check:
    name: str
    passed: bool
    value: float | None
    threshold: float | None
    comparison: str  # ">=" or "<="
    detail: str = ""


@dataclass
class VerifyReport:
    checkpoint: str
    artifact: str
    runtime: str
    mode: str
    checks: list[Check] = field(default_factory=list)
    numerics: dict[str, Any] = field(default_factory=dict)
    task: dict[str, Any] = field(default_factory=dict)
    speed: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["passed"] = self.passed
        return d


# ----------------------------------------------------------------------------- artifact


def _check_profiles(profiles, artifact: Path, batch_sizes, text_lens, max_text_len: int, numerics) -> None:
    """Every shape verify will run must fit one of the engine's optimization profiles (else exit 2)."""
    shapes = [(b, n) for b in batch_sizes for n in text_lens if n <= max_text_len]
    shapes += [numerics] if numerics else []
    outside = [f"batch {b} x text {n}" for b, n in shapes if not any(p.contains(b, n) for p in profiles)]
    if outside:
        have = "; ".join(f"batch {p.batch[0]}..{p.batch[2]}, text {p.text[0]}..{p.text[2]}" for p in profiles)
        raise BadInputError(f"{artifact}: {', '.join(outside)} outside every optimization profile ({have})")


# ----------------------------------------------------------------------------- measurements


def _batches(model: MeterModel, data: str, samples: int, batch_size: int, seed: int):
    """Labelled batches from a dataset, or random inputs (labels None)."""
    if data == "random":
        n_done = 0
        i = 0
        while n_done < samples:
            b = min(batch_size, samples - n_done)
            pv, ids, mask = sample_inputs(model.config, b, min(model.config.max_text_len, 12), seed=seed + i,
                                          tokenizer=getattr(model, "tokenizer", None))
            yield pv.numpy(), ids.numpy(), mask.numpy(), None
            n_done += b
            i += 1
        return
    from .data import load_dataset
    from .train.evaluate import sample_indices

    split = "test"
    task = load_dataset(data, tokenizer=model.tokenizer, labels=model.labels, image_size=model.config.image_size,
                        seed=seed, splits=(split,))
    s = task.split(split)
    idx = sample_indices(len(s), samples, seed)
    for start in range(0, idx.numel(), batch_size):
        pv, ids, mask, y = s.batch(idx[start: start + batch_size], trim_padding=True)
        yield pv.numpy(), ids.numpy(), mask.numpy(), y.numpy()


def _polygraphy_compare(ref: np.ndarray, art: np.ndarray, atol: float, rtol: float, runtime: str) -> bool:
    """Polygraphy's elementwise comparator on the logits of the samples whose pruning decisions agree.

    Polygraphy compares whole outputs; a sample whose keep_counts flipped (a score within float
    noise of the threshold) legitimately has other logits, so those rows are excluded before the
    comparison and counted by the keep_counts check instead.
    """
    if ref.size == 0:
        return False
    from polygraphy.comparator import Comparator, RunResults, SimpleCompareFunc
    from polygraphy.comparator.struct import IterationResult
    from polygraphy.logger import G_LOGGER

    results = RunResults()
    for name, arr in (("pytorch", ref), (runtime, art)):
        results.append((name, [IterationResult({"logits": arr}, runner_name=name)]))
    old = G_LOGGER.module_severity
    G_LOGGER.module_severity = G_LOGGER.ERROR
    try:
        acc = Comparator.compare_accuracy(
            results, compare_func=SimpleCompareFunc(atol=atol, rtol=rtol, check_error_stat="elemwise"))
    finally:
        G_LOGGER.module_severity = old
    return bool(acc)


def passing_atol(ref: np.ndarray, art: np.ndarray, rtol: float) -> float:
    """The smallest atol at which `_polygraphy_compare` passes at this rtol: an element fails Polygraphy's
    elementwise check only when its absolute difference exceeds atol and its relative one (to |ref|) rtol.
    NaN or Inf in either -> inf (Polygraphy fails those elements at any tolerance)."""
    ref = ref.astype(np.float64)
    diff = np.abs(art.astype(np.float64) - ref)
    if not np.isfinite(diff).all():
        return math.inf
    rel = diff / np.where(ref == 0, np.finfo(np.float64).eps, np.abs(ref))
    over = diff[rel > rtol]
    return float(over.max()) if over.size else 0.0


def _ceil_digits(x: float, digits: int = 3) -> str:
    """x rounded up to `digits` significant digits (a tolerance printed for reuse must not round down)."""
    if x <= 0:
        return "0"
    scale = 10.0 ** (math.floor(math.log10(x)) - digits + 1)
    return f"{math.ceil(x / scale) * scale:.{digits}g}"


def verify(ckpt: str | os.PathLike, artifact: str | os.PathLike, *, data: str = "random", samples: int = 256,
           batch_sizes: tuple[int, ...] = (1, 8), text_lens: tuple[int, ...] = (8, 16, 32), atol: float | None = None,
           rtol: float | None = None, min_agreement: float | None = None, max_accuracy_drop: float = 1.0,
           min_speedup: float | None = None, repeats: int = 20, threads: int | None = None, seed: int = 0,
           log=None) -> VerifyReport:
    say = log or (lambda msg: None)
    t_start = time.perf_counter()
    ckpt, artifact = Path(ckpt), Path(artifact)
    model = load_checkpoint(ckpt)
    info = artifact_metadata(artifact)
    check_match(model, ckpt, artifact, info)
    runtime, manifest, mode, precision = info.runtime, info.manifest, info.mode, info.precision
    trim_mode = TRIM_MODE_OF[mode]
    if trim_mode == "static":
        import dataclasses

        model.trim = dataclasses.replace(model.trim, **{k: info.config["trim_config"][k] for k in
                                                        ("static_keep_ratios", "static_head_keep")})
    if data != "random" and model.tokenizer is None:
        raise BadInputError(f"{ckpt}: checkpoint has no tokenizer for --data {data}")
    defaults = tolerance(precision)
    atol = atol if atol is not None else defaults.atol
    rtol = rtol if rtol is not None else defaults.rtol
    min_agreement = min_agreement if min_agreement is not None else defaults.min_agreement
    if manifest is not None:
        _check_profiles(manifest["profiles"], artifact, batch_sizes, text_lens, model.config.max_text_len,
                        numerics=(max(batch_sizes), min(model.config.max_text_len, 12)) if data == "random" else None)
    art = load_runner(runtime, artifact, threads=threads, precision=precision,
                      **({"manifest": manifest} if manifest is not None else {}))
    ref, base = TorchRunner(model, trim_mode), TorchRunner(model, "off")
    report = VerifyReport(str(ckpt), str(artifact), runtime, mode)

    # numerics + task, on the data, at the first batch size
    say(f"comparing {runtime} with PyTorch ({trim_mode}) on {samples} {data} samples ...")
    abs_err, rel_err, agree, kc_agree = [], [], [], []
    same_ref, same_art = [], []
    correct = {"pytorch_full": [], "pytorch_trimmed": [], "artifact": []}
    labelled = True
    ratios = []
    for pv, ids, mask, y in _batches(model, data, samples, max(batch_sizes), seed):
        if not np.isfinite(pv).all():
            raise BadInputError(f"--data {data}: input pixels contain NaN or Inf")
        r_logits, r_counts = run_arrays(ref, pv, ids, mask)
        a_logits, a_counts = run_arrays(art, pv, ids, mask)
        b_logits, _ = run_arrays(base, pv, ids, mask)
        same = (a_counts == r_counts).reshape(len(ids), -1).all(axis=1)
        kc_agree.extend(same.tolist())
        same_ref.append(r_logits[same])
        same_art.append(a_logits[same])
        d = np.abs(a_logits - r_logits)[same]
        abs_err.extend(d.max(axis=1).tolist() if d.size else [])
        rel_err.extend((d / (np.abs(r_logits[same]) + 1e-6)).max(axis=1).tolist() if d.size else [])
        agree.extend((a_logits.argmax(1) == r_logits.argmax(1)).tolist())
        with torch.no_grad():
            ratios.extend(model(torch.from_numpy(pv), torch.from_numpy(ids), torch.from_numpy(mask),
                                mode=trim_mode).flops_ratio.tolist())
        if y is None:
            labelled = False
        else:
            correct["pytorch_full"].extend((b_logits.argmax(1) == y).tolist())
            correct["pytorch_trimmed"].extend((r_logits.argmax(1) == y).tolist())
            correct["artifact"].extend((a_logits.argmax(1) == y).tolist())
    n = len(agree)
    report.numerics = {
        "samples": n, "atol": atol, "rtol": rtol,
        "max_abs_err": max(abs_err, default=0.0), "mean_abs_err": float(np.mean(abs_err)) if abs_err else 0.0,
        "max_rel_err": max(rel_err, default=0.0), "mean_rel_err": float(np.mean(rel_err)) if rel_err else 0.0,
        "argmax_agreement": sum(agree) / n, "keep_counts_agreement": sum(kc_agree) / n,
        "decision_flips": n - sum(kc_agree), "mean_flops_ratio": float(np.mean(ratios)),
    }
    worst = report.numerics["max_abs_err"]
    ref_logits, art_logits = np.concatenate(same_ref), np.concatenate(same_art)
    within = _polygraphy_compare(ref_logits, art_logits, atol, rtol, runtime)
    needed = passing_atol(ref_logits, art_logits, rtol)
    report.numerics["passing_atol"] = needed if math.isfinite(needed) else None
    hint = ("" if within or not ref_logits.size else "; non-finite logits: no --atol passes" if math.isinf(needed)
            else f"; passes at this rtol with --atol {_ceil_digits(needed)}")
    report.checks.append(Check("logits_within_tolerance", within, worst, atol, "<=",
                               f"Polygraphy elementwise compare over the {sum(kc_agree)} samples with equal "
                               f"keep_counts (atol {atol}, rtol {rtol}); max |artifact - pytorch| shown" + hint))
    report.checks.append(Check("argmax_agreement", report.numerics["argmax_agreement"] >= min_agreement,
                               report.numerics["argmax_agreement"], min_agreement, ">="))
    report.checks.append(Check("keep_counts_agreement", report.numerics["keep_counts_agreement"] >= min_agreement,
                               report.numerics["keep_counts_agreement"], min_agreement, ">=",
                               f"{report.numerics['decision_flips']} samples with a different pruning decision"))
    if labelled:
        acc = {k: sum(v) / len(v) for k, v in correct.items()}
        report.task = {"data": data, "samples": n, "accuracy": acc}
        drop = 100 * (acc["pytorch_full"] - acc["artifact"])
        report.checks.append(Check("accuracy_drop_points", drop <= max_accuracy_drop + 1e-9, drop, max_accuracy_drop, "<=",
                                   f"PyTorch full {100 * acc['pytorch_full']:.2f}% -> artifact "
                                   f"{100 * acc['artifact']:.2f}% (PyTorch trimmed {100 * acc['pytorch_trimmed']:.2f}%)"))

    # speed: artifact vs a full export of the same checkpoint (built on the fly) vs PyTorch
    if runtime == "onnxruntime":
        say("building the full export for the speed reference ...")
        from .export.onnx import to_onnx

        with tempfile.TemporaryDirectory(prefix="trimkit-verify-") as tmp:
            full = to_onnx(model, Path(tmp) / "full.onnx", mode="full", check=False,
                           precision="fp16" if precision == "fp16" else "fp32")
            full_runner = load_runner("onnxruntime", full.path, threads=threads)
            report.speed = _speed(model, {"artifact": art, "full-export": full_runner, f"pytorch-{trim_mode}": ref},
                                  batch_sizes, text_lens, repeats, seed, say)
    else:
        report.speed = _speed(model, {"artifact": art, f"pytorch-{trim_mode}": ref}, batch_sizes, text_lens, repeats,
                              seed, say)
    if min_speedup is not None:
        key = "speedup_vs_full" if runtime == "onnxruntime" else "speedup_vs_pytorch"
        values = [s[key] for s in report.speed if s.get(key) is not None]
        worst_speedup = min(values) if values else None
        report.checks.append(Check(f"min_{key}", worst_speedup is not None and worst_speedup >= min_speedup,
                                   worst_speedup, min_speedup, ">=", "slowest shape"))
    report.seconds = time.perf_counter() - t_start
    return report


def _speed(model, runners, batch_sizes, text_lens, repeats, seed, say) -> list[dict[str, Any]]:
    rows = []
    too_long = [n for n in text_lens if n > model.config.max_text_len]
    if too_long:
        say(f"skipping text lengths {', '.join(map(str, too_long))}: above the model's max_text_len "
            f"{model.config.max_text_len}")
    for b in batch_sizes:
        for n in (n for n in text_lens if n <= model.config.max_text_len):
            pv, ids, mask = (t.numpy() for t in sample_inputs(model.config, b, n, seed=seed, ragged=False,
                                                              tokenizer=getattr(model, "tokenizer", None)))
            feeds = dict(zip(INPUT_NAMES, (pv, ids, mask)))
            lat = time_interleaved({name: partial(r.run, feeds) for name, r in runners.items()}, repeats)
            row = {"batch": b, "text_len": n, **{name: latency_summary(ts, b) for name, ts in lat.items()}}
            art, ref = list(runners)[0], list(runners)[-1]
            row["speedup_vs_pytorch"] = row[ref]["p50_ms"] / row[art]["p50_ms"]
            row["speedup_vs_full"] = (row["full-export"]["p50_ms"] / row[art]["p50_ms"]
                                      if "full-export" in row else None)
            rows.append(row)
    return rows


def write_junit(report: VerifyReport, path: str | os.PathLike) -> None:
    """One <testcase> per check; failures carry value and threshold."""
    from xml.sax.saxutils import quoteattr

    from .fileio import atomic_write

    failures = sum(not c.passed for c in report.checks)
    lines = ['<?xml version="1.0" encoding="UTF-8"?>',
             f'<testsuite name="trimkit.verify" tests="{len(report.checks)}" failures="{failures}" errors="0" '
             f'time="{report.seconds:.3f}">']
    for c in report.checks:
        lines.append(f'  <testcase classname="trimkit.verify.{report.runtime}" name={quoteattr(c.name)}>')
        if not c.passed:
            msg = f"{c.name}: {c.value} not {c.comparison} {c.threshold}"
            lines.append(f"    <failure message={quoteattr(msg)}>{quoteattr(c.detail)[1:-1]}</failure>")
        lines.append("  </testcase>")
    lines.append("</testsuite>")
    atomic_write(path, lambda tmp: tmp.write_text("\n".join(lines) + "\n"), force=True)
