"""The packed layout in ONNX: same results as PyTorch, batch invariant, and the executed work is per sample."""

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
from trimkit.export.inputs import sample_inputs
from trimkit.export.onnx import ort_feed, ort_session, to_onnx
from trimkit.factory import new_model
from trimkit.inspect import describe_onnx

from ..conftest import alternating_rates, randomize_trimmers


def metadata(path):
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


def test_default_adaptive_export_is_packed(exported):
    meta = metadata(exported["adaptive"])
    assert meta["trimkit_layout"] == "packed" and json.loads(meta["trimkit_config"])["layout"] == "packed"
    assert metadata(exported["full"])["trimkit_layout"] == "padded"  # nothing to pack without pruning
    assert describe_onnx(exported["adaptive"])["layout"] == "packed"
    assert describe_onnx(exported["adaptive"])["attention_runs"] is None  # 17 image tokens: one view per batch
    assert "NonZero" in {n.op_type for n in onnx.load(str(exported["adaptive"])).graph.node}


_CACHE = {}


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 10_000), batch=st.integers(2, 7), text_len=st.integers(2, 16))
def test_packed_and_padded_graphs_match_pytorch_and_batch_of_one(exported, seed, batch, text_len):
    """Random batch compositions at batch sizes and text lengths never traced (the export traced batch 2,
    text length 6): both layouts' graphs give the logits and keep counts of PyTorch's packed and padded
    `prune` runs, and every sample its batch-of-one run."""
    if not _CACHE:
        _CACHE["sess"] = {lay: ort_session(exported[name]) for lay, name in (("packed", "adaptive"),
                                                                             ("padded", "padded"))}
        _CACHE["model"] = trimkit.load_checkpoint(exported["ckpt"])
    model = _CACHE["model"]
    pv, ids, mask = sample_inputs(model.config, batch, text_len, seed=seed)
    refs = {}
    for layout in ("packed", "padded"):
        model.layout, model.head_impl = layout, "mask"
        with torch.no_grad():
            refs[layout] = model(pv, ids, mask, mode="prune")
    for graph, sess in _CACHE["sess"].items():
        logits, counts = sess.run(["logits", "keep_counts"], ort_feed(pv, ids, mask))
        for layout, ref in refs.items():
            why = f"{graph} graph vs PyTorch {layout}"
            np.testing.assert_allclose(logits, ref.logits.numpy(), atol=1e-4, rtol=1e-3, err_msg=why)
            np.testing.assert_array_equal(counts, ref.keep_counts.numpy(), err_msg=why)
        for i in range(batch):
            n = int(mask[i].sum())
            one_logits, one_counts = sess.run(["logits", "keep_counts"],
                                              ort_feed(pv[i:i + 1], ids[i:i + 1, :n], mask[i:i + 1, :n]))
            why = f"{graph} graph, sample {i} vs its batch of one"
            np.testing.assert_allclose(logits[i:i + 1], one_logits, atol=2e-5, rtol=1e-4, err_msg=why)
            np.testing.assert_array_equal(counts[i:i + 1], one_counts, err_msg=why)


