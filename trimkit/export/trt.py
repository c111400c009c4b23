"""TensorRT engines from the exported ONNX, with optimization profiles and a JSON manifest.

Written against the TensorRT 10 and 11 Python APIs (tensor-name I/O, no bindings). Precision
comes from the ONNX graph on both: the network is strongly typed (a flag on 10, always on 11,
which has no FP16/INT8 builder flags), so `--precision fp16` exports an fp16 graph with fp32
inputs/outputs and an INT8 Q/DQ graph builds as explicit quantization. TensorRT is imported
lazily; without it, or without a GPU, `check_trt_ready` raises one line saying what is missing.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import ModelConfig
from ..contract import DEFAULT_OPSET, INPUT_NAMES, META_CALIBRATION, META_CONFIG, read_metadata
from ..errors import BadInputError, CheckFailedError, MissingDependencyError, import_optional
from ..fileio import atomic_write_group, check_writable, sha256_file
from .manifest import build_manifest, manifest_path
from .profiles import Profile, ProfileSpec, resolve_profiles

__all__ = ["lazy_import_trt", "gpu_info", "check_trt_ready", "build_engine", "EngineBuild", "onnx_model_config",
           "INSTALL_HINT"]

INSTALL_HINT = ("make setup-gpu, or pip install 'trimkit[gpu]' (tensorrt>=10) beside a CUDA build of torch, on a machine "
                "with an NVIDIA GPU and driver")


def lazy_import_trt():
    """The tensorrt module, or MissingDependencyError (no import at trimkit import time)."""
    return import_optional("tensorrt", f"TensorRT is not installed: {INSTALL_HINT}")


def gpu_info() -> dict[str, str] | None:
    """Name, driver and CUDA version of the first NVIDIA GPU (from nvidia-smi), or None."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        q = subprocess.run([smi, "--query-gpu=name,driver_version", "--format=csv,noheader"], capture_output=True,
                           text=True, timeout=20)
        header = subprocess.run([smi], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    if q.returncode != 0 or not q.stdout.strip():
        return None
    name, _, driver = q.stdout.strip().splitlines()[0].partition(",")
    cuda = None
    if "CUDA Version:" in header:
        cuda = header.split("CUDA Version:")[1].split()[0]
    return {"name": name.strip(), "driver": driver.strip(), "cuda": cuda}


def check_trt_ready():
    """(tensorrt module, gpu info); one MissingDependencyError naming whatever is missing."""
    try:
        trt = lazy_import_trt()
        trt_missing = None
    except MissingDependencyError as e:
        trt, trt_missing = None, str(e)
    gpu = gpu_info()
    if trt_missing and gpu is None:
        raise MissingDependencyError(f"TensorRT is not installed and no NVIDIA GPU was found: {INSTALL_HINT}")
    if trt_missing:
        raise MissingDependencyError(trt_missing)
    if gpu is None:
        raise MissingDependencyError(
            "no NVIDIA GPU found (nvidia-smi is missing or lists none): TensorRT builds engines on the GPU that "
            "runs them")
    return trt, gpu


@dataclass
class EngineBuild:
    path: Path
    manifest: Path
    seconds: float
    tensorrt_version: str
    manifest_data: dict[str, Any]


def onnx_model_config(onnx_path: str | os.PathLike) -> tuple[ModelConfig, dict[str, str]]:
    """The model config and metadata a trimkit ONNX file carries."""
    import onnx

    try:
        model = onnx.load(str(onnx_path), load_external_data=False)
    except Exception as e:
        raise BadInputError(f"{onnx_path}: not an ONNX model ({type(e).__name__})") from None
    meta = read_metadata(model)
    if META_CONFIG not in meta:
        raise BadInputError(f"{onnx_path}: not a trimkit export (no {META_CONFIG} metadata)")
    names = [i.name for i in model.graph.input]
    if names != list(INPUT_NAMES):
        raise BadInputError(f"{onnx_path}: inputs {names} are not {', '.join(INPUT_NAMES)}")
    cfg = json.loads(meta[META_CONFIG])
    return ModelConfig.from_dict(cfg["model_config"]), meta


def _refuse_cpu_only_int8(onnx_path, meta: dict[str, str]) -> None:
    """uint8 (asymmetric) activations run in ONNX Runtime only; TensorRT takes symmetric int8 Q/DQ."""
    calib = json.loads(meta.get(META_CALIBRATION, "{}"))
    if str(calib.get("activations", "")).startswith("uint8"):
        raise BadInputError(f"{onnx_path}: uint8 (asymmetric) activations are an ONNX Runtime CPU form; TensorRT "
                            "takes symmetric int8 Q/DQ: re-run trimkit calibrate int8 --activations int8")


def _major(version: str) -> int:
    try:
        return int(version.split(".")[0])
    except ValueError:
        return 0


def _set_timing_cache(trt, bconfig, timing_cache, say) -> tuple[Any, str]:
    """Attach a timing cache to the builder config: (cache, 'reused' | 'new' | 'replaced').

    `set_timing_cache` returns False for a cache from another device or TensorRT version (with
    ignore_mismatch False, which keeps tactics timed on this GPU); the build then starts from a
    fresh cache that replaces the file, rather than running without one.
    """
    path = Path(timing_cache) if timing_cache else None
    data = path.read_bytes() if path is not None and path.exists() else b""
    cache = bconfig.create_timing_cache(data)
    if cache is not None and bconfig.set_timing_cache(cache, ignore_mismatch=False):
        return cache, "reused" if data else "new"
    if not data:
        raise CheckFailedError("TensorRT refused a fresh timing cache (set_timing_cache returned false)")
    say(f"timing cache {path} was made on another device or TensorRT version: starting a fresh one")
    cache = bconfig.create_timing_cache(b"")
    if cache is None or not bconfig.set_timing_cache(cache, ignore_mismatch=False):
        raise CheckFailedError("TensorRT refused a fresh timing cache (set_timing_cache returned false)")
    return cache, "replaced"


def _tf32(trt, bconfig, precision: str) -> bool:
    """Clear TF32 for fp32 builds; returns whether TF32 stays allowed (recorded in the manifest).

    TensorRT allows TF32 by default: matmuls then round their inputs to 10-bit mantissas (~1e-3
    relative), above verify's fp32 tolerance, and keep decisions that sit near a threshold flip.
    """
    flag = getattr(trt.BuilderFlag, "TF32", None)
    if flag is None:  # a TensorRT without the flag has no TF32 to clear
        return False
    if precision == "fp32":
        bconfig.clear_flag(flag)
    return bool(bconfig.get_flag(flag))


def _engine_io(trt, engine) -> list[dict[str, Any]]:
    io = []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        io.append({"name": name, "mode": "input" if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
                   else "output", "dtype": str(engine.get_tensor_dtype(name)).split(".")[-1].lower(),
                   "shape": list(engine.get_tensor_shape(name))})
    return io


def build_engine(onnx_path: str | os.PathLike, out: str | os.PathLike, *, profiles: list[Profile] | ProfileSpec | None = None,
                 timing_cache: str | os.PathLike | None = None, workspace_gib: float = 4.0, force: bool = False,
                 log=None) -> EngineBuild:
    """Build a serialized TensorRT engine + manifest (+ the updated timing cache) from a trimkit ONNX file.

    Everything is built and serialized in memory first; the engine, its manifest and the timing
    cache are then written as one group (nothing on disk when any step fails).
    """
    say = log or (lambda msg: None)
    config, meta = onnx_model_config(onnx_path)
    _refuse_cpu_only_int8(onnx_path, meta)
    profiles = resolve_profiles(profiles, config)
    check_writable(out, force=force)
    check_writable(manifest_path(out), force=force)
    trt, gpu = check_trt_ready()
    t0 = time.perf_counter()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    if builder is None:
        raise MissingDependencyError("TensorRT could not create a builder (CUDA initialization failed)")
    version = trt.__version__
    cfg = json.loads(meta["trimkit_config"])
    precision = cfg.get("precision", "fp32")
    flags = 0
    if _major(version) < 11 and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)  # precision from the graph, as on 11
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise CheckFailedError(f"{onnx_path}: TensorRT could not parse the graph: {errors}")
    bconfig = builder.create_builder_config()
    bconfig.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * 2**30))
    tf32 = _tf32(trt, bconfig, precision)
    for p in profiles:
        prof = builder.create_optimization_profile()
        for name, (lo, opt, hi) in p.input_shapes(config).items():
            prof.set_shape(name, lo, opt, hi)
        if bconfig.add_optimization_profile(prof) < 0:
            raise BadInputError(f"TensorRT rejected optimization profile {p.to_dict()}")
    cache, cache_state = _set_timing_cache(trt, bconfig, timing_cache, say) if timing_cache else (None, None)
    say(f"building TensorRT {version} engine ({precision}, TF32 {'on' if tf32 else 'off'}): {len(profiles)} "
        f"profile(s){f', timing cache {cache_state}' if cache_state else ''}")
    serialized = builder.build_serialized_network(network, bconfig)
    if serialized is None:
        raise CheckFailedError(f"{onnx_path}: TensorRT engine build failed (see the TensorRT log above)")
    engine_bytes = bytes(serialized)
    engine = trt.Runtime(logger).deserialize_cuda_engine(engine_bytes)
    if engine is None:
        raise CheckFailedError(f"{onnx_path}: TensorRT could not deserialize the engine it just built")
    io = _engine_io(trt, engine)
    cache_bytes = None
    if cache is not None:
        updated = bconfig.get_timing_cache() or cache  # the builder updates the cache it was given
        cache_bytes = bytes(updated.serialize())
    seconds = time.perf_counter() - t0
    manifest = build_manifest(
        engine_sha256=hashlib.sha256(engine_bytes).hexdigest(), onnx_sha256=sha256_file(onnx_path),
        onnx_metadata=meta, profiles=profiles, io=io, precision=precision, tensorrt_version=version,
        cuda_version=gpu.get("cuda"), gpu_name=gpu.get("name"), build_seconds=round(seconds, 2),
        timing_cache=str(timing_cache) if timing_cache else None, tf32=tf32, timing_cache_state=cache_state)
    mpath = manifest_path(out)
    files = {}
    if cache_bytes is not None:
        files[timing_cache] = lambda tmp: tmp.write_bytes(cache_bytes)
    files[out] = lambda tmp: tmp.write_bytes(engine_bytes)
    files[mpath] = lambda tmp: tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    atomic_write_group(files, force=force, overwrite={str(timing_cache)} if timing_cache else set())
    say(f"wrote {out} ({len(engine_bytes) / 2**20:.1f} MiB) and {mpath.name} in {seconds:.1f} s")
    return EngineBuild(Path(out), mpath, seconds, version, manifest)


