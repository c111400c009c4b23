"""TensorRT: everything that does not need TensorRT runs here; engine builds carry the `gpu` marker."""

import json
import subprocess
import sys

import numpy as np
import pytest

from trimkit.cli import main
from trimkit.errors import BadInputError, MissingDependencyError
from trimkit.export.manifest import build_manifest, manifest_path, read_manifest, write_manifest
from trimkit.export.profiles import Profile
from trimkit.export.trt import check_trt_ready, onnx_model_config


def test_missing_tensorrt_is_one_line_exit_2_and_writes_nothing(pruning_ckpt, tmp_path):
    try:
        check_trt_ready()
        pytest.skip("TensorRT and a GPU are present here")
    except MissingDependencyError:
        pass
    out = tmp_path / "m.plan"
    # a real process: the optional import fails as a user meets it, with nothing else of the test loaded
    r = subprocess.run([sys.executable, "-m", "trimkit.cli", "export", str(pruning_ckpt), "--format", "trt",
                        "--out", str(out), "--profile", "batch=1:4:16", "--profile", "text=2:8:16",
                        "--onnx-out", str(tmp_path / "kept.onnx")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "TensorRT" in lines[0] and "pip install" in lines[0]
    assert list(tmp_path.iterdir()) == []


def test_bad_profile_is_reported_before_tensorrt(pruning_ckpt, tmp_path, capsys):
    assert main(["export", str(pruning_ckpt), "--format", "trt", "--out", str(tmp_path / "m.plan"),
                 "--profile", "text=2:8:999"]) == 2
    assert "max_text_len" in capsys.readouterr().err


def test_manifest_round_trip(exported, tmp_path):
    config, meta = onnx_model_config(exported["adaptive"])
    assert config.hidden_size == 64
    engine = tmp_path / "m.plan"
    engine.write_bytes(b"engine")
    m = build_manifest(engine_sha256="e" * 64, onnx_sha256="o" * 64, onnx_metadata=meta,
                       profiles=[Profile((1, 4, 16), (2, 8, 16))],
                       io=[{"name": "logits", "mode": "output", "dtype": "float", "shape": [-1, 13]}],
                       precision="fp32", tensorrt_version="10.7.0", cuda_version="12.6", gpu_name="Test GPU")
    path = write_manifest(engine, m)
    assert path == manifest_path(engine) and path.name == "m.plan.json"
    back = read_manifest(engine)
    assert back["profiles"] == [Profile((1, 4, 16), (2, 8, 16))]
    assert back["labels"][0] == "circle" and back["tokenizer"]["vocab"][2] == "[CLS]"
    assert json.loads(path.read_text())["trimkit_mode"] == "adaptive"
    path.write_text("{broken")
    with pytest.raises(BadInputError, match="not valid JSON"):
        read_manifest(engine)
    with pytest.raises(BadInputError, match="no manifest"):
        read_manifest(tmp_path / "other.plan")


def test_onnx_without_trimkit_metadata_is_refused(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    g = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(g), tmp_path / "foreign.onnx")
    with pytest.raises(BadInputError, match="not a trimkit export"):
        onnx_model_config(tmp_path / "foreign.onnx")


def test_gpu_check_without_a_gpu_is_one_line_exit_2():
    from trimkit.export.trt import gpu_info

    if gpu_info() is not None:
        pytest.skip("an NVIDIA GPU is present here")
    for args in (["--precheck"], []):
        r = subprocess.run([sys.executable, "benchmarks/gpu_check.py", *args], capture_output=True, text=True,
                           timeout=120)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and "NVIDIA GPU" in lines[0], r.stderr


# ----------------------------------------------------------------------------- on a GPU (`make gpu-check` runs these)
# Two disjoint profiles (batch 1-4 and 5-8) so that both profile selection and switching are exercised.


def _gpu_profiles(config):
    t = config.max_text_len
    return [Profile((1, 2, 4), (2, t, t)), Profile((5, 8, 8), (2, t, t))]


@pytest.fixture(scope="module")
def engines(exported, tmp_path_factory):
    from trimkit.export.onnx import to_onnx
    from trimkit.export.trt import build_engine

    root = tmp_path_factory.mktemp("engines")
    config, _ = onnx_model_config(exported["adaptive"])
    cache = root / "timing.cache"
    fp16 = to_onnx(exported["ckpt"], root / "fp16.onnx", precision="fp16").path
    out = {}
    for name, onnx_path in (("fp32", exported["adaptive"]), ("fp16", fp16)):
        res = build_engine(onnx_path, root / f"{name}.plan", profiles=_gpu_profiles(config), timing_cache=cache)
        out[name] = (onnx_path, res.path)
    return out


def _compare_with_ort(onnx_path, plan, shapes, atol):
    from trimkit.export.inputs import sample_inputs
    from trimkit.runtime.onnxruntime import ort_session
    from trimkit.runtime.tensorrt import load

    config, _ = onnx_model_config(onnx_path)
    runner = load(plan)
    sess = ort_session(onnx_path)
    flips, active = 0, []
    for b, n in shapes:
        pv, ids, mask = (t.numpy() for t in sample_inputs(config, b, n, seed=b * 10 + n))
        feeds = {"pixel_values": pv, "input_ids": ids, "attention_mask": mask}
        logits, counts = runner.run(feeds)
        ref_logits, ref_counts = sess.run(["logits", "keep_counts"], feeds)
        assert logits.shape == ref_logits.shape and counts.shape == ref_counts.shape
        same = (counts == ref_counts).reshape(b, -1).all(axis=1)
        flips += int((~same).sum())
        np.testing.assert_allclose(logits[same], ref_logits[same], atol=atol, rtol=atol)
        active.append(runner.active)
        assert runner.last_timing["device_ms"] > 0
    return runner, flips, active


@pytest.mark.gpu
def test_fp32_engine_matches_onnx_runtime_and_switches_profiles(engines):
    onnx_path, plan = engines["fp32"]
    man = read_manifest(plan)
    assert man["tf32"] is False and man["gpu_name"] and len(man["profiles"]) == 2
    runner, flips, active = _compare_with_ort(onnx_path, plan, [(1, 5), (3, 16), (8, 9), (6, 2), (2, 7)], 1e-3)
    assert flips == 0
    assert active == [0, 0, 1, 1, 0] and runner.profile_switches == 3


@pytest.mark.gpu
def test_fp16_engine_reuses_the_timing_cache_and_stays_close(engines):
    onnx_path, plan = engines["fp16"]
    man = read_manifest(plan)
    assert man["precision"] == "fp16" and man["timing_cache_state"] == "reused"
    _, flips, _ = _compare_with_ort(onnx_path, plan, [(4, 12), (8, 16)], 5e-2)
    assert flips <= 3  # of 12 samples: fp16 may flip a decision that sits on its threshold


@pytest.mark.gpu
def test_cli_export_trt_with_default_profile_then_verify(pruning_ckpt, tmp_path):
    plan = tmp_path / "m.plan"
    r = subprocess.run([sys.executable, "-m", "trimkit.cli", "export", str(pruning_ckpt), "--format", "trt",
                        "--out", str(plan), "--timing-cache", str(tmp_path / "cache.bin")], capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert read_manifest(plan)["profiles"] == [Profile((1, 8, 8), (2, 16, 16))]
    js = tmp_path / "v.json"
    r = subprocess.run([sys.executable, "-m", "trimkit.cli", "verify", str(pruning_ckpt), str(plan), "--samples",
                        "64", "--repeats", "3", "--json", str(js)], capture_output=True, text=True, timeout=600)
    report = json.loads(js.read_text())
    assert r.returncode == 0 and report["passed"] and report["runtime"] == "tensorrt", r.stdout + r.stderr
    assert report["runtimes"]["tensorrt"]["describe"]["tf32"] is False


# ----------------------------------------------------------------------------- the builder against a fake TensorRT
# The fake follows the documented TensorRT 10 Python API (set_timing_cache returns a bool, get_timing_cache may
# return None, BuilderFlag.TF32 is on by default) so that the builder's handling of each is exercised here.


class _Flag:
    def __init__(self, name):
        self.name = name


class _FakeCache:
    def __init__(self, data: bytes):
        self.data = data or b"fresh"

    def serialize(self):
        return self.data + b"+timed"


class _FakeConfig:
    def __init__(self, owner):
        self.owner, self.flags, self.cache, self.profiles = owner, {"TF32"}, None, []

    def set_memory_pool_limit(self, pool, size):
        self.workspace = size

    def clear_flag(self, flag):
        self.flags.discard(flag.name)

    def get_flag(self, flag):
        return flag.name in self.flags

    def add_optimization_profile(self, prof):
        self.profiles.append(prof)
        return len(self.profiles) - 1

    def create_timing_cache(self, data):
        return _FakeCache(bytes(data))

    def set_timing_cache(self, cache, ignore_mismatch):
        if cache.data == b"foreign" and not ignore_mismatch:
            return False  # a cache from another device: refused, as TensorRT does
        self.cache = cache
        return True

    def get_timing_cache(self):
        return self.owner.get_timing_cache_result(self)


class _FakeProfile:
    def __init__(self):
        self.shapes = {}

    def set_shape(self, name, lo, opt, hi):
        self.shapes[name] = (lo, opt, hi)


class _FakeEngine:
    num_io_tensors = 4
    names = ["pixel_values", "input_ids", "attention_mask", "logits"]

    def get_tensor_name(self, i):
        return self.names[i]

    def get_tensor_mode(self, name):
        return "in" if name != "logits" else "out"

    def get_tensor_dtype(self, name):
        return "DataType.FLOAT"

    def get_tensor_shape(self, name):
        return [-1, 13]


def _fake_trt(*, cache_result="config", fail_serialize=False):
    import types

    trt = types.SimpleNamespace(__version__="10.13.0")
    trt.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, level: None})
    trt.BuilderFlag = types.SimpleNamespace(TF32=_Flag("TF32"))
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE=0)
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=0)
    trt.TensorIOMode = types.SimpleNamespace(INPUT="in")
    trt.configs = []

    def get_cache(cfg):
        if fail_serialize:
            return types.SimpleNamespace(serialize=lambda: (_ for _ in ()).throw(RuntimeError("serialize")))
        return cfg.cache if cache_result == "config" else None

    class Builder:
        def __init__(self, logger):
            self.get_timing_cache_result = get_cache

        def create_network(self, flags):
            return object()

        def create_builder_config(self):
            cfg = _FakeConfig(self)
            trt.configs.append(cfg)
            return cfg

        def create_optimization_profile(self):
            return _FakeProfile()

        def build_serialized_network(self, network, cfg):
            return b"ENGINE"

    trt.Builder = Builder
    trt.OnnxParser = type("OnnxParser", (), {"__init__": lambda self, n, lg: None,
                                             "parse_from_file": lambda self, p: True, "num_errors": 0})
    trt.Runtime = type("Runtime", (), {"__init__": lambda self, lg: None,
                                       "deserialize_cuda_engine": lambda self, b: _FakeEngine()})
    return trt