@pytest.mark.slow  # its own export of a 65-token conv-stem model: ~45 s; the packed property tests stay in make test
def test_attention_runs_graph_matches_pytorch_and_batch_of_one(tmp_path, capsys):
    """A geometry whose packed vision stream runs its self-attention products in runs of samples (65 image
    tokens at width 64): the graph sorts each trimmed grid's samples once (one TopK over the batch per packing
    of that stream), matches PyTorch at batch 1 (an empty first run) and on mixed batches, and every sample its
    batch-of-one run. The same model (one export) also carries a conv stem, a classifier reading the pooled
    states' product, per-layer threshold offsets and `--heads auto` gathering every other attention module
    (the union over the batch, picked with no TopK), which the export's log, its metadata and `inspect`
    say, and which verify holds against the checkpoint's rates."""
    model = randomize_trimmers(new_model("tiny", "easyvqa", seed=11, image_size=64, stem="conv", pool_product=True),
                               seed=11)
    model.trim = dataclasses.replace(model.trim, head_batch_keep=alternating_rates(model),
                                     layer_threshold_offsets=[0.4, -0.4])
    probe = sample_inputs(model.config, 8, 9, seed=3)
    with torch.no_grad():
        offset = model(*probe, mode="prune").keep_counts
        model.trim = dataclasses.replace(model.trim, layer_threshold_offsets=None)
        plain = model(*probe, mode="prune").keep_counts
        model.trim = dataclasses.replace(model.trim, layer_threshold_offsets=[0.4, -0.4])
    assert not torch.equal(offset, plain)  # the offsets move decisions: the checks below would see them lost
    lines = []
    res = to_onnx(model, tmp_path / "runs.onnx", mode="adaptive", log=lines.append)
    assert res.check["passed"] and [s["batch"] for s in res.check["shapes"]][:2] == [1, 3]
    ops = [n.op_type for n in onnx.load(str(res.path)).graph.node]
    # one sort per vision packing; none to select tokens or heads
    assert ops.count("TopK") == len(model.token_trimmers)
    assert "Conv" in ops
    config = json.loads(metadata(res.path)["trimkit_config"])
    model.head_impl = "auto"
    assert config["attention_runs"] == [2, 1] and config["heads_gathered"] == model.heads_plan() == ["gm", "mgmg"]
    assert config["trim_config"]["layer_threshold_offsets"] == [0.4, -0.4]
    assert describe_onnx(res.path)["attention_runs"] == "image in 2 runs"
    assert any(line.startswith("heads: gathered in 3 of 6") for line in lines)
    assert main(["inspect", str(res.path)]) == 0
    assert "heads auto: gathered in 3 of 6 trimmed attention modules" in capsys.readouterr().out
    # a checkpoint with other head keep rates is not the artifact's source: verify refuses it before running
    saved, other = model.trim, tmp_path / "other.pt"
    model.trim = dataclasses.replace(saved, head_batch_keep=[[0.9] * 2, [0.9] * 4])
    trimkit.save_checkpoint(model, other)
    model.trim = saved
    assert main(["verify", str(other), str(res.path), "--samples", "4", "--repeats", "1"]) == 2
    assert "head_batch_keep" in capsys.readouterr().err
    sess = ort_session(res.path)
    for batch, seed in ((5, 1), (7, 2)):
        pv, ids, mask = sample_inputs(model.config, batch, 9, seed=seed)
        logits, counts = sess.run(["logits", "keep_counts"], ort_feed(pv, ids, mask))
        with torch.no_grad():
            ref = model(pv, ids, mask, mode="prune")
        assert len(set(counts[:, -1, 0].tolist())) > 1  # the runs really differ in width
        np.testing.assert_allclose(logits, ref.logits.numpy(), atol=1e-4, rtol=1e-3)
        np.testing.assert_array_equal(counts, ref.keep_counts.numpy())
        for i in range(batch):
            n = int(mask[i].sum())
            one = sess.run(["logits"], ort_feed(pv[i:i + 1], ids[i:i + 1, :n], mask[i:i + 1, :n]))[0]
            np.testing.assert_allclose(logits[i:i + 1], one, atol=2e-5, rtol=1e-4)


def matmul_flops(path, feeds, tmp_path) -> list[dict[str, float]]:
    """Per feed, the FLOPs of the graph's MatMul/Gemm nodes from the tensor shapes they really see at run time
    (every non-constant operand made a graph output): "rows" for products with a 2-D constant weight (the
    token-wise work: projections, FFN, trimmer and classifier layers), "other" for the rest (attention
    products, per-sample gathered weights)."""
    m = onnx.load(str(path))
    consts = {i.name: tuple(i.dims) for i in m.graph.initializer}
    consts.update({n.output[0]: tuple(n.attribute[0].t.dims) for n in m.graph.node if n.op_type == "Constant"})
    nodes = [n for n in m.graph.node if n.op_type in ("MatMul", "Gemm")]
    have = {o.name for o in m.graph.output}
    for n in nodes:
        for name in n.input[:2]:
            if name not in consts and name not in have:
                m.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
                have.add(name)
    probe = tmp_path / f"{path.stem}.shapes.onnx"
    onnx.save(m, str(probe))
    sess = ort_session(probe)
    names = [o.name for o in sess.get_outputs()]
    out = []
    for feed in feeds:
        shapes = dict(zip(names, (v.shape for v in sess.run(None, feed))))
        shapes.update(consts)
        total = {"rows": 0.0, "other": 0.0}
        for n in nodes:
            a, b = shapes[n.input[0]], shapes[n.input[1]]
            if n.op_type == "Gemm":
                attrs = {x.name: x.i for x in n.attribute}
                mm = a[1] if attrs.get("transA") else a[0]
                kk = a[0] if attrs.get("transA") else a[1]
                nn = b[0] if attrs.get("transB") else b[1]
                batch = 1
            else:
                mm, kk, nn = a[-2], a[-1], b[-1]
                batch = int(np.prod(np.broadcast_shapes(a[:-2], b[:-2]))) if len(a) > 2 or len(b) > 2 else 1
            kind = "rows" if n.input[1] in consts and len(b) == 2 else "other"
            total[kind] += 2.0 * batch * mm * kk * nn
        out.append(total)
    return out


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    """A tiny model whose heads are all kept (so only token counts differ between samples), exported packed
    and padded."""
    root = tmp_path_factory.mktemp("layouts")
    model = randomize_trimmers(new_model("tiny", "easyvqa", seed=7), seed=7)
    model.trim = dataclasses.replace(model.trim, head_threshold=-1e4)
    return model, {lay: to_onnx(model, root / f"{lay}.onnx", mode="adaptive", layout=lay, head_impl="gather").path
                   for lay in ("packed", "padded")}


