"""`trimkit export --format triton`: a model repository whose config Triton's own ModelConfig protobuf parses
and whose I/O matches the artifact. No Triton server runs on this machine (no package provides one)."""

import hashlib

import pytest

pytest.importorskip("tritonclient.grpc", reason="needs tritonclient (pip install 'tritonclient[grpc]')")

from google.protobuf import text_format  # noqa: E402
from tritonclient.grpc import model_config_pb2  # noqa: E402

from trimkit.cli import main  # noqa: E402
from trimkit.errors import BadInputError  # noqa: E402
from trimkit.export.triton import check_repository, to_triton  # noqa: E402


def _parse(path):
    cfg = model_config_pb2.ModelConfig()
    text_format.Parse(path.read_text(), cfg)
    return cfg


def test_onnxruntime_repository(exported, tmp_path):
    res = to_triton(exported["adaptive"], tmp_path / "repo", name="trim", max_batch=16, instance_count=2)
    cfg = _parse(res.config)
    assert cfg.name == "trim" and cfg.platform == "onnxruntime_onnx" and cfg.max_batch_size == 16
    assert {t.name: list(t.dims) for t in cfg.input} == {"pixel_values": [3, 32, 32], "input_ids": [-1],
                                                         "attention_mask": [-1]}
    assert {t.name: list(t.dims) for t in cfg.output} == {"logits": [13], "keep_counts": [2, 2]}
    assert [model_config_pb2.DataType.Name(t.data_type) for t in cfg.input] == ["TYPE_FP32", "TYPE_INT64",
                                                                               "TYPE_INT64"]
    assert cfg.HasField("dynamic_batching") and cfg.instance_group[0].count == 2
    assert cfg.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    assert (res.model_dir / "1" / "model.onnx").read_bytes() == exported["adaptive"].read_bytes()
    assert (res.model_dir / "labels.txt").read_text().splitlines()[0] == "circle"
    assert check_repository(tmp_path / "repo", "trim") == []
    assert sorted(p.name for p in (tmp_path / "repo").iterdir()) == ["trim"]  # no staging folder left


def test_openvino_repository(exported, tmp_path):
    pytest.importorskip("openvino")
    res = to_triton(exported["adaptive"], tmp_path / "repo", backend="openvino", name="trim_ov", threads=2)
    cfg = _parse(res.config)
    assert cfg.backend == "openvino" and cfg.default_model_filename == "model.xml" and cfg.max_batch_size == 8
    assert cfg.parameters["INFERENCE_PRECISION_HINT"].string_value == "f32"
    assert cfg.parameters["INFERENCE_NUM_THREADS"].string_value == "2"
    assert sorted(p.name for p in (res.model_dir / "1").iterdir()) == ["model.bin", "model.xml", "model.xml.json"]
    assert check_repository(tmp_path / "repo", "trim_ov") == []


def test_tensorrt_repository_from_an_engine_maps_profiles(exported, tmp_path):
    from trimkit.export.manifest import build_manifest, write_manifest
    from trimkit.export.profiles import Profile
    from trimkit.export.trt import onnx_model_config

    _, meta = onnx_model_config(exported["adaptive"])
    engine = tmp_path / "m.plan"
    engine.write_bytes(b"placeholder engine")  # no TensorRT here: the repository only copies it
    io = [{"name": "pixel_values", "mode": "input", "dtype": "float", "shape": [-1, 3, 32, 32]},
          {"name": "input_ids", "mode": "input", "dtype": "int64", "shape": [-1, -1]},
          {"name": "attention_mask", "mode": "input", "dtype": "int64", "shape": [-1, -1]},
          {"name": "logits", "mode": "output", "dtype": "float", "shape": [-1, 13]},
          {"name": "keep_counts", "mode": "output", "dtype": "int64", "shape": [-1, 2, 2]}]
    write_manifest(engine, build_manifest(
        engine_sha256=hashlib.sha256(b"placeholder engine").hexdigest(), onnx_sha256="o" * 64, onnx_metadata=meta,
        profiles=[Profile((1, 1, 4), (2, 8, 16)), Profile((8, 16, 32), (2, 16, 16))], io=io, precision="fp32",
        tensorrt_version="10.13.0", cuda_version="12.9", gpu_name="Test GPU"))
    res = to_triton(engine, tmp_path / "repo", backend="tensorrt")
    cfg = _parse(res.config)
    assert cfg.platform == "tensorrt_plan" and cfg.max_batch_size == 32  # the profiles' largest batch
    assert list(cfg.instance_group[0].profile) == ["0", "1"]
    assert cfg.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    assert check_repository(tmp_path / "repo", "m") == []
    with pytest.raises(BadInputError, match="exceeds the engine's largest profile batch 32"):
        to_triton(engine, tmp_path / "repo", backend="tensorrt", max_batch=64, name="big")
    assert not (tmp_path / "repo" / "big").exists()
    engine.write_bytes(b"another engine")
    with pytest.raises(BadInputError, match="does not match its manifest"):
        to_triton(engine, tmp_path / "repo", backend="tensorrt", name="other")


def test_tensorrt_option_errors_come_before_the_tensorrt_check(exported, tmp_path):
    """Without TensorRT (as here) the profile and --max-batch errors are still the ones reported: they are checked
    against the profiles the engine would get before TensorRT is looked for or anything is built."""
    from trimkit.export.profiles import ProfileSpec

    with pytest.raises(BadInputError, match="exceeds the engine's largest profile batch 8"):
        to_triton(exported["adaptive"], tmp_path / "repo", backend="tensorrt", max_batch=16)  # default profile: 1:8:8
    with pytest.raises(BadInputError, match="largest profile batch 4"):
        to_triton(exported["ckpt"], tmp_path / "repo", backend="tensorrt", max_batch=16,
                  profiles=ProfileSpec(profile=("batch=1:2:4",)))
    with pytest.raises(BadInputError, match="unknown axis"):
        to_triton(exported["ckpt"], tmp_path / "repo", backend="tensorrt", profiles=ProfileSpec(profile=("image=1",)))
    assert not (tmp_path / "repo").exists()


def test_check_repository_finds_a_config_that_does_not_match(exported, tmp_path):
    res = to_triton(exported["adaptive"], tmp_path / "repo", name="trim")
    text = res.config.read_text()
    res.config.write_text(text.replace("dims: [ 13 ]", "dims: [ 12 ]").replace("TYPE_INT64 dims: [ 2, 2 ]",
                                                                              "TYPE_INT32 dims: [ 2, 2 ]"))
    problems = check_repository(tmp_path / "repo", "trim")
    assert any("logits: dims [-1, 12]" in p for p in problems)
    assert any("keep_counts: TYPE_INT32 but the artifact has int64" in p for p in problems)
    res.config.write_text(text + "not_a_field: 1\n")
    assert "does not parse" in check_repository(tmp_path / "repo", "trim")[0]


def test_cli_triton_and_its_refusals(exported, tmp_path, capsys):
    repo = tmp_path / "repo"
    cmd = ["export", str(exported["adaptive"]), "--format", "triton", "--out", str(repo)]
    assert main(cmd + ["--max-batch", "4"]) == 0, capsys.readouterr().err
    assert _parse(repo / "adaptive" / "config.pbtxt").max_batch_size == 4
    capsys.readouterr()
    assert main(cmd) == 2 and "already exists; pass --force" in capsys.readouterr().err
    assert main(cmd[:4] + ["--out", str(tmp_path / "repo2"), "--backend", "tensorrt"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "TensorRT" in lines[0]
    assert not (tmp_path / "repo2").exists()  # nothing created
