"""TensorRT engine runner (needs TensorRT, an NVIDIA GPU and a CUDA build of torch for device memory).

Written against the TensorRT 10/11 tensor-name API: `set_optimization_profile_async`, `set_input_shape`
and `set_tensor_address` return false on failure and are checked; output shapes are read back after the
input shapes are set and must be fully known (-1: a data-dependent shape this runner cannot size);
input dtypes are checked against `engine.get_tensor_dtype`. The runner owns a CUDA stream, switches
the optimization profile only when a batch needs another one (TensorRT warns that every switch forces
resource updates), keeps device buffers across calls (grown, never per call), and times the device
work with CUDA events, host-to-device and device-to-host copies apart (`last_timing`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..contract import INPUT_NAMES, OUTPUT_NAMES
from ..errors import BadInputError, CheckFailedError, MissingDependencyError

__all__ = ["TrtRunner", "load", "CudaDevice"]

_NP_OF_TRT = {"FLOAT": np.float32, "HALF": np.float16, "INT32": np.int32, "INT64": np.int64, "BOOL": np.bool_,
              "INT8": np.int8}


def _np_dtype(trt_dtype) -> np.dtype:
    name = str(trt_dtype).split(".")[-1].upper()
    if name not in _NP_OF_TRT:
        raise CheckFailedError(f"engine tensor type {trt_dtype} has no numpy counterpart")
    return np.dtype(_NP_OF_TRT[name])


class CudaDevice:
    """Device memory, copies, a stream and timing events through torch's CUDA API."""

    def __init__(self) -> None:
        import torch

        if not torch.cuda.is_available():
            raise MissingDependencyError("running a TensorRT engine needs a CUDA build of torch for device memory "
                                         "(make setup-gpu installs one)")
        self.torch = torch
        self.stream = torch.cuda.Stream()
        self.handle = self.stream.cuda_stream
        self._host: dict[str, Any] = {}

    def empty(self, numel: int, dtype: np.dtype):
        return self.torch.empty(numel, dtype=self.torch.from_numpy(np.zeros(0, dtype)).dtype, device="cuda")

    def upload(self, buf, arr: np.ndarray) -> None:
        with self.torch.cuda.stream(self.stream):
            buf[: arr.size].copy_(self.torch.from_numpy(arr).reshape(-1), non_blocking=True)

    def download(self, buf, shape: tuple[int, ...], name: str):
        """Queue a device-to-host copy on the stream into a pinned host buffer kept per tensor name (pinned
        allocations are slow: they are grown, not made per call); valid after `synchronize()`."""
        numel = int(np.prod(shape))
        host = self._host.get(name)
        if host is None or host.numel() < numel:
            host = self._host[name] = self.torch.empty(numel, dtype=buf.dtype, pin_memory=True)
        with self.torch.cuda.stream(self.stream):
            host[:numel].copy_(buf[:numel], non_blocking=True)
        return host[:numel]

    def synchronize(self) -> None:
        self.stream.synchronize()

    @staticmethod
    def to_numpy(host, shape: tuple[int, ...]) -> np.ndarray:
        return host.numpy().reshape(shape).copy()  # the pinned buffer is reused by the next call

    def event(self):
        ev = self.torch.cuda.Event(enable_timing=True)
        ev.record(self.stream)
        return ev

    @staticmethod
    def elapsed_ms(start, end) -> float:
        end.synchronize()
        return float(start.elapsed_time(end))

    @staticmethod
    def address(buf) -> int:
        return buf.data_ptr()

    def name(self) -> str:
        return self.torch.cuda.get_device_name()


