"""Exact graph clean-ups the exporter leaves to do, applied to the ONNX proto before it is checked.

Each node costs a kernel dispatch (about a microsecond on a CPU runtime) whatever it computes, and the
adaptive graph's index plumbing is where the exporter emits nodes that compute nothing: `index_select`
becomes Reshape(index, [-1]) + Gather even when the index is already 1-D, and `nonzero(v).squeeze(1)` of a
1-D v becomes NonZero -> Transpose -> Squeeze where one Squeeze of NonZero's (1, T) output gives the same
(T,) tensor. ONNX Runtime's own optimizer keeps both (the shapes are data-dependent). Every rewrite here
replaces a node by an identical value, so the graph's outputs are bit-for-bit those of the exported one.
"""

from __future__ import annotations

from collections import defaultdict

__all__ = ["simplify"]

_AXIS0 = "trimkit_axes_0"


def _ranks(graph) -> dict[str, int]:
    """Rank of every value whose type the exporter recorded (inputs, outputs, intermediates, initializers)."""
    ranks = {i.name: len(i.dims) for i in graph.initializer}
    for v in (*graph.input, *graph.output, *graph.value_info):
        t = v.type.tensor_type
        if t.HasField("shape"):
            ranks[v.name] = len(t.shape.dim)
    return ranks


def _int_constants(graph) -> dict[str, list[int]]:
    """Small int64 constants by name (Constant nodes and initializers): shapes and axes."""
    from onnx import TensorProto, numpy_helper

    out = {}
    tensors = [(i.name, i) for i in graph.initializer]
    tensors += [(n.output[0], a.t) for n in graph.node if n.op_type == "Constant" for a in n.attribute
                if a.name == "value"]
    for name, t in tensors:
        if t.data_type == TensorProto.INT64 and len(t.dims) <= 1 and (not t.dims or t.dims[0] <= 8):
            out[name] = [int(v) for v in numpy_helper.to_array(t).reshape(-1)]
    return out


def _perm(node) -> list[int] | None:
    return next((list(a.ints) for a in node.attribute if a.name == "perm"), None)


def simplify(proto) -> dict[str, int]:
    """Rewrite `proto` (an onnx.ModelProto, in place); returns what was removed, by rule.

    - `reshape_1d`: Reshape(x, [-1]) of a 1-D x -> x.
    - `nonzero_1d`: NonZero(v) -> Transpose([1, 0]) -> Squeeze([1]) of a 1-D v -> Squeeze(NonZero(v), [0]).
    """
    import numpy as np
    from onnx import numpy_helper

    g = proto.graph
    ranks, consts = _ranks(g), _int_constants(g)
    producer = {o: n for n in g.node for o in n.output}
    consumers: dict[str, list] = defaultdict(list)
    for n in g.node:
        for i in n.input:
            consumers[i].append(n)
    outputs = {o.name for o in g.output}
    read_before = set(consumers)
    alias: dict[str, str] = {}
    drop: list[int] = []  # node indices (protobuf wrappers have no stable identity)
    stats = {"reshape_1d": 0, "nonzero_1d": 0}

    for i, n in enumerate(g.node):
        if n.op_type == "Transpose" and _perm(n) == [1, 0]:
            src = producer.get(n.input[0])
            users = consumers[n.output[0]]
            if (src is not None and src.op_type == "NonZero" and ranks.get(src.input[0]) == 1 and len(users) == 1
                    and users[0].op_type == "Squeeze" and len(users[0].input) == 2
                    and consts.get(users[0].input[1]) == [1] and n.output[0] not in outputs):
                squeeze = users[0]
                squeeze.input[0], squeeze.input[1] = n.input[0], _AXIS0
                drop.append(i)
                stats["nonzero_1d"] += 1
        elif (n.op_type == "Reshape" and consts.get(n.input[1]) == [-1] and ranks.get(n.input[0]) == 1
              and n.output[0] not in outputs):
            alias[n.output[0]] = n.input[0]
            drop.append(i)
            stats["reshape_1d"] += 1
    if not drop:
        return stats
    if stats["nonzero_1d"] and _AXIS0 not in {t.name for t in g.initializer}:
        g.initializer.append(numpy_helper.from_array(np.array([0], dtype=np.int64), _AXIS0))

    def resolve(name: str) -> str:
        while name in alias:
            name = alias[name]
        return name

    removed = {o for i in drop for o in g.node[i].output}
    for i in reversed(drop):  # in place, back to front: no copies of the graph, indices stay valid
        del g.node[i]
    for n in g.node:
        for j, name in enumerate(n.input):
            if name in alias:
                n.input[j] = resolve(name)
    for i in reversed(range(len(g.value_info))):
        if g.value_info[i].name in removed:
            del g.value_info[i]
    # constants that only the removed nodes read
    read = {i for n in g.node for i in n.input} | outputs
    orphan = read_before - read
    for i in reversed(range(len(g.node))):
        if g.node[i].op_type == "Constant" and g.node[i].output[0] in orphan:
            del g.node[i]
    for i in reversed(range(len(g.initializer))):
        if g.initializer[i].name in orphan:
            del g.initializer[i]
    return stats
