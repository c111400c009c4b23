"""The JSON manifest written beside a TensorRT engine: what an inference team needs without PyTorch."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .. import __version__
from ..contract import META_CONFIG, META_LABELS, META_MODE, META_TOKENIZER, META_VERSION, META_WEIGHTS
from ..errors import BadInputError
from ..fileio import atomic_write
from .profiles import Profile

__all__ = ["manifest_path", "build_manifest", "write_manifest", "read_manifest", "MANIFEST_FORMAT"]

MANIFEST_FORMAT = "trimkit-engine-manifest"


def manifest_path(engine: str | os.PathLike) -> Path:
    """trim.plan -> trim.plan.json"""
    p = Path(engine)
    return p.with_name(p.name + ".json")


def build_manifest(*, engine_sha256: str, onnx_sha256: str, onnx_metadata: dict[str, str], profiles: list[Profile],
                   io: list[dict[str, Any]], precision: str, tensorrt_version: str, cuda_version: str | None,
                   gpu_name: str | None, build_seconds: float | None = None, timing_cache: str | None = None,
                   tf32: bool | None = None, timing_cache_state: str | None = None) -> dict[str, Any]:
    return {
        "format": MANIFEST_FORMAT,
        "format_version": 1,
        META_VERSION: __version__,
        "engine_sha256": engine_sha256,
        "onnx_sha256": onnx_sha256,
        META_MODE: onnx_metadata.get(META_MODE),
        "precision": precision,
        # TF32 matmuls (TensorRT's default) are cleared for fp32 builds; None: not recorded (older manifests)
        "tf32": tf32,
        "labels": json.loads(onnx_metadata.get(META_LABELS, "[]")),
        META_CONFIG: json.loads(onnx_metadata.get(META_CONFIG, "{}")),
        "weights_sha256": onnx_metadata.get(META_WEIGHTS),
        "tokenizer": json.loads(onnx_metadata[META_TOKENIZER]) if META_TOKENIZER in onnx_metadata else None,
        "profiles": [p.to_dict() for p in profiles],
        "io": io,
        "tensorrt_version": tensorrt_version,
        "cuda_version": cuda_version,
        "gpu_name": gpu_name,
        "build_seconds": build_seconds,
        "timing_cache": timing_cache,
        "timing_cache_state": timing_cache_state,  # reused | new | replaced (made on another device/version)
    }


def write_manifest(engine: str | os.PathLike, manifest: dict[str, Any], *, force: bool = False) -> Path:
    path = manifest_path(engine)
    return atomic_write(path, lambda tmp: tmp.write_text(json.dumps(manifest, indent=2) + "\n"), force=force)


def read_json_manifest(path: Path, artifact: str | os.PathLike, fmt: str, what: str, kind: str) -> dict[str, Any]:
    """The JSON manifest beside an artifact (an engine, an OpenVINO IR), checked to be `fmt`; one-line errors."""
    if not path.exists():
        raise BadInputError(f"{artifact}: no manifest {path.name} beside the {what}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadInputError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict) or data.get("format") != fmt:
        raise BadInputError(f"{path}: not a trimkit {kind} manifest")
    return data


def read_manifest(engine: str | os.PathLike) -> dict[str, Any]:
    path = manifest_path(engine)
    data = read_json_manifest(path, engine, MANIFEST_FORMAT, "engine", "engine")
    missing = [k for k in ("profiles", "io", "onnx_sha256", "precision") if k not in data]
    if missing:
        raise BadInputError(f"{path}: manifest lacks {', '.join(missing)}")
    data["profiles"] = [Profile.from_dict(p) for p in data["profiles"]]
    return data