class TrtRunner:
    """A serialized engine and its manifest. Each call uses the active optimization profile if it holds the
    batch's (batch, text length), else the first profile that does."""

    name = "tensorrt"

    def __init__(self, path: str | os.PathLike, manifest: dict[str, Any], *, trt=None, device=None) -> None:
        if trt is None:
            from ..export.trt import check_trt_ready

            trt, _ = check_trt_ready()
        self.trt = trt
        self.device = device or CudaDevice()
        path = Path(path)
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise BadInputError(f"{path}: TensorRT could not deserialize the engine (other TensorRT version or GPU?)")
        self.ctx = self.engine.create_execution_context()
        if self.ctx is None:
            raise CheckFailedError(f"{path}: TensorRT could not create an execution context (out of GPU memory?)")
        self.manifest = manifest
        self.profiles = manifest["profiles"]
        self.dtypes = {n: _np_dtype(self.engine.get_tensor_dtype(n)) for n in (*INPUT_NAMES, *OUTPUT_NAMES)}
        self.active: int | None = None  # the profile set on the context
        self.shapes: dict[str, tuple[int, ...]] = {}  # input shapes set on the context
        self.buffers: dict[str, Any] = {}  # flat device buffers, grown to the largest shape seen
        self.capacity: dict[str, int] = {}  # elements each buffer holds
        self.profile_switches = 0
        self.last_timing: dict[str, float] = {}

    def _profile_for(self, b: int, n: int) -> int:
        if self.active is not None and self.profiles[self.active].contains(b, n):
            return self.active
        idx = next((i for i, p in enumerate(self.profiles) if p.contains(b, n)), None)
        if idx is None:
            have = "; ".join(f"batch {p.batch[0]}..{p.batch[2]}, text {p.text[0]}..{p.text[2]}" for p in self.profiles)
            raise BadInputError(f"batch {b}, text length {n} is outside every optimization profile ({have})")
        return idx

    def _buffer(self, name: str, shape: tuple[int, ...]):
        numel = max(1, int(np.prod(shape)))
        buf = self.buffers.get(name)
        if buf is None or self.capacity[name] < numel:
            buf = self.buffers[name] = self.device.empty(numel, self.dtypes[name])
            self.capacity[name] = numel
        if not self.ctx.set_tensor_address(name, self.device.address(buf)):
            raise CheckFailedError(f"TensorRT refused the device address of {name}")
        return buf

    def run(self, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        arrays = {}
        for name in INPUT_NAMES:
            a = np.ascontiguousarray(feeds[name])  # the copy reads a dense row-major block
            if a.dtype != self.dtypes[name]:
                raise BadInputError(f"{name}: {a.dtype} but the engine takes {self.dtypes[name]}")
            arrays[name] = a
        b, n = arrays["input_ids"].shape
        idx = self._profile_for(b, n)
        if idx != self.active:
            if not self.ctx.set_optimization_profile_async(idx, self.device.handle):
                raise CheckFailedError(f"TensorRT could not switch to optimization profile {idx}")
            self.active, self.shapes = idx, {}  # a switch invalidates the input shapes set before
            self.profile_switches += 1
        t0 = self.device.event()
        for name, a in arrays.items():
            if self.shapes.get(name) != a.shape:
                if not self.ctx.set_input_shape(name, a.shape):
                    raise BadInputError(f"{name}: TensorRT refused shape {a.shape} in profile {idx}")
                self.shapes[name] = a.shape
            self.device.upload(self._buffer(name, a.shape), a)
        out_shapes = {}
        for name in OUTPUT_NAMES:
            shape = tuple(self.ctx.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise CheckFailedError(f"{name}: TensorRT reports shape {shape} after the input shapes were set "
                                       "(a data-dependent output this runner cannot size)")
            out_shapes[name] = shape
        out_bufs = {name: self._buffer(name, shape) for name, shape in out_shapes.items()}
        t1 = self.device.event()
        if not self.ctx.execute_async_v3(self.device.handle):
            raise CheckFailedError("TensorRT execution failed (execute_async_v3 returned false)")
        t2 = self.device.event()
        hosts = {name: self.device.download(out_bufs[name], out_shapes[name], name) for name in OUTPUT_NAMES}
        t3 = self.device.event()
        self.device.synchronize()
        # h2d includes setting shapes and addresses (host work between the events); device_ms is the engine alone
        self.last_timing = {"h2d_ms": self.device.elapsed_ms(t0, t1), "device_ms": self.device.elapsed_ms(t1, t2),
                            "d2h_ms": self.device.elapsed_ms(t2, t3)}
        logits, counts = (self.device.to_numpy(hosts[name], out_shapes[name]) for name in OUTPUT_NAMES)
        return logits, counts  # (B, labels) float32, (B, layers, 2) int64

    def describe(self) -> dict[str, Any]:
        return {"runtime": self.name, "version": self.trt.__version__, "precision": self.manifest.get("precision"),
                "threads": None, "device": self.manifest.get("gpu_name") or self.device.name(),
                "active_profile": self.active, "profile_switches": self.profile_switches,
                "tf32": self.manifest.get("tf32")}


def load(path: str | os.PathLike, *, threads: int | None = None, precision: str | None = None,
         manifest: dict[str, Any] | None = None) -> TrtRunner:
    """An engine at `path`; its manifest is read from beside it unless given."""
    if manifest is None:
        from ..export.manifest import read_manifest

        manifest = read_manifest(path)
    return TrtRunner(path, manifest)
