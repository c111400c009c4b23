"""`trimkit verify`: prove an exported artifact against its checkpoint: numerics, task accuracy, speed.

Polygraphy's run/compare split: `collect` runs the runners (the artifact in its runtime, PyTorch in
the artifact's trim mode, PyTorch untrimmed as the baseline, and for ONNX a `full` export of the
same checkpoint built on the fly as the speed reference); `checks` turns the collected arrays into
records with value, threshold and verdict; `report` writes them (JSON, JUnit; the table is in
`trimkit.report`). Any failed check -> exit 1 (CheckFailedError from the CLI), a mismatched
checkpoint/artifact or bad input -> exit 2.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from pathlib import Path

from ..checkpoint import load_checkpoint
from ..contract import TRIM_MODE_OF, artifact_metadata, check_match, tolerance
from ..errors import BadInputError
from ..runtime import load_runner
from ..runtime.torch import TorchRunner
from . import checks
from .collect import collect_outputs, collect_speed
from .report import Check, VerifyReport, write_junit

__all__ = ["verify", "Check", "VerifyReport", "write_junit"]


def _check_profiles(profiles, artifact: Path, batch_sizes, text_lens, max_text_len: int, numerics) -> None:
    """Every shape verify will run must fit one of the engine's optimization profiles (else exit 2)."""
    shapes = [(b, n) for b in batch_sizes for n in text_lens if n <= max_text_len]
    shapes += [numerics] if numerics else []
    outside = [f"batch {b} x text {n}" for b, n in shapes if not any(p.contains(b, n) for p in profiles)]
    if outside:
        have = "; ".join(f"batch {p.batch[0]}..{p.batch[2]}, text {p.text[0]}..{p.text[2]}" for p in profiles)
        raise BadInputError(f"{artifact}: {', '.join(outside)} outside every optimization profile ({have})")


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
    runtime, manifest, precision = info.runtime, info.manifest, info.precision
    trim_mode = TRIM_MODE_OF[info.mode]
    if trim_mode == "static":
        model.trim = dataclasses.replace(model.trim, **{k: info.config["trim_config"][k] for k in
                                                        ("static_keep_ratios", "static_head_keep")})
    if data != "random" and model.tokenizer is None:
        raise BadInputError(f"{ckpt}: checkpoint has no tokenizer for --data {data}")
    tol = tolerance(precision)
    atol = atol if atol is not None else tol.atol
    rtol = rtol if rtol is not None else tol.rtol
    min_agreement = min_agreement if min_agreement is not None else tol.min_agreement
    if manifest is not None:
        _check_profiles(manifest["profiles"], artifact, batch_sizes, text_lens, model.config.max_text_len,
                        numerics=(max(batch_sizes), min(model.config.max_text_len, 12)) if data == "random" else None)
    art = load_runner(runtime, artifact, threads=threads, precision=precision,
                      **({"manifest": manifest} if manifest is not None else {}))
    ref, base = TorchRunner(model, trim_mode), TorchRunner(model, "off")
    report = VerifyReport(str(ckpt), str(artifact), runtime, info.mode)

    # run: numerics + task on the data at the largest batch size
    say(f"comparing {runtime} with PyTorch ({trim_mode}) on {samples} {data} samples ...")
    out = collect_outputs(model, trim_mode, art, ref, base, data, samples, max(batch_sizes), seed)

    # compare
    report.numerics = checks.numerics(out.ref_logits, out.ref_counts, out.art_logits, out.art_counts,
                                      out.flops_ratio, atol=atol, rtol=rtol)
    logits, needed = checks.logits_check(out.ref_logits, out.ref_counts, out.art_logits, out.art_counts,
                                         atol=atol, rtol=rtol, runtime=runtime)
    report.numerics["passing_atol"] = needed
    report.checks.append(logits)
    report.checks.extend(checks.agreement_checks(report.numerics, min_agreement))
    if out.labels is not None:
        acc = checks.accuracy(out.labels, out.full_logits, out.ref_logits, out.art_logits)
        report.task = {"data": data, "samples": len(out.labels), "accuracy": acc}
        report.checks.append(checks.accuracy_check(acc, max_accuracy_drop))

    # speed: artifact vs a full export of the same checkpoint (built on the fly) vs PyTorch
    if runtime == "onnxruntime":
        say("building the full export for the speed reference ...")
        from ..export.onnx import to_onnx

        with tempfile.TemporaryDirectory(prefix="trimkit-verify-") as tmp:
            full = to_onnx(model, Path(tmp) / "full.onnx", mode="full", check=False,
                           precision="fp16" if precision == "fp16" else "fp32")
            runners = {"artifact": art, "full-export": load_runner("onnxruntime", full.path, threads=threads),
                       f"pytorch-{trim_mode}": ref}
            report.speed = collect_speed(model, runners, batch_sizes, text_lens, repeats, seed, say)
    else:
        report.speed = collect_speed(model, {"artifact": art, f"pytorch-{trim_mode}": ref}, batch_sizes, text_lens,
                                     repeats, seed, say)
    if min_speedup is not None:
        key = "speedup_vs_full" if runtime == "onnxruntime" else "speedup_vs_pytorch"
        report.checks.append(checks.speed_check(report.speed, key, min_speedup))
    report.seconds = time.perf_counter() - t_start
    return report
