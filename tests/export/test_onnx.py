"""The ONNX contract on tiny exports, checked with ONNX Runtime at shapes never traced."""

import dataclasses
import json

import numpy as np
import onnx
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import trimkit
from trimkit.cli import main
from trimkit.contract import TRIM_MODE_OF, export_metadata
from trimkit.errors import BadInputError, CheckFailedError
from trimkit.export.inputs import sample_inputs
from trimkit.export.onnx import parse_keep_ratios, to_onnx
from trimkit.runtime.onnxruntime import ort_session


def ops(path):
    return {n.op_type for n in onnx.load(str(path)).graph.node}


def run_ort(sess, pv, ids, mask):
    return sess.run(["logits", "keep_counts"], {"pixel_values": pv.numpy(), "input_ids": ids.numpy(),
                                                "attention_mask": mask.numpy()})


def test_contract(exported):
    m = onnx.load(str(exported["adaptive"]))
    dims = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in [*m.graph.input, *m.graph.output]}
    types = {v.name: v.type.tensor_type.elem_type for v in [*m.graph.input, *m.graph.output]}
    assert [i.name for i in m.graph.input] == ["pixel_values", "input_ids", "attention_mask"]
    assert [o.name for o in m.graph.output] == ["logits", "keep_counts"]
    assert dims["pixel_values"] == ["batch", 3, 32, 32] and dims["input_ids"] == ["batch", "text_len"]
    assert dims["logits"] == ["batch", 13] and dims["keep_counts"] == ["batch", 2, 2]
    assert types["pixel_values"] == onnx.TensorProto.FLOAT and types["input_ids"] == onnx.TensorProto.INT64
    assert types["attention_mask"] == onnx.TensorProto.INT64 and types["keep_counts"] == onnx.TensorProto.INT64
    meta = {p.key: p.value for p in m.metadata_props}
    assert meta["trimkit_version"] == trimkit.__version__ and meta["trimkit_mode"] == "adaptive"
    assert json.loads(meta["labels"])[0] == "circle"
    assert json.loads(meta["trimkit_config"])["model_config"]["hidden_size"] == 64
    assert json.loads(meta["trimkit_tokenizer"])["vocab"][:3] == ["[PAD]", "[UNK]", "[CLS]"]
    assert not [f for f in exported["adaptive"].parent.iterdir() if f.suffix == ".data"]  # one file


def test_selection_ops_in_adaptive_not_in_full(exported):
    """The default (packed) adaptive graph selects tokens by an order-preserving compaction (NonZero + Gather),
    with no TopK; the full graph selects nothing. (The padded layout's TopK: tests/export/test_packed.py.)"""
    adaptive, full = ops(exported["adaptive"]), ops(exported["full"])
    assert {"NonZero", "Gather"} <= adaptive and "TopK" not in adaptive
    assert not {"TopK", "NonZero", "GatherElements", "GatherND"} & full


def test_default_opset_has_one_gelu_node(exported):
    """Opset 20: GELU is one Gelu node, not Div/Erf/Add/Mul/Mul (each node costs dispatch time at batch 1)."""
    m = onnx.load(str(exported["full"]))
    assert {o.domain or "ai.onnx": o.version for o in m.opset_import}["ai.onnx"] == 20
    assert "Gelu" in ops(exported["full"]) and "Erf" not in ops(exported["full"])


def test_auto_heads_plan_follows_rates(exported, tmp_path):
    """The default `--heads auto` without measured rates is the masked-heads graph; `--heads gather` gathers every
    module whatever the rates say; rates that do not fit the model are refused before tracing. (An export that
    gathers some modules is the attention-runs export's, tests/export/test_packed.py.)"""
    model = trimkit.load_checkpoint(exported["ckpt"])
    meta = json.loads(dict((p.key, p.value) for p in onnx.load(str(exported["adaptive"])).metadata_props)[
        "trimkit_config"])
    assert meta["head_impl"] == "auto" and set("".join(meta["heads_gathered"])) == {"m"}
    n = [len(layer) for layer in meta["heads_gathered"]]
    model.trim = dataclasses.replace(model.trim, head_batch_keep=[[(0.4, 0.9)[j % 2] for j in range(k)] for k in n])
    model.head_impl = "auto"
    assert model.heads_plan() == ["".join("gm"[j % 2] for j in range(k)) for k in n]
    model.head_impl = "gather"  # `--heads gather`: every module, whatever the rates say
    meta = json.loads(export_metadata(model, "adaptive", "fp32")["trimkit_config"])
    assert meta["head_impl"] == "gather" and set("".join(meta["heads_gathered"])) == {"g"}
    model.trim = dataclasses.replace(model.trim, head_batch_keep=[[0.5]])
    with pytest.raises(BadInputError, match="head keep rates"):
        to_onnx(model, tmp_path / "bad.onnx", mode="adaptive")
    assert not (tmp_path / "bad.onnx").exists()


