"""`trimkit export --format openvino`: IR + metadata + manifest, checked; INT8 graphs on OpenVINO."""

import json

import numpy as np
import pytest

import trimkit
from trimkit.cli import main
from trimkit.errors import BadInputError
from trimkit.export.inputs import sample_inputs

pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install openvino; it is in the dev extra)")

from trimkit.export.openvino import ir_metadata, read_ir_manifest, to_openvino  # noqa: E402
from trimkit.runtime.openvino import load  # noqa: E402


def test_ir_export_carries_metadata_and_manifest(exported, tmp_path):
    import onnx

    out = tmp_path / "trim.xml"
    res = to_openvino(exported["adaptive"], out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["trim.bin", "trim.xml", "trim.xml.json"]
    onnx_meta = {p.key: p.value for p in onnx.load(str(exported["adaptive"]), load_external_data=False).metadata_props}
    assert ir_metadata(out) == onnx_meta
    man = read_ir_manifest(out)
    assert man == res.manifest_data and man["inference_precision"] == "fp32" and man["check"]["passed"]
    assert [t["name"] for t in man["io"]] == ["pixel_values", "input_ids", "attention_mask", "logits", "keep_counts"]
    assert man["io"][1]["shape"] == [-1, -1]  # dynamic batch and text length survive conversion
    # fp32 weights (save_model alone would compress them to fp16): the IR runs like the ONNX graph
    model = trimkit.load_checkpoint(exported["ckpt"])
    pv, ids, mask = (t.numpy() for t in sample_inputs(model.config, 5, 11, seed=2))
    a = load(out)(pv, ids, mask)
    b = load(exported["adaptive"])(pv, ids, mask)
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_allclose(a[0], b[0], atol=1e-6)


@pytest.mark.slow  # a fresh ONNX trace and an OpenVINO conversion through the CLI: ~35 s
def test_cli_export_openvino_from_checkpoint(exported, tmp_path, capsys):
    from trimkit.cli import main
    from trimkit.export.openvino import ir_metadata

    assert main(["export", str(exported["ckpt"]), "--format", "openvino", "--layout", "padded",
                 "--out", str(tmp_path / "m.xml")]) == 0
    assert "OpenVINO" in capsys.readouterr().out and (tmp_path / "m.bin").exists()
    assert read_ir_manifest(tmp_path / "m.xml")["trimkit_mode"] == "adaptive"
    assert ir_metadata(tmp_path / "m.xml")["trimkit_layout"] == "padded"  # --layout reaches the graph
    assert main(["export", str(exported["adaptive"]), "--format", "openvino", "--out", str(tmp_path / "m.xml")]) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and len(err.strip().splitlines()) == 1


def test_refusals_write_nothing(exported, tmp_path):
    with pytest.raises(BadInputError, match="NAME.xml"):
        to_openvino(exported["adaptive"], tmp_path / "m.onnx")
    with pytest.raises(BadInputError, match="supported opsets"):
        to_openvino(exported["ckpt"], tmp_path / "m.xml", opset=17)
    (tmp_path / "m.bin").write_bytes(b"old")
    with pytest.raises(BadInputError, match="m.bin: already exists"):
        to_openvino(exported["adaptive"], tmp_path / "m.xml")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.bin"]


def test_int8_graph_runs_on_openvino(exported, tmp_path):
    """A `calibrate int8` Q/DQ graph runs on OpenVINO's CPU plugin and stays near ONNX Runtime."""
    from trimkit.runtime.onnxruntime import ort_session

    int8 = tmp_path / "m.int8.onnx"
    assert main(["calibrate", "int8", str(exported["adaptive"]), "--ckpt", str(exported["ckpt"]), "--out", str(int8),
                 "--samples", "32", "--per-channel"]) == 0
    model = trimkit.load_checkpoint(exported["ckpt"])
    runner = load(int8, threads=2)
    sess = ort_session(int8)
    agree = 0
    for b, n in ((1, 4), (6, 12), (3, 16)):
        pv, ids, mask = (t.numpy() for t in sample_inputs(model.config, b, n, seed=b))
        logits, counts = runner(pv, ids, mask)
        ref_logits, ref_counts = sess.run(None, {"pixel_values": pv, "input_ids": ids, "attention_mask": mask})
        assert logits.shape == ref_logits.shape and counts.shape == ref_counts.shape and np.isfinite(logits).all()
        same = (counts == ref_counts).reshape(b, -1).all(axis=1)
        agree += int(same.sum())
        # the two runtimes' int8 kernels round differently; verify's int8 tolerance is atol 0.25
        assert np.abs(logits - ref_logits)[same].max(initial=0.0) < 0.25
    assert agree >= 8  # of 10 samples
    xml = tmp_path / "m.int8.xml"
    res = to_openvino(int8, xml)
    assert res.manifest_data["precision"] == "int8" and json.loads(ir_metadata(xml)["trimkit_calibration"])


@pytest.mark.parametrize("args,message", [
    (["--layout", "padded"], "--layout shape a graph exported from a checkpoint"),
    (["--heads", "gather", "--opset", "19"], "--heads, --opset shape a graph"),
])
def test_graph_options_on_an_exported_artifact_are_refused(exported, tmp_path, capsys, args, message):
    from trimkit.cli import main

    assert main(["export", str(exported["adaptive"]), "--format", "openvino", "--out", str(tmp_path / "m.xml"),
                 *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and not list(tmp_path.iterdir())
