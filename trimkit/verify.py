"""`trimkit verify`: prove an exported artifact against its checkpoint: numerics, task accuracy, speed.

Runs PyTorch (`prune` mode or whatever mode the artifact was exported in, and `off` as the
baseline), the artifact (ONNX Runtime for `.onnx`, TensorRT for a `.plan` with its manifest), and
a `full` export of the same checkpoint built on the fly for the speed reference. Every check is a
record with its value, threshold and verdict; any failed check -> exit 1 (CheckFailedError from
the CLI), a mismatched checkpoint/artifact or bad input -> exit 2.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .checkpoint import load_checkpoint, weights_digest
from .errors import BadInputError
from .export.inputs import sample_inputs
from .export.onnx import OUTPUT_NAMES, TRIM_MODE_OF, ort_session
from .models import MeterModel

__all__ = ["verify", "Check", "VerifyReport", "write_junit", "artifact_metadata", "check_match", "OrtRunner",
           "TorchRunner", "time_interleaved", "latency_summary", "PRECISION_DEFAULTS"]

# Default tolerances per artifact precision. fp16 and int8 change the hidden states a trimmer
# scores, so a few pruning decisions near the threshold may flip: int8 gates agreement at 98%.
PRECISION_DEFAULTS = {
    "fp32": {"atol": 1e-4, "rtol": 1e-3, "min_agreement": 0.99},
    "fp16": {"atol": 5e-2, "rtol": 5e-2, "min_agreement": 0.99},
    "int8": {"atol": 0.25, "rtol": 0.1, "min_agreement": 0.98},
}


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


# ----------------------------------------------------------------------------- runners


class TorchRunner:
    """PyTorch in one trim mode (optionally with its own TrimConfig on a shared model)."""

    def __init__(self, model: MeterModel, mode: str, name: str | None = None, trim=None) -> None:
        self.model, self.mode, self.trim, self.name = model, mode, trim, name or f"pytorch-{mode}"

    @torch.no_grad()
    def __call__(self, pv: np.ndarray, ids: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.trim is not None:
            self.model.trim = self.trim
        out = self.model(torch.from_numpy(pv), torch.from_numpy(ids), torch.from_numpy(mask), mode=self.mode)
        return out.logits.numpy(), out.keep_counts.numpy()


class OrtRunner:
    def __init__(self, path: Path, threads: int | None, name: str = "artifact") -> None:
        self.sess, self.name = ort_session(path, threads=threads), name

    def __call__(self, pv, ids, mask):
        logits, counts = self.sess.run(OUTPUT_NAMES, {"pixel_values": pv, "input_ids": ids, "attention_mask": mask})
        return logits, counts


class _TrtRunner:
    """TensorRT engine runner (needs TensorRT, a GPU and torch CUDA for device buffers)."""

    def __init__(self, path: Path, manifest: dict[str, Any]) -> None:
        from .export.trt import check_trt_ready

        trt, _ = check_trt_ready()
        if not torch.cuda.is_available():
            from .errors import MissingDependencyError

            raise MissingDependencyError("running a TensorRT engine here needs a CUDA build of torch for device buffers")
        self.trt = trt
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise BadInputError(f"{path}: TensorRT could not deserialize the engine (other TensorRT version or GPU?)")
        self.ctx = self.engine.create_execution_context()
        self.profiles = manifest["profiles"]
        self.num_labels = len(manifest["labels"])
        self.name = "artifact"

    def __call__(self, pv, ids, mask):
        b, n = ids.shape
        idx = next((i for i, p in enumerate(self.profiles) if p.contains(b, n)), None)
        if idx is None:
            raise BadInputError(f"batch {b}, text length {n} is outside every optimization profile of the engine")
        stream = torch.cuda.current_stream()
        self.ctx.set_optimization_profile_async(idx, stream.cuda_stream)
        feeds = {"pixel_values": torch.from_numpy(pv).cuda(), "input_ids": torch.from_numpy(ids).cuda(),
                 "attention_mask": torch.from_numpy(mask).cuda()}
        for name, t in feeds.items():
            self.ctx.set_input_shape(name, tuple(t.shape))
            self.ctx.set_tensor_address(name, t.data_ptr())
        logits = torch.empty(b, self.num_labels, device="cuda")
        counts = torch.empty(tuple(self.ctx.get_tensor_shape("keep_counts")), dtype=torch.int64, device="cuda")
        self.ctx.set_tensor_address("logits", logits.data_ptr())
        self.ctx.set_tensor_address("keep_counts", counts.data_ptr())
        if not self.ctx.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed")
        stream.synchronize()
        return logits.cpu().numpy(), counts.cpu().numpy()


# ----------------------------------------------------------------------------- artifact


def artifact_metadata(path: Path) -> tuple[str, dict[str, Any], dict[str, Any] | None]:
    """(runtime, trimkit metadata as dicts, manifest or None) of an .onnx or .plan artifact."""
    if not path.exists():
        raise BadInputError(f"{path}: no such file")
    if path.suffix == ".onnx":
        from .export.trt import onnx_model_config

        _, meta = onnx_model_config(path)
        cfg = json.loads(meta["trimkit_config"])
        return "onnxruntime", {"mode": meta["trimkit_mode"], "config": cfg, "labels": json.loads(meta["labels"]),
                               "weights": meta.get("trimkit_weights_sha256")}, None
    if path.suffix in (".plan", ".engine", ".trt"):
        from .export.manifest import read_manifest

        man = read_manifest(path)
        cfg = man["trimkit_config"]
        return "tensorrt", {"mode": man["trimkit_mode"], "config": cfg, "labels": man["labels"],
                            "weights": man.get("weights_sha256")}, man
    raise BadInputError(f"{path}: unknown artifact type (expected .onnx or a TensorRT .plan with its manifest)")


def check_match(model: MeterModel, ckpt: Path, art: Path, meta: dict[str, Any]) -> None:
    cfg = meta["config"]
    if cfg.get("model_config") != model.config.to_dict():
        diff = sorted(k for k, v in model.config.to_dict().items() if cfg.get("model_config", {}).get(k) != v)
        raise BadInputError(f"{art} does not match {ckpt}: model config differs ({', '.join(diff) or 'fields'})")
    if meta["labels"] != list(model.labels):
        raise BadInputError(f"{art} does not match {ckpt}: labels differ")
    if meta["weights"] and meta["weights"] != weights_digest(model):
        raise BadInputError(f"{art} was exported from other weights than {ckpt} (trimkit_weights_sha256 differs)")


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


def time_interleaved(runners: dict[str, Any], feed, repeats: int) -> dict[str, list[float]]:
    """Seconds per call of each runner, interleaved (one call of each per round) so that a noisy
    machine slows them alike; one warm-up call each first."""
    for run in runners.values():
        run(*feed)
    times: dict[str, list[float]] = {k: [] for k in runners}
    for _ in range(repeats):
        for name, run in runners.items():
            t0 = time.perf_counter()
            run(*feed)
            times[name].append(time.perf_counter() - t0)
    return times


def latency_summary(seconds: list[float], batch: int) -> dict[str, float]:
    p50 = statistics.median(seconds)
    return {"p50_ms": 1000 * p50, "p90_ms": 1000 * float(np.quantile(seconds, 0.9)), "throughput": batch / p50}


def verify(ckpt: str | os.PathLike, artifact: str | os.PathLike, *, data: str = "random", samples: int = 256,
           batch_sizes: tuple[int, ...] = (1, 8), text_lens: tuple[int, ...] = (8, 16, 32), atol: float | None = None,
           rtol: float | None = None, min_agreement: float | None = None, max_accuracy_drop: float = 1.0,
           min_speedup: float | None = None, repeats: int = 20, threads: int | None = None, seed: int = 0,
           log=None) -> VerifyReport:
    say = log or (lambda msg: None)
    t_start = time.perf_counter()
    ckpt, artifact = Path(ckpt), Path(artifact)
    model = load_checkpoint(ckpt)
    runtime, meta, manifest = artifact_metadata(artifact)
    check_match(model, ckpt, artifact, meta)
    mode = meta["mode"]
    precision = meta["config"].get("precision", "fp32")
    trim_mode = TRIM_MODE_OF[mode]
    if trim_mode == "static":
        import dataclasses

        model.trim = dataclasses.replace(model.trim, **{k: meta["config"]["trim_config"][k] for k in
                                                        ("static_keep_ratios", "static_head_keep")})
    if data != "random" and model.tokenizer is None:
        raise BadInputError(f"{ckpt}: checkpoint has no tokenizer for --data {data}")
    defaults = PRECISION_DEFAULTS.get(precision, PRECISION_DEFAULTS["fp32"])
    atol = atol if atol is not None else defaults["atol"]
    rtol = rtol if rtol is not None else defaults["rtol"]
    min_agreement = min_agreement if min_agreement is not None else defaults["min_agreement"]
    if manifest is not None:
        _check_profiles(manifest["profiles"], artifact, batch_sizes, text_lens, model.config.max_text_len,
                        numerics=(max(batch_sizes), min(model.config.max_text_len, 12)) if data == "random" else None)
    art = OrtRunner(artifact, threads) if runtime == "onnxruntime" else _TrtRunner(artifact, manifest)
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
        r_logits, r_counts = ref(pv, ids, mask)
        a_logits, a_counts = art(pv, ids, mask)
        b_logits, _ = base(pv, ids, mask)
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
            full_runner = OrtRunner(full.path, threads, "full-export")
            report.speed = _speed(model, [art, full_runner, ref], batch_sizes, text_lens, repeats, seed, say)
    else:
        report.speed = _speed(model, [art, ref], batch_sizes, text_lens, repeats, seed, say)
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
            lat = time_interleaved({r.name: r for r in runners}, (pv, ids, mask), repeats)
            row = {"batch": b, "text_len": n, **{name: latency_summary(ts, b) for name, ts in lat.items()}}
            art = runners[0].name
            row["speedup_vs_pytorch"] = row[runners[-1].name]["p50_ms"] / row[art]["p50_ms"]
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
