"""SmoothQuant-style activation smoothing of an fp32 ONNX graph before INT8 calibration.

Per-tensor activation scales are what flip SmartTrim's pruning decisions under INT8 (weights alone flip
far fewer): a few large input channels of a matmul set the tensor's range and every other channel is
quantized coarsely. Smoothing (Xiao et al., SmoothQuant, 2023) divides each input channel j of a
quantized matmul by s_j = max|X_j|^alpha / max|W_j|^(1 - alpha) and multiplies row j of its weight by
s_j: the float graph computes the same function, and part of the activation's range moves into the
weights, which are quantized per channel. `alpha` = 0 leaves activations alone, 1 moves all of it.

Where the activation is a LayerNormalization output read only by quantized matmuls (pre-LN blocks:
attention input, feed-forward input), 1/s folds into the normalization's scale and bias, free at
run time. Elsewhere (attention context, GELU output, post-LN residual streams) one `Mul` by 1/s is
inserted in front of the matmuls that read the tensor; other readers keep the original tensor
(`where="layernorm"` smooths only the foldable inputs: no added node, no run-time cost).
The trimmers read the residual stream, which smoothing never changes.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from ..config import SMOOTH_WHERE

__all__ = ["SmoothResult", "activation_channel_max", "smooth_graph", "SMOOTH_WHERE"]


@dataclass
class SmoothResult:
    alpha: float
    tensors: int  # activation tensors smoothed
    folded: int  # of which folded into a LayerNormalization
    inserted: int  # of which got a Mul node


def _weight_layout(node, init) -> tuple[np.ndarray, int]:
    """A matmul's constant weight and the axis of its input channels (MatMul: rows; Gemm transB=1: columns)."""
    w = init[node.input[1]]
    trans_b = any(a.name == "transB" and a.i == 1 for a in node.attribute) if node.op_type == "Gemm" else False
    return w, 1 if trans_b else 0


def activation_channel_max(proto, tensors: list[str], batches: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """max |x| per last-axis channel of each named tensor over the calibration batches (ONNX Runtime)."""
    import tempfile
    from pathlib import Path

    import onnx

    from ..runtime.onnxruntime import ort_session

    probe = onnx.ModelProto()
    probe.CopyFrom(proto)
    have = {o.name for o in probe.graph.output}
    for t in tensors:
        if t not in have:
            probe.graph.output.append(onnx.helper.make_empty_tensor_value_info(t))
    with tempfile.TemporaryDirectory(prefix="trimkit-smooth-") as tmp:
        path = Path(tmp) / "probe.onnx"
        onnx.save(probe, str(path))
        sess = ort_session(path, level="basic")  # graph outputs keep their names and values
    out: dict[str, np.ndarray] = {}
    for feed in batches:
        for name, x in zip(tensors, sess.run(tensors, feed)):
            x = np.abs(np.asarray(x, dtype=np.float32)).reshape(-1, x.shape[-1])
            if x.shape[0]:
                m = x.max(axis=0)
                out[name] = m if name not in out else np.maximum(out[name], m)
    return out


def smooth_graph(proto, matmuls: list[str], batches: list[dict[str, np.ndarray]], alpha: float, *,
                 where: str = "all") -> SmoothResult:
    """Smooth, in place, the activation inputs of the named MatMul/Gemm nodes (constant weights).
    `where`: "all", or "layernorm" (only the inputs whose 1/s folds into a LayerNorm: no added nodes)."""
    from onnx import helper, numpy_helper

    if not 0.0 < alpha <= 1.0:
        raise ValueError("alpha must be in (0, 1]")
    if where not in SMOOTH_WHERE:
        raise ValueError(f"where must be one of {', '.join(SMOOTH_WHERE)}")
    g = proto.graph
    init = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    uses: dict[str, int] = defaultdict(int)
    readers: dict[str, list] = defaultdict(list)
    producer = {}
    for n in g.node:
        for i in n.input:
            uses[i] += 1
            readers[i].append(n)
        for o in n.output:
            producer[o] = n
    wanted = set(matmuls)
    groups: dict[str, list] = defaultdict(list)  # activation tensor -> the quantized matmuls reading it
    for n in g.node:
        if n.name in wanted:
            groups[n.input[0]].append(n)

    def layernorm_of(x: str):
        """The LayerNormalization producing x, if 1/s can fold into it (x read only by its quantized matmuls)."""
        ln = producer.get(x)
        if (ln is not None and ln.op_type == "LayerNormalization" and len(ln.input) >= 3
                and len(readers[x]) == len(groups[x]) and all(i in init for i in ln.input[1:3])):
            return ln
        return None

    if where == "layernorm":
        groups = {x: nodes for x, nodes in groups.items() if layernorm_of(x) is not None}
    xmax = activation_channel_max(proto, list(groups), batches)
    new_init: dict[str, np.ndarray] = {}

    def _replace(node, k: int, value: np.ndarray) -> None:
        """Give input k of node a new constant value; a constant other nodes also read gets its own copy
        (exporters share equal initializers, e.g. the ones and zeros of untrained LayerNorms)."""
        name = node.input[k]
        if uses[name] > 1:
            uses[name] -= 1
            name = f"{name}_smooth_{node.name}"
            uses[name] = 1
            node.input[k] = name
        new_init[name] = init[name] = value.astype(np.float32)

    new_nodes: list[tuple[object, object]] = []  # (node to insert before, Mul node)
    folded = inserted = 0
    for x, nodes in groups.items():
        if x not in xmax:  # empty (no rows) in every calibration batch: nothing to scale by
            continue
        wmax = None
        for n in nodes:
            w, axis = _weight_layout(n, init)
            m = np.abs(w).max(axis=1 - axis)
            wmax = m if wmax is None else np.maximum(wmax, m)
        s = np.power(np.maximum(xmax[x], 1e-5), alpha) / np.power(np.maximum(wmax, 1e-5), 1.0 - alpha)
        s = np.where(xmax[x] > 0, np.clip(s, 1e-4, 1e4), 1.0).astype(np.float32)
        for n in nodes:  # scale the weight's input-channel rows
            w, axis = _weight_layout(n, init)
            _replace(n, 1, w * (s[:, None] if axis == 0 else s[None, :]))
        ln = layernorm_of(x)
        if ln is not None:
            for k in (1, 2):
                _replace(ln, k, init[ln.input[k]] / s)
            folded += 1
        else:
            inv = f"{x}_smooth_inv"
            new_init[inv] = (1.0 / s).astype(np.float32)
            out = f"{x}_smoothed"
            mul = helper.make_node("Mul", [x, inv], [out], name=f"{nodes[0].name}_smooth")
            for n in nodes:
                n.input[0] = out
            new_nodes.append((nodes[0], mul))
            inserted += 1
    for i in g.initializer:
        if i.name in new_init:
            i.CopyFrom(numpy_helper.from_array(new_init.pop(i.name), i.name))
    g.initializer.extend(numpy_helper.from_array(v, k) for k, v in new_init.items())
    for before, mul in new_nodes:  # keep the node list topologically sorted: the Mul right before its reader
        pos = list(g.node).index(before)
        g.node.insert(pos, mul)
    return SmoothResult(alpha, folded + inserted, folded, inserted)