@pytest.mark.slow
def test_packed_graph_executes_per_sample_work(layouts, tmp_path):
    """On a batch whose samples keep different counts, the packed graph's token-wise MatMuls do exactly the sum
    of the samples' batch-of-one work; the padded graph's do more (every sample at the batch's largest count)."""
    model, paths = layouts
    pv, ids, mask = sample_inputs(model.config, 5, 12, seed=3, ragged=False)
    with torch.no_grad():
        counts = model(pv, ids, mask, mode="prune").keep_counts
    assert counts[:, -1, 0].unique().numel() > 1  # the samples really keep different numbers of tokens
    feeds = [ort_feed(pv, ids, mask)] + [ort_feed(pv[i:i + 1], ids[i:i + 1], mask[i:i + 1]) for i in range(5)]
    packed = matmul_flops(paths["packed"], feeds, tmp_path)
    padded = matmul_flops(paths["padded"], feeds[:1], tmp_path)
    alone = sum(f["rows"] for f in packed[1:])
    assert packed[0]["rows"] == pytest.approx(alone, rel=1e-9)
    assert padded[0]["rows"] > 1.05 * alone
    # and the model's accounting agrees on which artifact executes more
    model.layout = "packed"
    with torch.no_grad():
        mine = float(model(pv, ids, mask, mode="prune").executed_layer_flops.sum())
        model.layout = "padded"
        theirs = float(model(pv, ids, mask, mode="prune").executed_layer_flops.sum())
    assert mine < theirs


@pytest.mark.slow
def test_keep_everything_packed_graph_reproduces_full(exported, tmp_path):
    model = trimkit.load_checkpoint(exported["ckpt"])
    model.trim = dataclasses.replace(model.trim, token_threshold=-1e4, head_threshold=-1e4)
    res = to_onnx(model, tmp_path / "keep.onnx", mode="adaptive", head_impl="gather")
    full, keep = ort_session(exported["full"]), ort_session(res.path)
    pv, ids, mask = sample_inputs(model.config, 4, 9, seed=5)
    a = full.run(["logits"], ort_feed(pv, ids, mask))[0]
    b, counts = keep.run(["logits", "keep_counts"], ort_feed(pv, ids, mask))
    np.testing.assert_allclose(b, a, atol=1e-5, rtol=1e-4)
    assert (counts[:, :, 0] == 17).all()


def test_cli_export_layout_padded(exported, tmp_path, capsys):
    out = tmp_path / "padded.onnx"
    assert main(["export", str(exported["ckpt"]), "--out", str(out), "--layout", "padded"]) == 0
    said = capsys.readouterr().out  # the long trace is announced before it starts, its time after it
    assert 0 <= said.index("tracing the adaptive graph with torch.export") < said.index("exported adaptive graph in")
    assert metadata(out)["trimkit_layout"] == "padded"
    # padded: TopK -> sort (a second TopK) -> Gather per sample; packed: NonZero over the keep masks, no TopK
    ops = {"padded": [n.op_type for n in onnx.load(str(out)).graph.node],
           "packed": [n.op_type for n in onnx.load(str(exported["adaptive"])).graph.node]}
    assert ops["padded"].count("TopK") >= 2 and "GatherElements" in ops["padded"] and "NonZero" not in ops["padded"]
    assert "TopK" not in ops["packed"] and "NonZero" in ops["packed"]
    assert main(["inspect", str(out), "--json", str(tmp_path / "info.json")]) == 0
    assert json.loads((tmp_path / "info.json").read_text())["layout"] == "padded"
    assert main(["export", str(exported["ckpt"]), "--out", str(tmp_path / "x.onnx"), "--layout", "ragged"]) == 2
