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


def test_calibrated_checkpoint_vs_older_export_is_exit_2(exported, tmp_path, capsys):
    """Moving the thresholds (what `calibrate budget` does) keeps the weights: verify must still refuse the
    pair in one line naming the settings, not fail numerics and suggest a huge --atol."""
    import dataclasses

    other = trimkit.load_checkpoint(exported["ckpt"])
    other.trim = dataclasses.replace(other.trim, token_threshold=other.trim.token_threshold + 0.5)
    trimkit.save_checkpoint(other, tmp_path / "calibrated.pt")
    rc, report, _ = run_verify(tmp_path, tmp_path / "calibrated.pt", exported["adaptive"])
    assert rc == 2 and report is None
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "trimmer settings differ (token_threshold)" in err[0]


@pytest.mark.parametrize("args,message", [
    (["--batch-sizes", "0"], "positive"),
    (["--data", "nope"], "unknown dataset"),
])
def test_bad_arguments(exported, tmp_path, args, message, capsys):
    rc, _, _ = run_verify(tmp_path, exported["ckpt"], exported["adaptive"], *args)
    assert rc == 2
    assert message in capsys.readouterr().err


def test_unknown_artifact_type(pruning_ckpt, tmp_path):
    bogus = tmp_path / "x.bin"
    bogus.write_bytes(b"x")
    assert main(["verify", str(pruning_ckpt), str(bogus)]) == 2
    assert main(["verify", str(pruning_ckpt), str(tmp_path / "none.plan")]) == 2


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


def test_engine_shapes_outside_profiles_are_exit_2(pruning_ckpt, fake_engine, capsys):
    rc = main(["verify", str(pruning_ckpt), str(fake_engine), "--batch-sizes", "8", "--text-lens", "8"])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "batch 8 x text 8" in err[0] and "outside every optimization profile" in err[0]


def test_engine_within_profiles_needs_tensorrt(pruning_ckpt, fake_engine, capsys):
    from trimkit.errors import MissingDependencyError
    from trimkit.export.trt import check_trt_ready

    try:
        check_trt_ready()
    except MissingDependencyError:
        rc = main(["verify", str(pruning_ckpt), str(fake_engine), "--batch-sizes", "1,4", "--text-lens", "8,12"])
        assert rc == 2
        assert "TensorRT" in capsys.readouterr().err
    else:
        pytest.skip("TensorRT is installed here: the missing-TensorRT path does not apply")


def test_engine_from_other_weights_is_exit_2(pruning_ckpt, fake_engine, tmp_path, capsys):
    import json as _json

    from trimkit.export.manifest import manifest_path

    path = manifest_path(fake_engine)
    man = _json.loads(path.read_text())
    man["weights_sha256"] = "f" * 64
    path.write_text(_json.dumps(man))
    assert main(["verify", str(pruning_ckpt), str(fake_engine)]) == 2
    assert "other weights" in capsys.readouterr().err


# ----------------------------------------------------------------------------- several runtimes


def test_onnx_verified_on_onnxruntime_and_openvino(exported, tmp_path):
    pytest.importorskip("openvino")
    rc, report, junit = run_verify(tmp_path, exported["ckpt"], exported["adaptive"], "--runtime",
                                   "onnxruntime,openvino", "--threads", "2")
    assert rc == 0 and report["passed"] and report["runtime"] == "onnxruntime"
    assert list(report["runtimes"]) == ["onnxruntime", "openvino"]
    ov = report["runtimes"]["openvino"]
    assert ov["describe"]["precision"] == "fp32" and ov["describe"]["threads"] == 2
    assert ov["numerics"]["samples"] == 24 and ov["numerics"]["max_abs_err"] < 1e-4
    by_runtime = {}
    for c in report["checks"]:
        by_runtime.setdefault(c["runtime"], []).append(c["name"])
    assert by_runtime["onnxruntime"] == by_runtime["openvino"] == ["logits_within_tolerance", "argmax_agreement",
                                                                   "keep_counts_agreement"]
    for row in report["speed"]:  # each runtime timed against the full export on the same runtime
        assert {"artifact", "artifact[openvino]", "full-export", "full-export[openvino]"} <= set(row)
        assert row["speedups"]["openvino"]["vs_full"] > 0 and row["speedups"]["onnxruntime"]["vs_pytorch"] > 0
    classes = {tc.get("classname") for tc in junit.getroot()}
    assert classes == {"trimkit.verify.onnxruntime", "trimkit.verify.openvino"}


