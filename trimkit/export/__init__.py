"""Export: adaptive pruning as TopK/Gather ops in ONNX (onnx.py) and TensorRT engines (trt.py) with
optimization profiles (profiles.py) and a JSON manifest (manifest.py). TensorRT and ONNX Runtime
are imported lazily."""

from __future__ import annotations

from typing import Any

__all__ = ["to_onnx", "build_engine", "parse_profiles"]


def to_onnx(*args: Any, **kwargs: Any):
    from .onnx import to_onnx as _to_onnx

    return _to_onnx(*args, **kwargs)


def build_engine(*args: Any, **kwargs: Any):
    from .trt import build_engine as _build_engine

    return _build_engine(*args, **kwargs)


def parse_profiles(*args: Any, **kwargs: Any):
    from .profiles import parse_profiles as _parse

    return _parse(*args, **kwargs)
