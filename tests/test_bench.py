"""`trimkit bench` writes a report with real plots."""

import json

import pytest

from trimkit.cli import main

PNG = b"\x89PNG\r\n\x1a\n"


def is_png(path) -> bool:
    return path.exists() and path.stat().st_size > 2000 and path.read_bytes()[:8] == PNG


@pytest.mark.slow  # bench exports and times four graphs: ~35 s
def test_bench_writes_report_and_plots(exported, tmp_path):
    out = tmp_path / "bench"
    rc = main(["bench", str(exported["ckpt"]), "--out", str(out), "--targets", "native,0.5", "--batch-sizes", "1,2",
               "--text-lens", "4,8", "--samples", "96", "--calib-samples", "96", "--repeats", "2", "--threads", "1"])
    assert rc == 0
    for name in ("accuracy_vs_flops.png", "latency_vs_text_len.png", "kept_tokens_per_layer.png"):
        assert is_png(out / name), name
    res = json.loads((out / "bench.json").read_text())
    assert [p["label"] for p in res["points"]] == ["native", "0.5"]
    calibrated = res["points"][1]
    assert abs(calibrated["flops_ratio"] - 0.5) < 0.1 and calibrated["threshold_offset"] != 0.0
    assert "static" in calibrated and 0 < calibrated["static"]["flops_ratio"] < 1
    assert {(r["batch"], r["text_len"]) for r in res["latency"]} == {(1, 4), (1, 8), (2, 4), (2, 8)}
    runtimes = res["runtimes"]
    assert {"onnxruntime full", "onnxruntime adaptive@native", "onnxruntime adaptive@0.5", "pytorch off"} <= set(runtimes)
    assert all(r[name]["p50_ms"] > 0 for r in res["latency"] for name in runtimes)
    report = (out / "report.md").read_text()
    assert "![accuracy vs FLOPs](accuracy_vs_flops.png)" in report and "| 0.5 |" in report
    assert not list(out.glob("*.onnx")) and not list(tmp_path.glob(".bench.*"))


def test_bench_refuses_existing_folder_and_bad_targets(pruning_ckpt, tmp_path, capsys):
    (tmp_path / "b").mkdir()
    assert main(["bench", str(pruning_ckpt), "--out", str(tmp_path / "b")]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["bench", str(pruning_ckpt), "--out", str(tmp_path / "c"), "--targets", "1.5"]) == 2
    assert "outside (0, 1]" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()