@pytest.mark.parametrize("mode", ["adaptive", "full", "static"])
def test_unseen_shapes_match_pytorch(exported, mode):
    model = trimkit.load_checkpoint(exported["ckpt"])
    sess = ort_session(exported[mode])
    for seed, (b, n) in enumerate([(1, 3), (2, 16), (5, 9), (7, 2), (4, 13)]):
        pv, ids, mask = sample_inputs(model.config, b, n, seed=100 + seed)
        logits, counts = run_ort(sess, pv, ids, mask)
        with torch.no_grad():
            ref = model(pv, ids, mask, mode=TRIM_MODE_OF[mode])
        np.testing.assert_allclose(logits, ref.logits.numpy(), atol=1e-4, rtol=1e-3)
        np.testing.assert_array_equal(counts, ref.keep_counts.numpy())
        if mode == "adaptive" and b > 1:
            assert counts[:, -1, 0].min() < 17  # pruning happened on these inputs


def topk_k_reads_data(model: onnx.ModelProto) -> list[bool]:
    """For each TopK: does its K depend on input *values* (not only on input shapes)?"""
    producer = {o: n for n in model.graph.node for o in n.output}
    inputs = {i.name for i in model.graph.input}
    result = []
    for node in model.graph.node:
        if node.op_type != "TopK":
            continue
        stack, seen, dep = [node.input[1]], set(), False
        while stack and not dep:
            t = stack.pop()
            if t in seen or not t:
                continue
            seen.add(t)
            if t in inputs:
                dep = True
            elif t in producer and producer[t].op_type != "Shape":  # a Shape reads shapes, not values
                stack.extend(producer[t].input)
        result.append(dep)
    return result


def test_static_counts_depend_on_shape_only(exported):
    """The static graph's TopK K reads the input's shape only (no compaction either), and its counts never move
    with the input's values."""
    graph = onnx.load(str(exported["static"]))
    flags = topk_k_reads_data(graph)
    assert flags and not any(flags) and "NonZero" not in {n.op_type for n in graph.graph.node}
    sess = ort_session(exported["static"])
    model = trimkit.load_checkpoint(exported["ckpt"])
    seen = set()
    for seed in range(4):
        pv, ids, mask = sample_inputs(model.config, 3, 8, seed=seed, ragged=False)
        _, counts = run_ort(sess, pv * (seed + 1), ids, mask)
        seen.add(counts.tobytes())
    assert len(seen) == 1


_SESS = {}


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 10_000), batch=st.integers(2, 6), text_len=st.integers(3, 16))
def test_batch_invariance_in_onnx_runtime(exported, seed, batch, text_len):
    sess = _SESS.setdefault("s", ort_session(exported["adaptive"]))
    config = trimkit.load_checkpoint(exported["ckpt"]).config if "c" not in _SESS else _SESS["c"]
    _SESS["c"] = config
    pv, ids, mask = sample_inputs(config, batch, text_len, seed=seed)
    logits, counts = run_ort(sess, pv, ids, mask)
    for i in range(batch):
        n = int(mask[i].sum())
        one_logits, one_counts = run_ort(sess, pv[i:i + 1], ids[i:i + 1, :n], mask[i:i + 1, :n])
        np.testing.assert_allclose(logits[i:i + 1], one_logits, atol=2e-5, rtol=1e-4)
        np.testing.assert_array_equal(counts[i:i + 1], one_counts)


