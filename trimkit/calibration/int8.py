"""INT8 calibration: static Q/DQ quantization of a trimkit ONNX export with real calibration batches.

Only the backbone's matmuls (MatMul/Gemm with a constant weight, outside the trimmers) are
quantized, each with its own Q/DQ pair (`DedicatedQDQPair`), so the trimmer decision path —
token and head scores, thresholds, TopK, Gather, masks — reads float tensors and pruning decisions
stay stable. Matmul outputs stay float (no requantization before the bias Add). Weights are symmetric
int8. Activations are symmetric int8 by default (zero point 0): the explicit-quantization form
TensorRT 10/11 builds; `activations="uint8"` (asymmetric) is the form ONNX Runtime's x86 kernels run
natively (VNNI multiplies unsigned by signed bytes) -- for CPU deployment only.
The result carries what produced it (`trimkit_calibration`: data, samples, seed, method, ...).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..config import INT8_ACTIVATIONS, INT8_METHODS, INT8_SCOPES, SMOOTH_WHERE
from ..errors import BadInputError, import_optional

__all__ = ["quantize_int8", "Int8Result", "quantizable_matmuls", "trimmer_nodes", "CALIBRATION_METHODS",
           "ACTIVATION_TYPES", "QUANT_SCOPES"]

CALIBRATION_METHODS = INT8_METHODS
ACTIVATION_TYPES = INT8_ACTIVATIONS
TRIMMER_SCOPES = ("token_trimmers", "head_trimmers")
# which backbone matmuls get Q/DQ: every one, only the feed-forward blocks' (fc1/fc2: two thirds of a layer's
# matmul FLOPs, and fewer quantization errors upstream of the trimmers' scores), or only the attention projections
QUANT_SCOPES = {"all": None, "mlp": "trimkit.models.layers.Mlp/", "attention": "trimkit.models.layers.Attention/"}
assert tuple(QUANT_SCOPES) == INT8_SCOPES


@dataclass
class Int8Result:
    path: Path
    quantized_nodes: int
    skipped_trimmer_nodes: int
    op_counts: dict[str, int] = field(default_factory=dict)
    calibration: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


def _scopes(node) -> str:
    for p in node.metadata_props:
        if p.key in ("pkg.torch.onnx.name_scopes", "namespace"):
            return p.value
    return ""


def trimmer_nodes(model) -> set[str]:
    """Names of nodes that belong to a trimmer module (from the exporter's name scopes)."""
    return {n.name for n in model.graph.node if any(s in _scopes(n) for s in TRIMMER_SCOPES)}


def quantizable_matmuls(model, scope: str = "all") -> tuple[list[str], int]:
    """MatMul/Gemm nodes with a constant weight outside the trimmers, within `scope` (a QUANT_SCOPES key,
    matched on the exporter's module name scopes) -> (names, trimmer matmuls skipped)."""
    module = QUANT_SCOPES[scope]
    consts = {i.name for i in model.graph.initializer}
    consts |= {n.output[0] for n in model.graph.node if n.op_type == "Constant"}
    trim = trimmer_nodes(model)
    names, skipped = [], 0
    for n in model.graph.node:
        if n.op_type not in ("MatMul", "Gemm") or len(n.input) < 2 or n.input[1] not in consts:
            continue
        if n.name in trim:
            skipped += 1
        elif module is None or module in _scopes(n):
            names.append(n.name)
    return names, skipped


class _Reader:
    """onnxruntime CalibrationDataReader over a dataset split: real images and questions."""

    def __init__(self, batches: list[dict[str, np.ndarray]]) -> None:
        self.batches, self.i = batches, 0

    def get_next(self):
        if self.i >= len(self.batches):
            return None
        self.i += 1
        return self.batches[self.i - 1]

    def rewind(self) -> None:
        self.i = 0


def calibration_batches(model, data: str, samples: int, batch_size: int, seed: int) -> list[dict[str, np.ndarray]]:
    from ..data import load_dataset
    from ..evaluate import sample_indices
    from ..runtime.onnxruntime import ort_feed

    task = load_dataset(data, tokenizer=model.tokenizer, labels=model.labels, image_size=model.config.image_size,
                        seed=seed, splits=("train",))
    idx = sample_indices(len(task.train), samples, seed)
    out = []
    for start in range(0, idx.numel(), batch_size):
        pv, ids, mask, _ = task.train.batch(idx[start: start + batch_size], trim_padding=True)
        out.append(ort_feed(pv, ids, mask))
    return out


def quantize_int8(onnx_path: str | os.PathLike, out: str | os.PathLike, *, ckpt: str | os.PathLike, data: str,
                  samples: int = 256, batch_size: int = 16, method: str = "minmax", per_channel: bool = False,
                  activations: str = "int8", scope: str = "all", smooth: float | None = None,
                  smooth_where: str = "all", seed: int = 0, force: bool = False, log=None) -> Int8Result:
    """Quantize `onnx_path` (a trimkit fp32 export of `ckpt`) to a Q/DQ graph at `out` (atomic).

    `smooth`: SmoothQuant alpha in (0, 1] (see `smooth.py`): the quantized matmuls' input channels are
    rescaled into their weights first, from the same calibration batches; `smooth_where` "layernorm":
    only where the rescaling folds into a LayerNorm (no added Mul nodes)."""
    from ..checkpoint import load_checkpoint
    from ..contract import META_CALIBRATION, META_CONFIG, artifact_metadata, check_match, read_metadata, stamp_metadata
    from ..export.onnx import quiet_logs
    from ..fileio import atomic_path, check_writable, sha256_file
    from ..runtime.onnxruntime import ort_session

    say = log or (lambda msg: None)
    t0 = time.perf_counter()
    if method not in CALIBRATION_METHODS:
        raise BadInputError(f"unknown calibration method {method!r}; choose {', '.join(CALIBRATION_METHODS)}")
    if activations not in ACTIVATION_TYPES:
        raise BadInputError(f"unknown activation type {activations!r}; choose {', '.join(ACTIVATION_TYPES)}")
    if scope not in QUANT_SCOPES:
        raise BadInputError(f"unknown quantization scope {scope!r}; choose {', '.join(QUANT_SCOPES)}")
    if samples < 1 or batch_size < 1:
        raise BadInputError("--samples and --batch-size must be positive")
    if smooth is not None and not 0.0 < smooth <= 1.0:
        raise BadInputError(f"--smooth must be in (0, 1], got {smooth}")
    if smooth_where not in SMOOTH_WHERE:
        raise BadInputError(f"unknown --smooth-where {smooth_where!r}; choose {', '.join(SMOOTH_WHERE)}")
    onnx_path, out = Path(onnx_path), check_writable(out, force=force)
    if onnx_path.suffix != ".onnx":
        raise BadInputError(f"{onnx_path}: expected a trimkit .onnx export")
    model = load_checkpoint(ckpt)
    info = artifact_metadata(onnx_path)
    check_match(model, Path(ckpt), onnx_path, info)
    if info.precision != "fp32":
        raise BadInputError(f"{onnx_path}: INT8 calibration needs an fp32 export, this one is {info.precision}")
    if model.tokenizer is None:
        raise BadInputError(f"{ckpt}: checkpoint has no tokenizer for --data {data}")
    # a missing or broken install is one line; once imported, the names come from it directly
    import_optional("onnxruntime.quantization", "INT8 calibration needs onnxruntime: pip install onnxruntime")
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    proto = onnx.load(str(onnx_path))
    names, skipped = quantizable_matmuls(proto, scope)
    if not names:
        raise BadInputError(f"{onnx_path}: no {scope} matmul with a constant weight to quantize")
    say(f"quantizing {len(names)} {'' if scope == 'all' else scope + ' '}matmuls ({skipped} trimmer matmuls stay float) with {method} calibration "
        f"on {samples} {data} samples ...")
    batches = calibration_batches(model, data, samples, batch_size, seed)
    calib = {"data": data, "samples": sum(b["input_ids"].shape[0] for b in batches), "seed": seed,
             "method": method, "per_channel": per_channel, "scope": scope, "batch_size": batch_size, "split": "train",
             "source_onnx_sha256": sha256_file(onnx_path),
             "activations": "int8 symmetric" if activations == "int8" else "uint8 asymmetric",
             "weights": "int8 symmetric" + (" per-channel" if per_channel else ""), "smooth_alpha": smooth,
             "smooth_where": smooth_where if smooth is not None else None}
    # quiet_logs(("",)): onnxruntime.quantization warns on the root logger with pre-processing advice that
    # does not apply (symbolic shape inference cannot follow a data-dependent TopK K)
    with tempfile.TemporaryDirectory(prefix="trimkit-int8-") as tmp, quiet_logs(("",)), _ragged_histograms():
        raw, source = Path(tmp) / "q.onnx", onnx_path
        if smooth is not None:
            from .smooth import smooth_graph

            sm = smooth_graph(proto, names, batches, smooth, where=smooth_where)
            calib["smoothed"] = {"tensors": sm.tensors, "folded_into_layernorm": sm.folded, "mul_nodes": sm.inserted}
            say(f"smoothed {sm.tensors} matmul inputs (alpha {smooth}): {sm.folded} folded into LayerNorm, "
                f"{sm.inserted} with a Mul")
            source = Path(tmp) / "smoothed.onnx"
            onnx.save(proto, str(source))
        quantize_static(
            str(source), str(raw), _Reader(batches), quant_format=QuantFormat.QDQ,
            op_types_to_quantize=["MatMul", "Gemm"], nodes_to_quantize=names, per_channel=per_channel,
            activation_type=QuantType.QInt8 if activations == "int8" else QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method={"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                              "percentile": CalibrationMethod.Percentile}[method],
            extra_options={"DedicatedQDQPair": True, "ActivationSymmetric": activations == "int8", "WeightSymmetric": True,
                           "MatMulConstBOnly": True,
                           # float matmul outputs: the bias Add reads them as they are, and ONNX Runtime fuses
                           # DQ -> MatMul (+ bias) into one MatMulIntegerToFloat instead of requantizing
                           "OpTypesToExcludeOutputQuantization": ["MatMul", "Gemm"]},
        )
        q = onnx.load(str(raw))
        cfg = dict(info.config, precision="int8")
        stamped = read_metadata(proto)
        stamped.update({META_CONFIG: json.dumps(cfg), META_CALIBRATION: json.dumps(calib)})
        stamp_metadata(q, stamped)
        counts = Counter(n.op_type for n in q.graph.node)
        if not counts.get("QuantizeLinear"):
            raise BadInputError(f"{onnx_path}: nothing was quantized (no MatMul with a constant weight found)")
        with atomic_path(out, force=force) as tmp_out:
            onnx.save(q, str(tmp_out))
            onnx.checker.check_model(str(tmp_out), full_check=True)
            _smoke(ort_session(tmp_out), batches)
    return Int8Result(out, len(names), skipped, dict(counts), calib, time.perf_counter() - t0)


@contextmanager
def _ragged_histograms():
    """Let ONNX Runtime's histogram calibrators (entropy, percentile) take tensors whose shapes differ from
    batch to batch. An adaptive graph's token count k depends on the data, so the per-batch arrays of one
    tensor are ragged, and `HistogramCollector` stacks them with `np.asarray` (ValueError). It flattens the
    stack right after, so handing it each tensor's values already flattened and concatenated is the same
    histogram. Scoped to the quantization call; left alone if that class is not there."""
    try:
        from onnxruntime.quantization.calibrate import HistogramCollector
    except ImportError:
        yield
        return
    original = HistogramCollector.collect

    def collect(self, name_to_arr):
        flat = {k: np.concatenate([np.asarray(a).ravel() for a in v]) if isinstance(v, list) and v else v
                for k, v in name_to_arr.items()}
        return original(self, flat)

    HistogramCollector.collect = collect
    try:
        yield
    finally:
        HistogramCollector.collect = original


def _smoke(sess, batches) -> None:
    """The quantized graph runs on real batches of several sizes and text lengths, finite outputs."""
    for feed in batches[:2] + [{k: v[:1] for k, v in batches[0].items()}]:
        logits, _ = sess.run(None, feed)
        if not np.isfinite(logits).all():
            raise BadInputError("the INT8 graph produced non-finite logits")