def export_engine(source, out: str | os.PathLike, *, profiles: list[Profile] | ProfileSpec | None = None,
                  mode: str = "adaptive", precision: str = "fp32", opset: int = DEFAULT_OPSET, keep_ratios=None,
                  head_impl: str = "auto", layout: str = "packed", onnx_out: str | os.PathLike | None = None,
                  timing_cache=None, workspace_gib: float = 4.0, force: bool = False, log=None) -> EngineBuild:
    """Checkpoint, model (or trimkit ONNX file) -> checked ONNX -> TensorRT engine + manifest.

    Everything that can be checked without TensorRT (profiles against the model, K limits, outputs) is
    checked first, then TensorRT and the GPU, so that a missing dependency writes nothing. A checkpoint is
    read once.
    """
    from ..checkpoint import load_checkpoint
    from .onnx import check_opset, to_onnx

    src = Path(source) if isinstance(source, (str, os.PathLike)) else None
    if src is not None and src.suffix == ".onnx":
        return build_engine(src, out, profiles=profiles, timing_cache=timing_cache, workspace_gib=workspace_gib,
                            force=force, log=log)
    check_writable(out, force=force)
    check_writable(manifest_path(out), force=force)
    check_opset(opset)
    model = load_checkpoint(src) if src is not None else source
    profiles = resolve_profiles(profiles, model.config)
    check_trt_ready()
    with tempfile.TemporaryDirectory(prefix="trimkit-") as tmp:
        onnx_path = Path(onnx_out) if onnx_out else Path(tmp) / "model.onnx"
        to_onnx(model, onnx_path, mode=mode, opset=opset, precision=precision, keep_ratios=keep_ratios,
                head_impl=head_impl, layout=layout, force=force, log=log)
        return build_engine(onnx_path, out, profiles=profiles, timing_cache=timing_cache,
                            workspace_gib=workspace_gib, force=force, log=log)
