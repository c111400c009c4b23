"""Export: adaptive pruning as TopK/Gather ops in ONNX (onnx.py) and TensorRT engines (trt.py) with
optimization profiles (profiles.py) and a JSON manifest (manifest.py). TensorRT and ONNX Runtime
are imported lazily."""

from __future__ import annotations

from typing import Any

__all__ = ["to_onnx", "build_engine", "parse_profiles", "EXPORT_MODES", "DEFAULT_OPSET", "OPSET_RANGE"]

EXPORT_MODES = ("adaptive", "static", "full")
# Opset 20 has a Gelu operator: one node where opset 18 spells out Div/Erf/Add/Mul/Mul (26 GELUs in the
# `small` adaptive graph). ONNX Runtime runs it as one kernel; TensorRT 10 parses opsets 9-20, TensorRT 11 up to 25.
DEFAULT_OPSET = 20
# torch's dynamo exporter writes opset 18 and up (it silently raises anything lower to 18); 25 is the newest
# opset that ONNX Runtime 1.32 and the TensorRT 11 parser both take (a tiny model exports and checks at 18-25).
OPSET_RANGE = (18, 25)


def to_onnx(*args: Any, **kwargs: Any):
    from .onnx import to_onnx as _to_onnx

    return _to_onnx(*args, **kwargs)


def build_engine(*args: Any, **kwargs: Any):
    from .trt import build_engine as _build_engine

    return _build_engine(*args, **kwargs)


def parse_profiles(*args: Any, **kwargs: Any):
    from .profiles import parse_profiles as _parse

    return _parse(*args, **kwargs)
