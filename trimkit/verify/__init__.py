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
from typing import Any

from ..checkpoint import load_checkpoint
from ..contract import TRIM_MODE_OF, artifact_metadata, check_match, tolerance
from ..errors import BadInputError
from ..export.profiles import check_shapes_in_profiles
from ..runtime import load_runner
from ..runtime.timing import speedup
from ..runtime.torch import TorchRunner
from . import checks
from .collect import batch_shapes, collect_outputs_many, collect_speed
from .report import Check, VerifyReport, write_junit

__all__ = ["verify", "Check", "VerifyReport", "write_junit", "resolve_runtimes", "RUNTIMES_OF"]


# which runtimes can run which artifact (a TensorRT engine is built per GPU: `export --format trt` makes one)
RUNTIMES_OF = {"onnxruntime": ("onnxruntime", "openvino"), "openvino": ("openvino",), "tensorrt": ("tensorrt",)}
RUNTIME_PRECISIONS = {"openvino": ("fp32", "bf16")}  # inference precisions a runtime can be asked for


def resolve_runtimes(artifact: Path, kind: str, runtimes, precision: str | None) -> tuple[str, ...]:
    """The runtimes to verify the artifact on (default: the one it is made for); bad choices are one line."""
    from ..runtime import RUNTIMES

    chosen = tuple(dict.fromkeys(runtimes or (kind,)))
    unknown = [r for r in chosen if r not in RUNTIMES]
    if unknown:
        raise BadInputError(f"--runtime {', '.join(unknown)}: choose from {', '.join(RUNTIMES)}")
    wrong = [r for r in chosen if r not in RUNTIMES_OF[kind]]
    if wrong:
        raise BadInputError(f"{artifact}: a {kind} artifact runs on {', '.join(RUNTIMES_OF[kind])}, not on "
                            f"{', '.join(wrong)}" + (" (build an engine with `trimkit export --format trt`)"
                                                     if "tensorrt" in wrong else ""))
    if precision is not None and not any(precision in RUNTIME_PRECISIONS.get(r, ()) for r in chosen):
        raise BadInputError(f"--precision {precision} is an OpenVINO inference precision: add --runtime openvino")
    return chosen


