"""Runners: one per runtime, one interface.

A runner takes feeds keyed by `contract.INPUT_NAMES` (pixel_values float32 (B,3,H,W), input_ids
int64 (B,T), attention_mask int64 (B,T)) and returns (logits float32 (B, labels), keep_counts
int64 (B, layers, 2)). `describe()` says what ran it. "torch" is the reference runner (a
checkpoint in one trim mode); RUNTIMES are the runtimes of exported artifacts. Each runner lives
in `runtime/<name>.py` and is imported only when loaded, so that trimkit stays importable without
onnxruntime, OpenVINO or TensorRT.
"""

from __future__ import annotations

import importlib
import os
from typing import Any, Protocol

import numpy as np

from ..errors import BadInputError

__all__ = ["RUNTIMES", "Runner", "load_runner", "run_arrays"]

RUNTIMES = ("onnxruntime", "openvino", "tensorrt")  # artifact runtimes; "torch" is the reference runner
_MODULES = {"torch": "torch", **{r: r for r in RUNTIMES}}


class Runner(Protocol):
    name: str  # "torch" | "onnxruntime" | "openvino" | "tensorrt"

    def run(self, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]: ...

    def describe(self) -> dict[str, Any]: ...


def load_runner(runtime: str, path: str | os.PathLike, *, threads: int | None = None, precision: str | None = None,
                **kw: Any) -> Runner:
    """A runner of `runtime` over the artifact (or, for "torch", the checkpoint) at `path`.

    Lazy-imports `runtime/<name>.py`; a missing runtime package raises MissingDependencyError with the
    pip hint (exit 2). Runtime-specific options go in `kw` (torch: `mode`, `trim`; tensorrt: `manifest`).
    """
    if runtime not in _MODULES:
        raise BadInputError(f"unknown runtime {runtime!r}; choose {', '.join(_MODULES)}")
    module = importlib.import_module(f".{_MODULES[runtime]}", __name__)
    return module.load(path, threads=threads, precision=precision, **kw)


def run_arrays(runner: Runner, pixel_values: np.ndarray, input_ids: np.ndarray,
               attention_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`runner.run` on positional arrays (the order of contract.INPUT_NAMES)."""
    from ..contract import INPUT_NAMES

    return runner.run(dict(zip(INPUT_NAMES, (pixel_values, input_ids, attention_mask))))
