"""TensorRT engine runner (needs TensorRT, a GPU and torch CUDA for device buffers)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..contract import INPUT_NAMES, OUTPUT_NAMES
from ..errors import BadInputError, MissingDependencyError

__all__ = ["TrtRunner", "load"]


class TrtRunner:
    """A serialized engine and its manifest; each call picks the first optimization profile that holds
    its (batch, text length)."""

    name = "tensorrt"

    def __init__(self, path: str | os.PathLike, manifest: dict[str, Any]) -> None:
        from ..export.trt import check_trt_ready

        trt, _ = check_trt_ready()
        if not torch.cuda.is_available():
            raise MissingDependencyError("running a TensorRT engine here needs a CUDA build of torch for device buffers")
        path = Path(path)
        self.trt = trt
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise BadInputError(f"{path}: TensorRT could not deserialize the engine (other TensorRT version or GPU?)")
        self.ctx = self.engine.create_execution_context()
        self.manifest = manifest
        self.profiles = manifest["profiles"]
        self.num_labels = len(manifest["labels"])

    def run(self, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        b, n = feeds["input_ids"].shape
        idx = next((i for i, p in enumerate(self.profiles) if p.contains(b, n)), None)
        if idx is None:
            raise BadInputError(f"batch {b}, text length {n} is outside every optimization profile of the engine")
        stream = torch.cuda.current_stream()
        self.ctx.set_optimization_profile_async(idx, stream.cuda_stream)
        device = {name: torch.from_numpy(feeds[name]).cuda() for name in INPUT_NAMES}
        for name, t in device.items():
            self.ctx.set_input_shape(name, tuple(t.shape))
            self.ctx.set_tensor_address(name, t.data_ptr())
        logits_name, counts_name = OUTPUT_NAMES
        logits = torch.empty(b, self.num_labels, device="cuda")  # (B, labels)
        counts = torch.empty(tuple(self.ctx.get_tensor_shape(counts_name)), dtype=torch.int64,
                             device="cuda")  # (B, layers, 2)
        self.ctx.set_tensor_address(logits_name, logits.data_ptr())
        self.ctx.set_tensor_address(counts_name, counts.data_ptr())
        if not self.ctx.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed")
        stream.synchronize()
        return logits.cpu().numpy(), counts.cpu().numpy()

    def describe(self) -> dict[str, Any]:
        return {"runtime": self.name, "version": self.trt.__version__, "precision": self.manifest.get("precision"),
                "threads": None, "device": self.manifest.get("gpu_name") or torch.cuda.get_device_name()}


def load(path: str | os.PathLike, *, threads: int | None = None, precision: str | None = None,
         manifest: dict[str, Any] | None = None) -> TrtRunner:
    """An engine at `path`; its manifest is read from beside it unless given."""
    if manifest is None:
        from ..export.manifest import read_manifest

        manifest = read_manifest(path)
    return TrtRunner(path, manifest)