def verify(ckpt: str | os.PathLike, artifact: str | os.PathLike, *, data: str = "random", samples: int = 256,
           batch_sizes: tuple[int, ...] = (1, 8), text_lens: tuple[int, ...] = (8, 16, 32), atol: float | None = None,
           rtol: float | None = None, min_agreement: float | None = None, max_accuracy_drop: float = 1.0,
           min_speedup: float | None = None, repeats: int = 20, threads: int | None = None, seed: int = 0,
           runtimes: tuple[str, ...] | None = None, precision: str | None = None, log=None) -> VerifyReport:
    """`runtimes`: run the artifact on each (an .onnx file: onnxruntime and/or openvino); every runtime
    gets its own numerics, decision, accuracy and speed rows and checks. `precision`: the inference
    precision of runtimes that take one (OpenVINO: fp32 by default, bf16 with its own tolerance)."""
    say = log or (lambda msg: None)
    t_start = time.perf_counter()
    ckpt, artifact = Path(ckpt), Path(artifact)
    model = load_checkpoint(ckpt)
    info = artifact_metadata(artifact)
    check_match(model, ckpt, artifact, info)
    manifest, graph_precision = info.manifest, info.precision
    chosen = resolve_runtimes(artifact, info.runtime, runtimes, precision)
    trim_mode = TRIM_MODE_OF[info.mode]
    if trim_mode == "static":
        model.trim = dataclasses.replace(model.trim, **{k: info.config["trim_config"][k] for k in
                                                        ("static_keep_ratios", "static_head_keep")})
    if data != "random" and model.tokenizer is None:
        raise BadInputError(f"{ckpt}: checkpoint has no tokenizer for --data {data}")
    if manifest is not None:  # every shape verify will run must fit a profile: checked before any work
        shapes = [(b, n) for b in batch_sizes for n in text_lens if n <= model.config.max_text_len]
        shapes += batch_shapes(model, data, samples, max(batch_sizes), seed)
        check_shapes_in_profiles(manifest["profiles"], shapes, artifact)
    arts: dict[str, Any] = {}
    for rt in chosen:  # all runtimes load before any work: a missing one is one line and exit 2
        run_precision = precision if precision in RUNTIME_PRECISIONS.get(rt, ()) else None
        kw = {"manifest": manifest} if rt == "tensorrt" else {}
        arts[rt] = load_runner(rt, artifact, threads=threads,
                               precision=run_precision if rt in RUNTIME_PRECISIONS else graph_precision, **kw)
    ref, base = TorchRunner(model, trim_mode), TorchRunner(model, "off")
    report = VerifyReport(str(ckpt), str(artifact), chosen[0], info.mode, layout=info.layout)

    # run: numerics + task on the data at the largest batch size, every runtime on the same batches
    say(f"comparing {', '.join(chosen)} with PyTorch ({trim_mode}) on {samples} {data} samples ...")
    graph = {"layout": info.layout, "head_impl": info.config.get("head_impl", model.head_impl)}
    outs = collect_outputs_many(model, trim_mode, arts, ref, base, data, samples, max(batch_sizes), seed, graph)

    # compare, per runtime, at the tolerance of the graph's precision and the runtime's inference precision
    for rt, out in outs.items():
        desc = arts[rt].describe()
        looser = [tolerance(graph_precision)] + ([tolerance(desc["precision"])] if desc.get("precision") else [])
        tol_atol, tol_rtol = max(t.atol for t in looser), max(t.rtol for t in looser)
        tol_agree = min(t.min_agreement for t in looser)
        a = atol if atol is not None else tol_atol
        r = rtol if rtol is not None else tol_rtol
        agree = min_agreement if min_agreement is not None else tol_agree
        num = checks.numerics(out.ref_logits, out.ref_counts, out.art_logits, out.art_counts, out.flops_ratio,
                              atol=a, rtol=r)
        logits, needed = checks.logits_check(out.ref_logits, out.ref_counts, out.art_logits, out.art_counts,
                                             atol=a, rtol=r, runtime=rt)
        num["passing_atol"] = needed
        # what the artifact runs for these samples at this batch size (decided: `mean_flops_ratio`)
        num["mean_executed_flops_ratio"] = float(out.executed_ratio.mean())
        num["executed_batch_size"] = max(batch_sizes)
        rt_checks = [logits, *checks.agreement_checks(num, agree)]
        acc = None
        if out.labels is not None:
            acc = checks.accuracy(out.labels, out.full_logits, out.ref_logits, out.art_logits)
            rt_checks.append(checks.accuracy_check(acc, max_accuracy_drop))
        for c in rt_checks:
            c.runtime = rt
        report.checks.extend(rt_checks)
        report.runtimes[rt] = {"describe": desc, "numerics": num, "accuracy": acc}
        if rt == chosen[0]:
            report.numerics = num
            if acc is not None:
                report.task = {"data": data, "samples": len(out.labels), "accuracy": acc}
    if report.task and len(chosen) > 1:
        for rt in chosen:
            report.task["accuracy"][f"artifact[{rt}]"] = report.runtimes[rt]["accuracy"]["artifact"]

    # speed: each runtime vs a full export of the same checkpoint on the same runtime (built on the fly) vs PyTorch
    names = {rt: "artifact" if i == 0 else f"artifact[{rt}]" for i, rt in enumerate(chosen)}
    speed_runners = {names[rt]: arts[rt] for rt in chosen}
    full_of: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="trimkit-verify-") as tmp:
        if any(rt in ("onnxruntime", "openvino") for rt in chosen) and info.runtime == "onnxruntime":
            say("building the full export for the speed reference ...")
            from ..export.onnx import to_onnx

            full = to_onnx(model, Path(tmp) / "full.onnx", mode="full", check=False,
                           precision="fp16" if graph_precision == "fp16" else "fp32")
            for i, rt in enumerate(chosen):
                full_of[rt] = "full-export" if i == 0 else f"full-export[{rt}]"
                run_precision = precision if precision in RUNTIME_PRECISIONS.get(rt, ()) else None
                speed_runners[full_of[rt]] = load_runner(rt, full.path, threads=threads, precision=run_precision)
        speed_runners[f"pytorch-{trim_mode}"] = ref
        report.speed = collect_speed(model, speed_runners, batch_sizes, text_lens, repeats, seed, say)
    torch_name = f"pytorch-{trim_mode}"
    for row in report.speed:  # p50 over p50; `*_noisy`: either side's repeats spread too wide to trust it
        row["speedups"] = {}
        for rt in chosen:
            vs_full = speedup(row[full_of[rt]], row[names[rt]]) if rt in full_of else None
            vs_torch = speedup(row[torch_name], row[names[rt]])
            row["speedups"][rt] = {"vs_full": vs_full and vs_full["ratio"], "vs_full_noisy": vs_full and vs_full["noisy"],
                                   "vs_pytorch": vs_torch["ratio"], "vs_pytorch_noisy": vs_torch["noisy"]}
    if min_speedup is not None:
        for rt in chosen:
            key = "vs_full" if rt in full_of else "vs_pytorch"
            rows = [{f"speedup_{key}": r["speedups"][rt][key], f"speedup_{key}_noisy": r["speedups"][rt][f"{key}_noisy"]}
                    for r in report.speed]
            c = checks.speed_check(rows, f"speedup_{key}", min_speedup)
            c.runtime = rt
            report.checks.append(c)
    report.seconds = time.perf_counter() - t_start
    return report
