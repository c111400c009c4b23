"""Budget calibration (threshold offset + static keep ratios) and INT8 Q/DQ quantization."""

import dataclasses
import json

import numpy as np
import onnx
import pytest
import torch

import trimkit
from trimkit.calibration.budget import adaptive_profile, batch_keep_fraction
from trimkit.calibration.int8 import _scopes, quantizable_matmuls, trimmer_nodes
from trimkit.cli import main
from trimkit.data import load_dataset
from trimkit.export.inputs import sample_inputs
from trimkit.export.onnx import heads_line
from trimkit.runtime.onnxruntime import ort_session


@pytest.fixture(scope="module")
def calibrated(pruning_ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("cal") / "cal.pt"
    rc = main(["calibrate", "budget", str(pruning_ckpt), "--target", "0.5", "--out", str(out), "--samples", "200",
               "--holdout", "300", "--heads-batch", "4"])
    assert rc == 0
    return out


def test_budget_calibration_hits_the_target_and_stores_static_ratios(calibrated):
    model = trimkit.load_checkpoint(calibrated)
    rec = model.meta["calibration"]
    assert rec["data"] == "easyvqa" and rec["samples"] == 200 and rec["seed"] == 0 and rec["target"] == 0.5
    assert abs(rec["validation"]["adaptive"]["flops_ratio"] - 0.5) <= 0.01
    assert abs(rec["holdout"]["adaptive"]["flops_ratio"] - 0.5) <= 0.05  # held-out questions
    assert abs(rec["holdout"]["static"]["flops_ratio"] - rec["holdout"]["adaptive"]["flops_ratio"]) <= 0.05
    assert model.trim.static_keep_ratios and len(model.trim.static_keep_ratios) == len(model.token_trimmers)
    assert model.trim.token_threshold == pytest.approx(rec["threshold_offset"])  # base thresholds were 0
    # the head keep rates `export --heads auto` reads: one per attention module, measured at these thresholds
    assert rec["heads_batch"] == model.trim.head_keep_batch == 4  # the rates are planned for a serving batch of 4
    model.head_impl = "mask"
    rates = model.trim.head_batch_keep
    assert [len(r) for r in rates] == [len(p) for p in model.heads_gathered()]
    assert all(0.0 < r <= 1.0 for layer in rates for r in layer)


def test_head_rates_grow_with_the_serving_batch(pruning_ckpt):
    """At batch 1 a module's rate is a sample's own kept fraction of its heads; a larger batch keeps the union of
    its samples' heads, so the rates never fall as the (nested) batches grow."""
    model = trimkit.load_checkpoint(pruning_ckpt)
    split = load_dataset("easyvqa", tokenizer=model.tokenizer, labels=model.labels,
                         image_size=model.config.image_size).val
    profiles = {b: adaptive_profile(model, split, samples=120, batch_size=48, head_batch=b) for b in (1, 2, 8)}
    one, c = profiles[1], model.config
    for ti, layer in enumerate(one["head_batch_keep"]):
        depth = model.trim.first_trimmed_layer + ti
        n = [c.layer_spec(depth, m).num_heads for m, _ in c.attention_modules(depth)]
        assert layer == pytest.approx([h / k for h, k in zip(one["heads"][ti], n)], abs=1e-4)
    for small, large in ((profiles[1], profiles[2]), (profiles[2], profiles[8])):
        for a, b in zip(small["head_batch_keep"], large["head_batch_keep"]):
            assert all(x <= y + 1e-9 for x, y in zip(a, b))
    assert profiles[8]["head_batch_keep"] != one["head_batch_keep"]  # the union is visible on this model
    with pytest.raises(ValueError, match="head_batch"):
        adaptive_profile(model, split, samples=8, head_batch=0)


@pytest.mark.slow  # re-measures head rates and re-exports: ~15 s
def test_calibrate_heads_replans_auto_for_a_serving_batch(pruning_ckpt, tmp_path, capsys):
    out = tmp_path / "b1.pt"
    assert main(["calibrate", "heads", str(pruning_ckpt), "--heads-batch", "1", "--samples", "48",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "--heads auto planned for batch 1" in printed and "heads: gathered in" in printed
    before, after = trimkit.load_checkpoint(pruning_ckpt), trimkit.load_checkpoint(out)
    assert after.trim.head_keep_batch == 1 and after.trim.thresholds(0) == before.trim.thresholds(0)
    split = load_dataset("easyvqa", tokenizer=before.tokenizer, labels=before.labels,
                         image_size=before.config.image_size).val
    assert after.trim.head_batch_keep == adaptive_profile(before, split, samples=48, head_batch=1)["head_batch_keep"]
    rec = after.meta["heads_calibration"]
    after.head_impl = "auto"
    assert rec["heads_batch"] == 1 and rec["plan"] == after.heads_plan() and rec["before"] is None
    assert "a batch of 1 keeps" in heads_line(after)
    # planned again for batch 8: the old plan is shown beside the new one and recorded
    again = tmp_path / "b8.pt"
    assert main(["calibrate", "heads", str(out), "--heads-batch", "8", "--samples", "48", "--out", str(again)]) == 0
    printed = " ".join(capsys.readouterr().out.split())  # the console wraps long lines
    assert "(was gathered in" in printed and "at batch 1)" in printed
    rec8 = trimkit.load_checkpoint(again).meta["heads_calibration"]
    assert rec8["before"] == {"heads_batch": 1, "plan": rec["plan"]} and rec8["heads_batch"] == 8
    # a budget calibration moves the thresholds: the heads record of the old ones goes, its own record stays
    assert main(["calibrate", "budget", str(again), "--target", "0.6", "--samples", "64", "--holdout", "64",
                 "--out", str(tmp_path / "cal.pt")]) == 0
    cal = trimkit.load_checkpoint(tmp_path / "cal.pt")
    assert "heads_calibration" not in cal.meta and cal.trim.head_keep_batch == 8  # the plan's batch carries over
    capsys.readouterr()
    # bad input: one line, exit 2, nothing written
    no_heads = tmp_path / "no-heads.pt"
    before.trim = dataclasses.replace(before.trim, head_trimming=False)
    trimkit.save_checkpoint(before, no_heads)
    for src, args, msg in ((pruning_ckpt, ["--heads-batch", "0"], "must be positive"),
                           (pruning_ckpt, ["--heads-batch", "5000"], "1-4096"),
                           (pruning_ckpt, ["--heads-batch", "200", "--samples", "120"], "more than the 120 questions"),
                           (no_heads, ["--heads-batch", "1"], "trims no heads")):
        assert main(["calibrate", "heads", str(src), *args, "--out", str(tmp_path / "x.pt")]) == 2
        err = capsys.readouterr().err
        assert msg in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "x.pt").exists()


def test_inspect_names_the_batch_a_heads_plan_is_for():
    from trimkit.contract import META_CONFIG
    from trimkit.inspect import _heads_summary

    cfg = {"head_impl": "auto", "heads_gathered": ["gm", "-m"],
           "trim_config": {"head_batch_keep": [[0.5, 1.0], [1.0, 1.0]], "head_keep_batch": 1}}
    assert _heads_summary({META_CONFIG: json.dumps(cfg)}) == (
        "auto: gathered in 1 of 3 trimmed attention modules (planned for batch 1)")
    cfg["trim_config"] = {"head_batch_keep": None}  # no rates: every module masked, no batch to name
    assert _heads_summary({META_CONFIG: json.dumps(cfg)}) == "auto: gathered in 1 of 3 trimmed attention modules"


def test_batch_keep_fraction_is_the_union_per_group():
    mask = torch.tensor([[1, 0, 0, 0], [0, 1, 0, 0], [1, 0, 0, 0]] * 3 + [[0, 0, 0, 1]], dtype=torch.float32)
    # groups of 8 rows: rows 0-7 keep heads {0, 1} (2 of 4), rows 8-9 keep {0, 3} (2 of 4)
    assert batch_keep_fraction(mask) == (1.0, 2)
    assert batch_keep_fraction(mask, group=1) == (2.5, 10)


def test_calibrated_static_counts_depend_on_shape_only(calibrated):
    """The calibrated keep ratios drive static mode: the counts follow the input's shape, never its values (the
    static graph's TopK K reads shapes only: `test_static_counts_depend_on_shape_only` on the exported one)."""
    model = trimkit.load_checkpoint(calibrated).eval()
    counts = []
    with torch.no_grad():
        for seed in (0, 1):
            pv, ids, mask = sample_inputs(model.config, 3, 12, seed=seed, ragged=False)
            counts.append(model(pv, ids, mask, mode="static").keep_counts)
    assert torch.equal(counts[0], counts[1]) and (counts[0][:, -1, 0] < counts[0].new_tensor(17)).all()


def test_budget_refuses_bad_targets(pruning_ckpt, tmp_path, capsys):
    assert main(["calibrate", "budget", str(pruning_ckpt), "--target", "0", "--out", str(tmp_path / "x.pt")]) == 2
    assert "outside (0, 1]" in capsys.readouterr().err
    assert not (tmp_path / "x.pt").exists()


@pytest.fixture(scope="module")
def int8(exported, tmp_path_factory):
    out = tmp_path_factory.mktemp("int8") / "model.int8.onnx"
    rc = main(["calibrate", "int8", str(exported["adaptive"]), "--ckpt", str(exported["ckpt"]), "--out", str(out),
               "--samples", "64", "--method", "minmax", "--per-channel"])
    assert rc == 0
    return out


def test_int8_graph_has_qdq_around_matmuls_and_none_in_the_trimmers(int8):
    m = onnx.load(str(int8))
    producer = {o: n for n in m.graph.node for o in n.output}
    matmuls = [n for n in m.graph.node if n.op_type in ("MatMul", "Gemm")]
    quantized = [n for n in matmuls if all(producer.get(i) is not None and producer[i].op_type == "DequantizeLinear"
                                           for i in n.input[:2])]
    assert len(quantized) >= 5
    # matmul outputs stay float (no requantization before the bias Add)
    assert not [n for n in m.graph.node if n.op_type == "QuantizeLinear" and producer.get(n.input[0]) in matmuls]
    trim = trimmer_nodes(m)
    assert trim
    for n in m.graph.node:
        if n.name in trim:
            assert n.op_type not in ("QuantizeLinear", "DequantizeLinear")
            assert not any(producer.get(i) is not None and producer[i].op_type == "DequantizeLinear"
                           for i in n.input), n.name
    for n in m.graph.node:  # the decision ops read float tensors
        if n.op_type in ("TopK", "Greater"):
            assert all(producer.get(i) is None or producer[i].op_type != "DequantizeLinear" for i in n.input)
    meta = {p.key: p.value for p in m.metadata_props}
    calib = json.loads(meta["trimkit_calibration"])
    assert calib["data"] == "easyvqa" and calib["samples"] == 64 and calib["method"] == "minmax" and calib["per_channel"]
    assert json.loads(meta["trimkit_config"])["precision"] == "int8"


def test_int8_graph_runs_at_unseen_shapes(int8, exported):
    model = trimkit.load_checkpoint(exported["ckpt"])
    sess = ort_session(int8)
    for b, n in ((1, 3), (4, 9), (7, 16)):
        pv, ids, mask = (t.numpy() for t in sample_inputs(model.config, b, n, seed=b))
        logits, counts = sess.run(None, {"pixel_values": pv, "input_ids": ids, "attention_mask": mask})
        assert logits.shape == (b, model.config.num_labels) and np.isfinite(logits).all()
        assert counts.shape == (b, len(model.token_trimmers), 2)


def test_verify_runs_on_int8_with_its_own_tolerances(int8, exported, tmp_path):
    js = tmp_path / "v.json"
    rc = main(["verify", str(exported["ckpt"]), str(int8), "--samples", "32", "--batch-sizes", "2", "--text-lens", "8",
               "--repeats", "2", "--json", str(js)])
    report = json.loads(js.read_text())
    assert rc == (0 if report["passed"] else 1)
    assert report["numerics"]["atol"] == 0.25 and report["numerics"]["rtol"] == 0.1
    agreement = next(c for c in report["checks"] if c["name"] == "keep_counts_agreement")
    assert agreement["threshold"] == 0.98


def test_uint8_activations_for_onnx_runtime_cpu(exported, tmp_path, capsys):
    """--activations uint8: asymmetric activations (ONNX Runtime's native x86 form), recorded in the metadata;
    it runs in ONNX Runtime, and a TensorRT export refuses it before looking for TensorRT."""
    out = tmp_path / "u8.onnx"
    assert main(["calibrate", "int8", str(exported["adaptive"]), "--ckpt", str(exported["ckpt"]), "--out", str(out),
                 "--samples", "32", "--activations", "uint8"]) == 0
    m = onnx.load(str(out))
    inits = {i.name: i for i in m.graph.initializer}
    zero_points = [inits[n.input[2]] for n in m.graph.node if n.op_type == "QuantizeLinear" and n.input[2] in inits]
    assert zero_points and all(z.data_type == onnx.TensorProto.UINT8 for z in zero_points)
    meta = {p.key: p.value for p in m.metadata_props}
    assert json.loads(meta["trimkit_calibration"])["activations"] == "uint8 asymmetric"
    model = trimkit.load_checkpoint(exported["ckpt"])
    pv, ids, mask = (t.numpy() for t in sample_inputs(model.config, 3, 7, seed=1))
    logits, _ = ort_session(out).run(None, {"pixel_values": pv, "input_ids": ids, "attention_mask": mask})
    assert np.isfinite(logits).all()
    js = tmp_path / "u8.json"  # verify runs it in ONNX Runtime (only TensorRT refuses the form)
    assert main(["verify", str(exported["ckpt"]), str(out), "--samples", "16", "--batch-sizes", "2", "--text-lens", "8",
                 "--repeats", "2", "--json", str(js)]) in (0, 1)
    assert json.loads(js.read_text())["numerics"]["samples"] == 16
    capsys.readouterr()
    assert main(["export", str(out), "--format", "trt", "--out", str(tmp_path / "u8.plan"),
                 "--profile", "batch=1:2:4", "--profile", "text=2:8:16"]) == 2
    assert "uint8" in capsys.readouterr().err and not (tmp_path / "u8.plan").exists()


def test_int8_scope_mlp_quantizes_only_the_feed_forward_matmuls(exported, tmp_path):
    """--scope mlp: Q/DQ reach exactly the feed-forward fc1/fc2 matmuls; attention projections, pooler and
    classifier stay float; the scope is recorded."""
    src = onnx.load(str(exported["adaptive"]))
    every, _ = quantizable_matmuls(src)
    mlp, _ = quantizable_matmuls(src, "mlp")
    attn, _ = quantizable_matmuls(src, "attention")
    assert mlp and attn and not set(mlp) & set(attn) and set(mlp) | set(attn) < set(every)
    out = tmp_path / "mlp.onnx"
    assert main(["calibrate", "int8", str(exported["adaptive"]), "--ckpt", str(exported["ckpt"]), "--out", str(out),
                 "--samples", "16", "--scope", "mlp"]) == 0
    m = onnx.load(str(out))
    producer = {o: n for n in m.graph.node for o in n.output}
    quantized = [n for n in m.graph.node if n.op_type in ("MatMul", "Gemm")
                 and producer.get(n.input[0]) is not None and producer[n.input[0]].op_type == "DequantizeLinear"]
    assert sorted(n.name for n in quantized) == sorted(mlp)
    assert all("layers.Mlp/" in _scopes(n) for n in quantized)
    meta = {p.key: p.value for p in m.metadata_props}
    assert json.loads(meta["trimkit_calibration"])["scope"] == "mlp"


@pytest.mark.parametrize("method", ["percentile", "entropy"])
def test_int8_histogram_methods_take_data_dependent_shapes(exported, tmp_path, method):
    """Histogram calibration over batches whose pruned token counts differ (ragged intermediate tensors)."""
    out = tmp_path / f"{method}.onnx"
    assert main(["calibrate", "int8", str(exported["adaptive"]), "--ckpt", str(exported["ckpt"]), "--out", str(out),
                 "--samples", "48", "--batch-size", "8", "--method", method, "--scope", "mlp"]) == 0
    m = onnx.load(str(out))
    assert json.loads({p.key: p.value for p in m.metadata_props}["trimkit_calibration"])["method"] == method
    assert any(n.op_type == "QuantizeLinear" for n in m.graph.node)


def test_smoothing_keeps_the_float_function_and_feeds_int8(exported, tmp_path):
    """SmoothQuant rescaling is exact in float (same logits and keep_counts); LayerNorm-fed matmuls fold, the
    others get one Mul; the trimmers' nodes are untouched; `--smooth` records alpha and still quantizes."""
    from trimkit.calibration.int8 import calibration_batches
    from trimkit.calibration.smooth import smooth_graph

    src = onnx.load(str(exported["adaptive"]))
    model = trimkit.load_checkpoint(exported["ckpt"])
    names, _ = quantizable_matmuls(src)
    batches = calibration_batches(model, "easyvqa", 32, 16, 0)
    sm = onnx.load(str(exported["adaptive"]))
    res = smooth_graph(sm, names, batches, 0.8)
    assert res.folded > 0 and res.inserted > 0 and res.tensors == res.folded + res.inserted
    onnx.checker.check_model(sm)
    path = tmp_path / "smoothed.onnx"
    onnx.save(sm, str(path))
    changed = {i.name for i in sm.graph.initializer} ^ {i.name for i in src.graph.initializer}
    trim = trimmer_nodes(src)
    assert all(n.name not in trim or list(n.input) == list(o.input) for n, o in zip(
        [n for n in sm.graph.node if not n.name.endswith("_smooth")], src.graph.node))
    assert changed and all("_smooth" in c for c in changed)
    a, b = ort_session(exported["adaptive"]), ort_session(path)
    for bs, tl in ((1, 5), (4, 9), (7, 16)):
        pv, ids, mask = (t.numpy() for t in sample_inputs(model.config, bs, tl, seed=bs))
        feed = {"pixel_values": pv, "input_ids": ids, "attention_mask": mask}
        (la, ka), (lb, kb) = a.run(None, feed), b.run(None, feed)
        np.testing.assert_allclose(lb, la, atol=1e-4, rtol=1e-4)
        assert np.array_equal(ka, kb)
    with pytest.raises(ValueError, match="alpha"):
        smooth_graph(onnx.load(str(exported["adaptive"])), names, batches, 0.0)
    ln_only = onnx.load(str(exported["adaptive"]))  # --smooth-where layernorm: the folds alone, no Mul
    r = smooth_graph(ln_only, names, batches, 0.8, where="layernorm")
    assert (r.folded, r.inserted) == (res.folded, 0) and len(ln_only.graph.node) == len(src.graph.node)
    out = tmp_path / "sq.onnx"
    assert main(["calibrate", "int8", str(exported["adaptive"]), "--ckpt", str(exported["ckpt"]), "--out", str(out),
                 "--samples", "32", "--smooth", "0.8", "--smooth-where", "all"]) == 0
    q = onnx.load(str(out))
    calib = json.loads({p.key: p.value for p in q.metadata_props}["trimkit_calibration"])
    assert calib["smooth_alpha"] == 0.8 and calib["smooth_where"] == "all"
    assert calib["smoothed"]["tensors"] == res.tensors
    assert sum(n.op_type == "QuantizeLinear" for n in q.graph.node) >= len(names)
    assert main(["calibrate", "int8", str(exported["adaptive"]), "--ckpt", str(exported["ckpt"]), "--out",
                 str(tmp_path / "bad.onnx"), "--smooth", "1.5"]) == 2
    assert not (tmp_path / "bad.onnx").exists()


def test_int8_refuses_bad_input(exported, tmp_path, capsys):
    out = tmp_path / "q.onnx"
    assert main(["calibrate", "int8", str(exported["adaptive"]), "--ckpt", str(exported["ckpt"]), "--out", str(out),
                 "--samples", "0"]) == 2
    assert main(["calibrate", "int8", str(exported["ckpt"]), "--ckpt", str(exported["ckpt"]), "--out", str(out)]) == 2
    assert "expected a trimkit .onnx" in capsys.readouterr().err
    assert not out.exists()


def test_per_layer_offsets_hit_the_target(pruning_ckpt, tmp_path):
    out = tmp_path / "per_layer.pt"
    assert main(["calibrate", "budget", str(pruning_ckpt), "--target", "0.5", "--out", str(out), "--samples", "200",
                 "--holdout", "300", "--per-layer"]) == 0
    model = trimkit.load_checkpoint(out)
    rec = model.meta["calibration"]
    assert rec["method"] == "per-layer threshold offsets" and rec["threshold_offset"] is None
    offsets = model.trim.layer_threshold_offsets
    assert len(offsets) == len(model.token_trimmers) == len(rec["layer_offsets"]) and len(set(offsets)) > 1
    assert abs(rec["validation"]["adaptive"]["flops_ratio"] - 0.5) <= 0.01
    # per-layer offsets in an export: tests/export/test_packed.py::test_attention_runs_graph_matches_pytorch_...