@pytest.fixture
def fake_build(monkeypatch):
    import trimkit.export.trt as trt_mod

    def install(**kw):
        trt = _fake_trt(**kw)
        monkeypatch.setattr(trt_mod, "check_trt_ready", lambda: (trt, {"name": "Fake GPU", "cuda": "12.9"}))
        return trt

    return install


def test_fp32_build_clears_tf32_and_writes_engine_manifest_cache_together(exported, tmp_path, fake_build):
    from trimkit.export.trt import build_engine

    trt = fake_build()
    profiles = [Profile((1, 8, 8), (2, 16, 16))]
    res = build_engine(exported["adaptive"], tmp_path / "m.plan", profiles=profiles,
                       timing_cache=tmp_path / "cache.bin")
    assert trt.configs[0].get_flag(trt.BuilderFlag.TF32) is False
    man = read_manifest(res.path)
    assert man["tf32"] is False and man["timing_cache_state"] == "new" and man["precision"] == "fp32"
    assert res.path.read_bytes() == b"ENGINE" and (tmp_path / "cache.bin").read_bytes() == b"fresh+timed"
    import hashlib

    assert man["engine_sha256"] == hashlib.sha256(b"ENGINE").hexdigest()
    # the second build reuses (and rewrites) the cache file without --force; the engine needs --force
    build_engine(exported["adaptive"], tmp_path / "m.plan", profiles=profiles, timing_cache=tmp_path / "cache.bin",
                 force=True)
    assert read_manifest(res.path)["timing_cache_state"] == "reused"
    assert (tmp_path / "cache.bin").read_bytes() == b"fresh+timed+timed"


