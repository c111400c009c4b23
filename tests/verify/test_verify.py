"""`trimkit verify` passes on a faithful export, fails on an altered one, refuses mismatched pairs."""

import json
import xml.etree.ElementTree as ET

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import trimkit
from trimkit.cli import main

FAST = ["--samples", "24", "--batch-sizes", "1,3", "--text-lens", "4,12", "--repeats", "2"]


def run_verify(tmp_path, ckpt, artifact, *extra):
    js, xml = tmp_path / "r.json", tmp_path / "r.xml"
    rc = main(["verify", str(ckpt), str(artifact), *FAST, "--json", str(js), "--junit", str(xml), *extra])
    return rc, json.loads(js.read_text()) if js.exists() else None, ET.parse(xml) if xml.exists() else None


def test_faithful_export_passes(exported, tmp_path):
    rc, report, junit = run_verify(tmp_path, exported["ckpt"], exported["adaptive"])
    assert rc == 0 and report["passed"]
    names = {c["name"] for c in report["checks"]}
    assert {"logits_within_tolerance", "argmax_agreement", "keep_counts_agreement"} <= names
    assert all(c["passed"] and "threshold" in c for c in report["checks"])
    assert report["numerics"]["decision_flips"] == 0 and report["numerics"]["max_abs_err"] < 1e-4
    suite = junit.getroot()
    assert suite.get("tests") == str(len(report["checks"])) and suite.get("failures") == "0"
    shapes = {(r["batch"], r["text_len"]) for r in report["speed"]}
    assert shapes == {(1, 4), (1, 12), (3, 4), (3, 12)}
    assert all(r["speedup_vs_full"] > 0 and r["artifact"]["p50_ms"] > 0 and r["full-export"]["p50_ms"] > 0 for r in report["speed"])


def test_labelled_data_reports_accuracy(exported, tmp_path):
    rc, report, _ = run_verify(tmp_path, exported["ckpt"], exported["full"], "--data", "easyvqa",
                               "--max-accuracy-drop", "100")
    assert rc == 0
    acc = report["task"]["accuracy"]
    assert set(acc) == {"pytorch_full", "pytorch_trimmed", "artifact"}
    assert acc["artifact"] == acc["pytorch_trimmed"]


def test_altered_weights_fail_with_the_check_named(exported, tmp_path, capsys):
    m = onnx.load(str(exported["adaptive"]))
    target = max(m.graph.initializer, key=lambda t: int(np.prod(t.dims)) if "classifier" in t.name else 0)
    arr = numpy_helper.to_array(target).copy()
    arr += np.random.default_rng(0).normal(0, 0.5, arr.shape).astype(arr.dtype)
    target.CopyFrom(numpy_helper.from_array(arr, target.name))
    altered = tmp_path / "altered.onnx"
    onnx.save(m, str(altered))
    rc, report, junit = run_verify(tmp_path, exported["ckpt"], altered)
    assert rc == 1 and not report["passed"]
    failed = [c["name"] for c in report["checks"] if not c["passed"]]
    assert "logits_within_tolerance" in failed
    logits = next(c for c in report["checks"] if c["name"] == "logits_within_tolerance")
    hint = float(logits["detail"].rsplit("--atol ", 1)[1])  # the tolerance this artifact would need
    out = capsys.readouterr()
    assert "logits_within_tolerance" in out.err and f"--atol {logits['detail'].rsplit('--atol ', 1)[1]}" in out.out + out.err
    assert hint >= report["numerics"]["passing_atol"] > 1e-4
    assert junit.getroot().get("failures") == str(len(failed))
    assert junit.getroot().find("testcase[@name='logits_within_tolerance']/failure") is not None


def test_mismatched_checkpoint_is_exit_2(exported, tmp_path, capsys):
    other = trimkit.load_checkpoint(exported["ckpt"])
    import torch

    with torch.no_grad():
        other.classifier[-1].bias.add_(1.0)
    trimkit.save_checkpoint(other, tmp_path / "other.pt")
    rc, report, _ = run_verify(tmp_path, tmp_path / "other.pt", exported["adaptive"])
    assert rc == 2 and report is None
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "other weights" in err[0]


@pytest.mark.parametrize("args,message", [
    (["--batch-sizes", "0"], "positive"),
    (["--data", "nope"], "unknown dataset"),
])
def test_bad_arguments(exported, tmp_path, args, message, capsys):
    rc, _, _ = run_verify(tmp_path, exported["ckpt"], exported["adaptive"], *args)
    assert rc == 2
    assert message in capsys.readouterr().err


def test_unknown_artifact_type(exported, tmp_path):
    bogus = tmp_path / "x.bin"
    bogus.write_bytes(b"x")
    assert main(["verify", str(exported["ckpt"]), str(bogus)]) == 2
    assert main(["verify", str(exported["ckpt"]), str(tmp_path / "none.plan")]) == 2


@pytest.fixture
def fake_engine(exported, tmp_path):
    """A .plan placeholder with a real manifest (built from the ONNX metadata), for the checks that run
    before TensorRT is needed."""
    from trimkit.export.manifest import build_manifest, write_manifest
    from trimkit.export.profiles import Profile

    m = onnx.load(str(exported["adaptive"]), load_external_data=False)
    meta = {p.key: p.value for p in m.metadata_props}
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"not an engine")
    man = build_manifest(engine_sha256="0" * 64, onnx_sha256="0" * 64, onnx_metadata=meta,
                         profiles=[Profile((1, 2, 4), (2, 8, 12))], io=[], precision="fp32", tensorrt_version="10.0",
                         cuda_version=None, gpu_name=None)
    write_manifest(plan, man)
    return plan


def test_engine_shapes_outside_profiles_are_exit_2(exported, fake_engine, capsys):
    rc = main(["verify", str(exported["ckpt"]), str(fake_engine), "--batch-sizes", "8", "--text-lens", "8"])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "batch 8 x text 8" in err[0] and "outside every optimization profile" in err[0]


def test_engine_within_profiles_needs_tensorrt(exported, fake_engine, capsys):
    from trimkit.errors import MissingDependencyError
    from trimkit.export.trt import check_trt_ready

    try:
        check_trt_ready()
    except MissingDependencyError:
        rc = main(["verify", str(exported["ckpt"]), str(fake_engine), "--batch-sizes", "1,4", "--text-lens", "8,12"])
        assert rc == 2
        assert "TensorRT" in capsys.readouterr().err
    else:
        pytest.skip("TensorRT is installed here: the missing-TensorRT path does not apply")


def test_engine_from_other_weights_is_exit_2(exported, fake_engine, tmp_path, capsys):
    import json as _json

    from trimkit.export.manifest import manifest_path

    path = manifest_path(fake_engine)
    man = _json.loads(path.read_text())
    man["weights_sha256"] = "f" * 64
    path.write_text(_json.dumps(man))
    assert main(["verify", str(exported["ckpt"]), str(fake_engine)]) == 2
    assert "other weights" in capsys.readouterr().err
