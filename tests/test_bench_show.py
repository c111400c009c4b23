"""`trimkit bench` writes a report with real plots; `trimkit show` draws what each layer keeps."""

import json
from pathlib import Path

import pytest
import torch

import trimkit
from trimkit.cli import main
from trimkit.data import easyvqa

PNG = b"\x89PNG\r\n\x1a\n"


def is_png(path) -> bool:
    return path.exists() and path.stat().st_size > 2000 and path.read_bytes()[:8] == PNG


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


def test_bench_refuses_existing_folder_and_bad_targets(exported, tmp_path, capsys):
    (tmp_path / "b").mkdir()
    assert main(["bench", str(exported["ckpt"]), "--out", str(tmp_path / "b")]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["bench", str(exported["ckpt"]), "--out", str(tmp_path / "c"), "--targets", "1.5"]) == 2
    assert "outside (0, 1]" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


@pytest.fixture(scope="module")
def image():
    return easyvqa.image_paths("test")[0]


def test_show_draws_the_kept_tokens(exported, tmp_path, image):
    from trimkit.show import explain

    out = tmp_path / "show.png"
    question = "what color is the shape in the image"
    assert main(["show", str(exported["ckpt"]), image, question, "--out", str(out)]) == 0
    assert is_png(out)
    model = trimkit.load_checkpoint(exported["ckpt"])
    ex = explain(model, image, question)
    assert len(ex["layers"]) == len(model.token_trimmers)
    assert ex["answer"] in model.labels and 0 < ex["probability"] <= 1
    # the drawn masks are the model's own decisions: they add up to keep_counts (CLS always kept)
    from trimkit.data.dataset import _open_image, _resize

    pix = torch.from_numpy(_resize(_open_image(Path(image), "t"), model.config.image_size).copy())
    pix = pix.permute(2, 0, 1)[None].float().div(127.5).sub(1.0)
    ids, mask = model.tokenizer.encode([question])
    with torch.no_grad():
        counts = model(pix, ids, mask, mode="prune").keep_counts[0]
    for ti, layer in enumerate(ex["layers"]):
        assert int(layer["patches"].sum()) + 1 == int(counts[ti, 0])
        assert int(layer["words"].sum()) == int(counts[ti, 1])
    # this model prunes: some patch, word or head is gone somewhere
    assert any(not layer["patches"].all() or not layer["words"].all() or min(layer["heads"]) < ex["num_heads"]
               for layer in ex["layers"])
    assert main(["show", str(exported["ckpt"]), image, question, "--out", str(out)]) == 2  # no overwrite


@pytest.mark.parametrize("img,question,message", [
    ("missing.png", "what shape", "does not exist"),
    (None, "   ", "empty"),
])
def test_show_bad_input(exported, tmp_path, image, img, question, message, capsys):
    path = str(tmp_path / img) if img else image
    assert main(["show", str(exported["ckpt"]), path, question, "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not (tmp_path / "x.png").exists()
