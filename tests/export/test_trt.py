"""TensorRT: everything that does not need TensorRT runs here; engine builds carry the `gpu` marker."""

import json
import subprocess
import sys

import numpy as np
import pytest

from trimkit.errors import BadInputError, MissingDependencyError
from trimkit.export.manifest import build_manifest, manifest_path, read_manifest, write_manifest
from trimkit.export.profiles import Profile
from trimkit.export.trt import check_trt_ready, onnx_model_config


def test_missing_tensorrt_is_one_line_exit_2_and_writes_nothing(exported, tmp_path):
    try:
        check_trt_ready()
        pytest.skip("TensorRT and a GPU are present here")
    except MissingDependencyError:
        pass
    out = tmp_path / "m.plan"
    r = subprocess.run([sys.executable, "-m", "trimkit.cli", "export", str(exported["ckpt"]), "--format", "trt",
                        "--out", str(out), "--profile", "batch=1:4:16", "--profile", "text=2:8:16",
                        "--onnx-out", str(tmp_path / "kept.onnx")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "TensorRT" in lines[0] and "pip install" in lines[0]
    assert list(tmp_path.iterdir()) == []


def test_bad_profile_is_reported_before_tensorrt(exported, tmp_path):
    r = subprocess.run([sys.executable, "-m", "trimkit.cli", "export", str(exported["ckpt"]), "--format", "trt",
                        "--out", str(tmp_path / "m.plan"), "--profile", "text=2:8:999"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "max_text_len" in r.stderr


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


@pytest.mark.gpu
def test_engine_build_and_run_matches_onnx_runtime(exported, tmp_path):
    import tensorrt as trt

    from trimkit.export.inputs import sample_inputs
    from trimkit.export.trt import build_engine
    from trimkit.runtime.onnxruntime import ort_session

    profiles = [Profile((1, 2, 4), (2, 8, 16)), Profile((1, 1, 1), (2, 4, 8))]
    res = build_engine(exported["adaptive"], tmp_path / "m.plan", profiles=profiles,
                       timing_cache=tmp_path / "cache.bin")
    assert res.path.exists() and (tmp_path / "cache.bin").exists()
    manifest = read_manifest(res.path)
    assert len(manifest["profiles"]) == 2 and manifest["gpu_name"]
    import torch

    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine(res.path.read_bytes())
    ctx = engine.create_execution_context()
    config, _ = onnx_model_config(exported["adaptive"])
    pv, ids, mask = sample_inputs(config, 3, 9, seed=1)
    feeds = {"pixel_values": pv.cuda(), "input_ids": ids.cuda(), "attention_mask": mask.cuda()}
    for name, t in feeds.items():
        ctx.set_input_shape(name, tuple(t.shape))
        ctx.set_tensor_address(name, t.data_ptr())
    logits = torch.empty(3, 13, device="cuda")
    counts = torch.empty(3, 2, 2, dtype=torch.int64, device="cuda")
    ctx.set_tensor_address("logits", logits.data_ptr())
    ctx.set_tensor_address("keep_counts", counts.data_ptr())
    assert ctx.execute_async_v3(torch.cuda.current_stream().cuda_stream)
    torch.cuda.synchronize()
    ref_logits, ref_counts = ort_session(exported["adaptive"]).run(None, {k: v.cpu().numpy() for k, v in feeds.items()})
    np.testing.assert_allclose(logits.cpu().numpy(), ref_logits, atol=1e-3, rtol=1e-3)
    np.testing.assert_array_equal(counts.cpu().numpy(), ref_counts)