def test_failed_check_leaves_no_file(exported, tmp_path, monkeypatch):
    import trimkit.export.onnx as mod

    def failing(*a, **k):
        return {"passed": False, "tolerance": {"atol": 0}, "shapes": [
            {"batch": 1, "text_len": 4, "max_abs_err": 1.0, "logits_close": False, "keep_counts_equal": True}]}

    monkeypatch.setattr(mod, "check_onnx", failing)
    out = tmp_path / "bad.onnx"
    with pytest.raises(CheckFailedError, match="does not match PyTorch"):
        to_onnx(exported["ckpt"], out, mode="full")
    assert list(tmp_path.iterdir()) == []


def test_refusals(exported, tmp_path):
    with pytest.raises(BadInputError, match="already exists"):
        to_onnx(exported["ckpt"], exported["full"], mode="full")
    with pytest.raises(BadInputError, match="keep ratios"):
        model = trimkit.load_checkpoint(exported["ckpt"])
        import dataclasses
        model.trim = dataclasses.replace(model.trim, static_keep_ratios=None)
        to_onnx(model, tmp_path / "s.onnx", mode="static")
    assert parse_keep_ratios("0.5,0.7", 2) == [[0.5, 0.7], [0.5, 0.7]]
    with pytest.raises(BadInputError):
        parse_keep_ratios("0.5,0.7;0.1", 2)
    with pytest.raises(BadInputError):
        parse_keep_ratios("1.5,0.7", 1)


def test_cli_export_ort_optimized_and_inspect(exported, tmp_path, capsys):
    out = tmp_path / "opt.onnx"
    assert main(["export", str(exported["ckpt"]), "--format", "onnx", "--mode", "full", "--ort-optimize",
                 "--out", str(out)]) == 0
    assert out.exists()
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert "ort_optimized" in json.loads(meta["trimkit_config"])
    assert main(["inspect", str(out)]) == 0
    assert "trimkit_mode" in capsys.readouterr().out
    assert main(["export", str(exported["ckpt"]), "--out", str(out)]) == 2  # exists, no --force


@pytest.mark.slow  # its own fp16 trace: ~30 s
def test_fp16_graph_keeps_fp32_io(pruning_ckpt, tmp_path):
    """`export --precision fp16`: fp16 weights inside, fp32 inputs and outputs (the export's check passes)."""
    out = tmp_path / "h.onnx"
    assert main(["export", str(pruning_ckpt), "--precision", "fp16", "--out", str(out)]) == 0
    m = onnx.load(str(out))
    io = {v.name: v.type.tensor_type.elem_type for v in [*m.graph.input, *m.graph.output]}
    assert io["pixel_values"] == onnx.TensorProto.FLOAT and io["logits"] == onnx.TensorProto.FLOAT
    assert {i.data_type for i in m.graph.initializer} & {onnx.TensorProto.FLOAT16}
    assert json.loads({p.key: p.value for p in m.metadata_props}["trimkit_config"])["precision"] == "fp16"


def test_trimmer_node_budget(exported):
    """The adaptive graph's extra nodes over `full` stay within a per-trimmer budget: on CPU at batch 1
    every node costs dispatch time whatever its size (a 1,913-node graph made keep-everything +14%)."""
    from trimkit.checkpoint import load_checkpoint

    model = load_checkpoint(exported["ckpt"])
    n_tok = 2 * len(model.token_trimmers)
    n_head = sum(len(h) for h in model.head_trimmers)
    extra = len(onnx.load(str(exported["adaptive"])).graph.node) - len(onnx.load(str(exported["full"])).graph.node)
    # the packed layout adds its own per-stream (rows, grid reads, grid scores) and per-module (a Gather to the
    # padded grid and one back) nodes: they buy the padding-free token-wise work at batch > 1 (the tiny model
    # has 212 extra nodes: 4 token and 6 head trimmers; a depth's head trimmers share one projection and gate)
    packing = 6 * n_tok + 6 * n_head
    assert 0 < extra <= 33 * n_tok + 8 * n_head + packing, (extra, n_tok, n_head)
