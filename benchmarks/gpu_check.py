"""`make gpu-check`: the TensorRT path end to end on a machine with an NVIDIA GPU, in a few minutes.

Builds fp32 and fp16 engines of a tiny pruning model with two disjoint optimization profiles (batch 1-4
and batch 5-8) and one timing cache (written by the first build, reused by the second), runs each raw
engine against ONNX Runtime on shapes in both profiles (logits, keep_counts, the active profile, output
shapes with no -1), then `trimkit verify` on both engines. Prints one line per step and exits 0 when all
pass, 1 when a check fails, 2 (one line) where there is no GPU, TensorRT or CUDA torch.

    python benchmarks/gpu_check.py --precheck   # stdlib only: is there an NVIDIA GPU at all?
    python benchmarks/gpu_check.py [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def precheck() -> str | None:
    """None when nvidia-smi lists a GPU, else why not (no imports beyond the standard library)."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return "no NVIDIA GPU here: nvidia-smi is not installed (gpu-check needs an NVIDIA GPU and driver)"
    try:
        r = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as e:
        return f"no NVIDIA GPU here: nvidia-smi failed ({type(e).__name__})"
    if r.returncode != 0 or "GPU" not in r.stdout:
        return "no NVIDIA GPU here: nvidia-smi lists none"
    return None


def environment() -> str | None:
    """None when TensorRT, a GPU, a CUDA torch and onnxruntime are usable, else the first thing missing."""
    reason = precheck()
    if reason:
        return reason
    from trimkit.errors import MissingDependencyError
    from trimkit.export.trt import check_trt_ready

    try:
        check_trt_ready()
    except MissingDependencyError as e:
        return str(e)
    import torch

    if not torch.cuda.is_available():
        return f"torch {torch.__version__} has no CUDA (make setup-gpu installs a CUDA build)"
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return "onnxruntime is not installed (make setup-gpu installs onnxruntime-gpu)"
    return None


def run(out: Path) -> int:
    import numpy as np

    from trimkit import save_checkpoint
    from trimkit.export.inputs import sample_inputs
    from trimkit.export.manifest import read_manifest
    from trimkit.export.onnx import to_onnx
    from trimkit.export.profiles import Profile
    from trimkit.export.trt import build_engine
    from trimkit.factory import new_model
    from trimkit.runtime.onnxruntime import ort_session
    from trimkit.runtime.tensorrt import load
    from trimkit.verify import verify

    t_start = time.perf_counter()
    failures: list[str] = []

    def step(msg: str) -> None:
        print(f"[{time.perf_counter() - t_start:6.1f} s] {msg}", flush=True)

    def expect(ok: bool, what: str) -> None:
        step(("ok    " if ok else "FAIL  ") + what)
        if not ok:
            failures.append(what)

    import torch

    model = new_model("tiny", "easyvqa", seed=4)
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():  # trimmers that prune: the engines run data-dependent TopK/Gather
        for p in model.trimmer_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    ckpt = out / "tiny.pt"
    save_checkpoint(model, ckpt, force=True)
    t = model.config.max_text_len
    profiles = [Profile((1, 1, 4), (2, t, t)), Profile((5, 8, 8), (2, t, t))]  # disjoint in batch
    cache = out / "timing.cache"
    cache.unlink(missing_ok=True)
    engines = {}
    for precision in ("fp32", "fp16"):
        onnx_path = to_onnx(ckpt, out / f"tiny.{precision}.onnx", precision=precision, force=True).path
        res = build_engine(onnx_path, out / f"tiny.{precision}.plan", profiles=profiles, timing_cache=cache,
                           force=True)
        man = read_manifest(res.path)
        step(f"built {res.path.name} in {res.seconds:.1f} s (TensorRT {res.tensorrt_version}, TF32 {man['tf32']}, "
             f"timing cache {man['timing_cache_state']})")
        expect(man["timing_cache_state"] == ("new" if precision == "fp32" else "reused"),
               f"{precision}: timing cache {'written' if precision == 'fp32' else 'reused'}")
        if precision == "fp32":
            expect(man["tf32"] is False, "fp32: TF32 cleared")
        engines[precision] = (onnx_path, res.path)

    tol = {"fp32": 1e-3, "fp16": 5e-2}
    for precision, (onnx_path, plan) in engines.items():
        runner = load(plan)
        sess = ort_session(onnx_path, providers=["CPUExecutionProvider"])
        for b, n, profile in ((1, 5, 0), (3, t, 0), (8, 9, 1), (5, 2, 1), (2, 7, 0)):
            pv, ids, mask = (x.numpy() for x in sample_inputs(model.config, b, n, seed=b * 100 + n))
            feeds = {"pixel_values": pv, "input_ids": ids, "attention_mask": mask}
            logits, counts = runner.run(feeds)
            ref_logits, ref_counts = sess.run(["logits", "keep_counts"], feeds)
            same = (counts == ref_counts).reshape(b, -1).all(axis=1)
            err = float(np.abs(logits - ref_logits)[same].max()) if same.any() else 0.0
            flips_ok = bool(same.all()) if precision == "fp32" else int((~same).sum()) <= max(1, b // 4)
            expect(runner.active == profile and logits.shape == ref_logits.shape and counts.shape == ref_counts.shape
                   and min(logits.shape + counts.shape) > 0 and err <= tol[precision] and flips_ok,
                   f"{precision} engine b={b} n={n}: profile {runner.active} (want {profile}), max |err| {err:.2e}, "
                   f"{int((~same).sum())} decision flips, device {runner.last_timing['device_ms']:.2f} ms "
                   f"(+ copies {runner.last_timing['h2d_ms'] + runner.last_timing['d2h_ms']:.2f} ms)")
        expect(runner.profile_switches == 3, f"{precision}: profile switched {runner.profile_switches} times (want 3)")
        report = verify(ckpt, plan, samples=64, batch_sizes=(1, 8), text_lens=(8, t), repeats=5)
        failed = [c.name for c in report.checks if not c.passed]
        expect(report.passed, f"trimkit verify {plan.name}: max |err| {report.numerics['max_abs_err']:.2e}, "
                              f"keep_counts agreement {report.numerics['keep_counts_agreement']:.3f}"
                              + (f"; failed: {', '.join(failed)}" if failed else ""))
        (out / f"verify.{precision}.json").write_text(json.dumps(report.to_dict(), indent=2))
    step(f"{'all checks passed' if not failures else f'{len(failures)} check(s) failed'} in "
         f"{time.perf_counter() - t_start:.0f} s")
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--precheck", action="store_true", help="only check that an NVIDIA GPU is present")
    ap.add_argument("--out", type=Path, default=None, help="keep the engines and reports here")
    args = ap.parse_args(argv)
    reason = precheck() if args.precheck else environment()
    if reason:
        print(f"gpu-check: {reason}", file=sys.stderr)
        return 2
    if args.precheck:
        return 0
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        return run(args.out)
    with tempfile.TemporaryDirectory(prefix="trimkit-gpu-check-") as tmp:
        return run(Path(tmp))


if __name__ == "__main__":
    sys.exit(main())
