"""The exporter's graph clean-ups: each rule removes what it should, nothing else, and values stay bit-for-bit."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from trimkit.export.simplify import simplify

ort = pytest.importorskip("onnxruntime")


def _graph(flat_shape: list) -> onnx.ModelProto:
    """v (N,) -> indices of v > 0 (NonZero -> Transpose -> Squeeze, then Reshape [-1] as index_select does) ->
    rows of x; plus Reshape(m, [-1]) of a 2-D m (a real flatten, which must stay) and a Transpose whose output
    is read twice (must stay)."""
    consts = [numpy_helper.from_array(np.array(v, dtype=np.int64), name)
              for name, v in (("one", [1]), ("flat", flat_shape))]
    nodes = [
        helper.make_node("Greater", ["v", "vzero"], ["pos"]),
        helper.make_node("NonZero", ["pos"], ["nz"]),
        helper.make_node("Transpose", ["nz"], ["nzt"], perm=[1, 0]),
        helper.make_node("Squeeze", ["nzt", "one"], ["idx"]),
        helper.make_node("Reshape", ["idx", "flat"], ["idx1"]),
        helper.make_node("Gather", ["x", "idx1"], ["rows"], axis=0),
        helper.make_node("Reshape", ["m", "flat"], ["mflat"]),
        helper.make_node("Transpose", ["m"], ["mt"], perm=[1, 0]),
        helper.make_node("Add", ["mt", "mt"], ["mt2"]),
    ]
    g = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("v", TensorProto.FLOAT, ["n"]),
         helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3]),
         helper.make_tensor_value_info("m", TensorProto.FLOAT, [2, "k"])],
        [helper.make_tensor_value_info("rows", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("mflat", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("mt2", TensorProto.FLOAT, None)],
        [*consts, numpy_helper.from_array(np.array(0.0, dtype=np.float32), "vzero")])
    return onnx.shape_inference.infer_shapes(helper.make_model(g, opset_imports=[helper.make_opsetid("", 20)]))


def _run(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def test_simplify_removes_the_index_plumbing_and_keeps_values():
    model = _graph([-1])
    rng = np.random.default_rng(0)
    feeds = {"v": rng.standard_normal(9).astype(np.float32), "x": rng.standard_normal((9, 3)).astype(np.float32),
             "m": rng.standard_normal((2, 4)).astype(np.float32)}
    before = _run(model, feeds)
    stats = simplify(model)
    assert stats == {"reshape_1d": 1, "nonzero_1d": 1}
    onnx.checker.check_model(model, full_check=True)
    ops = [n.op_type for n in model.graph.node]
    # the 1-D index plumbing is gone; the 2-D flatten and the twice-read Transpose stay
    assert ops == ["Greater", "NonZero", "Squeeze", "Gather", "Reshape", "Transpose", "Add"]
    assert "one" not in {i.name for i in model.graph.initializer}  # read only by the rewritten Squeeze
    for a, b in zip(before, _run(model, feeds), strict=True):
        assert a.dtype == b.dtype and np.array_equal(a, b)


def test_simplify_leaves_a_real_reshape_alone():
    model = _graph([3, -1])  # Reshape(idx, [3, -1]) is not a no-op on a 1-D index
    stats = simplify(model)
    assert stats["reshape_1d"] == 0
    assert sum(n.op_type == "Reshape" for n in model.graph.node) == 2


def test_exported_graph_has_no_1d_index_plumbing(exported):
    """The adaptive export went through the clean-up: no Reshape(x, [-1]) of a 1-D x, no Transpose after a
    NonZero of a 1-D input."""
    m = onnx.load(str(exported["adaptive"]))
    assert simplify(m) == {"reshape_1d": 0, "nonzero_1d": 0}
