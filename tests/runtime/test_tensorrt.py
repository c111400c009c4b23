"""The TensorRT runner's logic against a fake engine that follows the TensorRT 10 Python API (return values,
tensor-name I/O, shapes known after set_input_shape), with host buffers standing in for device memory.
The real engine runs in tests/export/test_trt.py (`gpu`)."""

import time
import types

import numpy as np
import pytest

from trimkit.errors import BadInputError, CheckFailedError
from trimkit.export.profiles import Profile
from trimkit.runtime.tensorrt import TrtRunner


class HostDevice:
    """numpy buffers in place of device memory; addresses are keys into `memory`."""

    handle = 7

    def __init__(self):
        self.memory, self.allocations = {}, 0

    def empty(self, numel, dtype):
        buf = np.zeros(numel, dtype)
        self.memory[id(buf)] = buf
        self.allocations += 1
        return buf

    def upload(self, buf, arr):
        buf[: arr.size] = arr.reshape(-1)

    def download(self, buf, shape, name):
        return buf[: int(np.prod(shape))].copy()

    def synchronize(self):
        pass

    @staticmethod
    def to_numpy(host, shape):
        return host.reshape(shape)

    def event(self):
        return time.perf_counter()

    @staticmethod
    def elapsed_ms(a, b):
        return 1000 * (b - a)

    @staticmethod
    def address(buf):
        return id(buf)

    def name(self):
        return "host"


class FakeContext:
    def __init__(self, device, *, unknown_output=False, refuse_shape=False):
        self.device, self.unknown_output, self.refuse_shape = device, unknown_output, refuse_shape
        self.profile, self.shapes, self.addresses, self.calls = 0, {}, {}, []

    def set_optimization_profile_async(self, idx, stream):
        assert stream == HostDevice.handle  # the runner's own stream, not the default one
        self.calls.append(("profile", idx))
        self.profile, self.shapes = idx, {}
        return True

    def set_input_shape(self, name, shape):
        self.calls.append(("shape", name, tuple(shape)))
        if self.refuse_shape:
            return False
        self.shapes[name] = tuple(shape)
        return True

    def set_tensor_address(self, name, ptr):
        self.addresses[name] = ptr
        return True

    def get_tensor_shape(self, name):
        b = self.shapes["input_ids"][0]
        if self.unknown_output and name == "keep_counts":
            return [b, -1, 2]
        return [b, 13] if name == "logits" else [b, 2, 2]

    def execute_async_v3(self, stream):
        mem = self.device.memory
        b, n = self.shapes["input_ids"]
        pv = mem[self.addresses["pixel_values"]][: b * 3 * 32 * 32].reshape(b, -1)
        mask = mem[self.addresses["attention_mask"]][: b * n].reshape(b, n)
        logits = pv.sum(1, keepdims=True) + np.arange(13, dtype=np.float32)  # (b, 13)
        counts = np.repeat(mask.sum(1)[:, None, None], 4, axis=1).reshape(b, 2, 2)  # (b, 2, 2)
        mem[self.addresses["logits"]][: logits.size] = logits.reshape(-1)
        mem[self.addresses["keep_counts"]][: counts.size] = counts.reshape(-1)
        return True


def _runner(tmp_path, **ctx_kw):
    device = HostDevice()
    ctx = FakeContext(device, **ctx_kw)
    engine = types.SimpleNamespace(
        get_tensor_dtype=lambda name: "DataType.FLOAT" if name in ("pixel_values", "logits") else "DataType.INT64",
        create_execution_context=lambda: ctx)
    trt = types.SimpleNamespace(__version__="10.13.0", Logger=type("L", (), {"WARNING": 2, "__init__": lambda s, x: None}))
    trt.Runtime = lambda logger: types.SimpleNamespace(deserialize_cuda_engine=lambda data: engine)
    path = tmp_path / "m.plan"
    path.write_bytes(b"engine")
    manifest = {"profiles": [Profile((1, 1, 4), (2, 8, 16)), Profile((5, 8, 8), (2, 16, 16))], "labels": ["x"] * 13,
                "precision": "fp32", "gpu_name": "Fake GPU", "tf32": False}
    return TrtRunner(path, manifest, trt=trt, device=device), ctx, device


def _feeds(b, n, seed=0):
    rng = np.random.default_rng(seed)
    mask = np.ones((b, n), np.int64)
    mask[0, n // 2:] = 0
    return {"pixel_values": rng.standard_normal((b, 3, 32, 32)).astype(np.float32),
            "input_ids": rng.integers(0, 20, (b, n)), "attention_mask": mask}


def test_profile_is_switched_only_when_a_batch_needs_another(tmp_path):
    runner, ctx, device = _runner(tmp_path)
    for b, n in ((2, 8), (3, 8), (2, 8), (8, 12), (6, 12), (1, 4)):
        feeds = _feeds(b, n, seed=b * n)
        logits, counts = runner.run(feeds)
        assert logits.shape == (b, 13) and counts.shape == (b, 2, 2)
        np.testing.assert_allclose(logits[:, 0], feeds["pixel_values"].reshape(b, -1).sum(1), rtol=1e-5)
        np.testing.assert_array_equal(counts[:, 0, 0], feeds["attention_mask"].sum(1))
    assert [c for c in ctx.calls if c[0] == "profile"] == [("profile", 0), ("profile", 1), ("profile", 0)]
    assert runner.describe()["profile_switches"] == 3 and runner.describe()["active_profile"] == 0
    # the same shape twice sets no shape again; a smaller batch reuses the buffers (no allocation per call)
    before = len(ctx.calls), device.allocations
    runner.run(_feeds(1, 4, seed=1))
    assert len(ctx.calls) == before[0] and device.allocations == before[1]
    assert set(runner.last_timing) == {"h2d_ms", "device_ms", "d2h_ms"}


def test_bad_inputs_and_engine_refusals_are_clear(tmp_path):
    runner, _, _ = _runner(tmp_path)
    with pytest.raises(BadInputError, match="outside every optimization profile"):
        runner.run(_feeds(9, 8))
    feeds = _feeds(2, 8)
    feeds["input_ids"] = feeds["input_ids"].astype(np.int32)
    with pytest.raises(BadInputError, match="input_ids: int32 but the engine takes int64"):
        runner.run(feeds)
    runner, _, _ = _runner(tmp_path, unknown_output=True)
    with pytest.raises(CheckFailedError, match=r"keep_counts: TensorRT reports shape \(2, -1, 2\)"):
        runner.run(_feeds(2, 8))
    runner, _, _ = _runner(tmp_path, refuse_shape=True)
    with pytest.raises(BadInputError, match="refused shape"):
        runner.run(_feeds(2, 8))


def test_non_contiguous_input_is_copied_densely(tmp_path):
    runner, _, _ = _runner(tmp_path)
    feeds = _feeds(4, 8)
    wide = np.zeros((4, 3, 32, 64), np.float32)
    wide[..., ::2] = feeds["pixel_values"]
    feeds["pixel_values"] = wide[..., ::2]  # a strided view
    assert not feeds["pixel_values"].flags.c_contiguous
    logits, _ = runner.run(feeds)
    np.testing.assert_allclose(logits[:, 0], wide[..., ::2].reshape(4, -1).sum(1), rtol=1e-5)
