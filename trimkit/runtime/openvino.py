"""OpenVINO: a trimkit ONNX graph (or its OpenVINO IR) on the CPU plugin, at an explicit inference precision.

The CPU plugin's default inference precision is bf16 on CPUs that have it (AVX512-BF16, AMX). bf16 moves
trimmer scores enough to flip keep decisions that sit near a threshold, so the runner compiles at f32
unless bf16 is asked for, and `describe()` reports the precision the compiled model actually uses.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..contract import INPUT_NAMES, OUTPUT_NAMES
from ..errors import BadInputError, import_optional

__all__ = ["OpenVinoRunner", "load", "import_openvino", "INSTALL_HINT", "PRECISION_HINTS", "compiled_precision"]

INSTALL_HINT = "OpenVINO is not installed: pip install openvino"
# --precision -> the CPU plugin's INFERENCE_PRECISION_HINT
PRECISION_HINTS = {"fp32": "f32", "bf16": "bf16"}
_TYPE_NAMES = {"float32": "fp32", "f32": "fp32", "bfloat16": "bf16", "bf16": "bf16", "float16": "fp16", "f16": "fp16"}


def import_openvino():
    """The openvino module, or MissingDependencyError (no import at trimkit import time)."""
    return import_optional("openvino", INSTALL_HINT)


def compiled_precision(compiled) -> str:
    """'fp32' | 'bf16' | 'fp16': the inference precision a compiled model runs at."""
    t = compiled.get_property("INFERENCE_PRECISION_HINT")
    name = t.get_type_name() if hasattr(t, "get_type_name") else str(t)
    return _TYPE_NAMES.get(name, name)


class OpenVinoRunner:
    """A trimkit graph (.onnx, or .xml + .bin IR) compiled for OpenVINO's CPU plugin."""

    name = "openvino"

    def __init__(self, path: str | os.PathLike, *, threads: int | None = None, precision: str | None = None,
                 device: str = "CPU", pin_threads: bool = False) -> None:
        ov = import_openvino()
        precision = precision or "fp32"
        if precision not in PRECISION_HINTS:
            raise BadInputError(f"OpenVINO precision {precision!r}: choose {', '.join(PRECISION_HINTS)}")
        if threads is not None and threads < 1:
            raise BadInputError(f"threads must be >= 1, got {threads}")
        self.path, self.threads, self.device = Path(path), threads, device
        core = ov.Core()
        try:
            model = core.read_model(str(self.path))
        except Exception as e:  # OpenVINO raises RuntimeError subclasses with multi-line messages
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise BadInputError(f"{path}: OpenVINO could not read the model ({first})") from None
        names = [i.get_any_name() for i in model.inputs]
        if sorted(names) != sorted(INPUT_NAMES):
            raise BadInputError(f"{path}: inputs {names} are not {', '.join(INPUT_NAMES)}")
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": PRECISION_HINTS[precision],
                                  # one request at a time, as verify and the benchmarks call it
                                  "PERFORMANCE_HINT": "LATENCY",
                                  # pinned threads wait for cores that other processes hold: on a shared
                                  # 2-core machine, batch 1 took 1.7 ms unpinned vs 4.2-5.7 ms pinned
                                  "ENABLE_CPU_PINNING": pin_threads}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        self.compiled = core.compile_model(model, device, config)
        self.precision = compiled_precision(self.compiled)
        if self.precision != precision:
            raise BadInputError(f"OpenVINO {device} runs this model at {self.precision}, not the {precision} asked "
                                "for (the device does not support it)")
        self.request = self.compiled.create_infer_request()
        self._outputs = [self.compiled.output(n) for n in OUTPUT_NAMES]
        self.version = ov.__version__

    def run(self, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        missing = [n for n in INPUT_NAMES if n not in feeds]
        if missing:
            raise BadInputError(f"missing inputs: {', '.join(missing)}")
        res = self.request.infer({n: np.ascontiguousarray(feeds[n]) for n in INPUT_NAMES})
        # copies: the request reuses its output buffers on the next call
        logits, counts = (np.array(res[o]) for o in self._outputs)
        return logits, counts  # (B, L) float32, (B, T, 2) int64

    def __call__(self, pv: np.ndarray, ids: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.run({"pixel_values": pv, "input_ids": ids, "attention_mask": mask})

    def describe(self) -> dict[str, Any]:
        return {"runtime": self.name, "version": self.version, "precision": self.precision,
                "threads": int(self.compiled.get_property("INFERENCE_NUM_THREADS")), "device": self.device,
                "pinned": bool(self.compiled.get_property("ENABLE_CPU_PINNING"))}


def load(path: str | os.PathLike, *, threads: int | None = None, precision: str | None = None,
         device: str = "CPU", pin_threads: bool = False) -> OpenVinoRunner:
    return OpenVinoRunner(path, threads=threads, precision=precision, device=device, pin_threads=pin_threads)