@pytest.mark.parametrize("args,message", [
    (["--runtime", "tensorrt"], "runs on onnxruntime, openvino, not on tensorrt"),
    (["--runtime", "cuda"], "--runtime cuda: choose from"),
    (["--precision", "bf16"], "add --runtime openvino"),
])
def test_runtime_choices_are_checked_in_one_line(exported, tmp_path, capsys, args, message):
    rc, report, _ = run_verify(tmp_path, exported["ckpt"], exported["adaptive"], *args)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and report is None and len(err) == 1 and message in err[0]


def test_a_missing_runtime_is_one_line_before_any_work(exported, tmp_path, capsys, monkeypatch):
    import trimkit.runtime.openvino as ov
    import trimkit.verify.collect as collect
    from trimkit.errors import MissingDependencyError

    def missing():
        raise MissingDependencyError(ov.INSTALL_HINT)

    monkeypatch.setattr(ov, "import_openvino", missing)
    monkeypatch.setattr(collect, "collect_outputs_many", lambda *a, **k: pytest.fail("ran before loading runtimes"))
    rc, report, _ = run_verify(tmp_path, exported["ckpt"], exported["adaptive"], "--runtime", "onnxruntime,openvino")
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and report is None and err == ["trimkit: error: OpenVINO is not installed: pip install openvino"]


def test_openvino_ir_and_bf16_with_its_own_tolerance(exported, tmp_path):
    pytest.importorskip("openvino")
    from trimkit.export.openvino import to_openvino

    xml = to_openvino(exported["adaptive"], tmp_path / "m.xml").xml
    rc, report, _ = run_verify(tmp_path, exported["ckpt"], xml)
    assert rc == 0 and report["runtime"] == "openvino" and report["numerics"]["atol"] == 1e-4
    import openvino

    if "BF16" not in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        pytest.skip("this CPU has no bf16")
    rc, report, _ = run_verify(tmp_path, exported["ckpt"], xml, "--precision", "bf16")
    assert rc == (0 if report["passed"] else 1)
    assert report["runtimes"]["openvino"]["describe"]["precision"] == "bf16"
    assert report["numerics"]["atol"] == 5e-2 and report["numerics"]["rtol"] == 5e-2
    assert next(c for c in report["checks"] if c["name"] == "keep_counts_agreement")["threshold"] == 0.95


def test_engine_profiles_are_checked_against_the_data_batches(pruning_ckpt, fake_engine, capsys):
    """--data easyvqa: the batches' text lengths come from the questions; a profile too short for them is
    refused before anything runs (the speed shapes alone would fit)."""
    from trimkit.export.manifest import build_manifest, manifest_path
    from trimkit.export.profiles import Profile

    man = json.loads(manifest_path(fake_engine).read_text())
    meta = {"trimkit_config": json.dumps(man["trimkit_config"]), "labels": json.dumps(man["labels"]),
            "trimkit_mode": man["trimkit_mode"], "trimkit_weights_sha256": man["weights_sha256"],
            "trimkit_tokenizer": json.dumps(man["tokenizer"])}
    short = build_manifest(engine_sha256="0" * 64, onnx_sha256="0" * 64, onnx_metadata=meta,
                           profiles=[Profile((1, 2, 4), (2, 3, 4))], io=[], precision="fp32",
                           tensorrt_version="10.0", cuda_version=None, gpu_name=None)
    manifest_path(fake_engine).write_text(json.dumps(short))
    rc = main(["verify", str(pruning_ckpt), str(fake_engine), "--data", "easyvqa", "--samples", "16",
               "--batch-sizes", "1,4", "--text-lens", "4"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "batch 4 x text" in err[0] and "outside every optimization profile" in err[0]