def test_foreign_timing_cache_falls_back_to_a_fresh_one(exported, tmp_path, fake_build):
    from trimkit.export.trt import build_engine

    fake_build(cache_result=None)  # get_timing_cache() returns None: the builder keeps the cache it set
    (tmp_path / "cache.bin").write_bytes(b"foreign")
    said = []
    res = build_engine(exported["adaptive"], tmp_path / "m.plan", profiles=[Profile((1, 8, 8), (2, 16, 16))],
                       timing_cache=tmp_path / "cache.bin", log=said.append)
    assert any("another device" in s for s in said)
    assert read_manifest(res.path)["timing_cache_state"] == "replaced"
    assert (tmp_path / "cache.bin").read_bytes() == b"fresh+timed"


def test_failed_cache_serialization_leaves_nothing(exported, tmp_path, fake_build):
    from trimkit.export.trt import build_engine

    fake_build(fail_serialize=True)
    with pytest.raises(RuntimeError, match="serialize"):
        build_engine(exported["adaptive"], tmp_path / "m.plan", profiles=[Profile((1, 8, 8), (2, 16, 16))],
                     timing_cache=tmp_path / "cache.bin")
    assert list(tmp_path.iterdir()) == []


def test_group_write_removes_renamed_files_when_a_later_rename_fails(tmp_path, monkeypatch):
    import os

    from trimkit.fileio import atomic_write_group

    real = os.replace
    calls = []

    def flaky(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError("disk full")
        real(src, dst)

    monkeypatch.setattr(os, "replace", flaky)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_group({tmp_path / "a.plan": lambda t: t.write_bytes(b"a"),
                            tmp_path / "a.plan.json": lambda t: t.write_text("{}")})
    assert list(tmp_path.iterdir()) == []


def test_opset_range_is_checked():
    from trimkit.export.onnx import check_opset

    assert [check_opset(o) for o in (18, 20, 25)] == [18, 20, 25]
    for bad in (5, 17, 26):
        with pytest.raises(BadInputError, match="supported opsets are 18-25"):
            check_opset(bad)


@pytest.mark.parametrize("opset", ["5", "99"])
def test_opset_outside_the_supported_range_is_one_line(pruning_ckpt, tmp_path, opset, capsys):
    assert main(["export", str(pruning_ckpt), "--out", str(tmp_path / "m.onnx"), "--opset", opset]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "supported opsets are 18-25" in lines[0]
    assert list(tmp_path.iterdir()) == []
