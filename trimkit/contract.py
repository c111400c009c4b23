"""The artifact contract: what every trimkit export promises, in one place.

Input and output names, export modes, opsets, batch limits, tolerances per precision, the
metadata keys an artifact carries, and how they are stamped and read back. Export writes it,
verify, calibration, profiles and manifests read it. Reading an artifact's metadata needs onnx
(for `.onnx`) only when it is called; importing this module needs neither torch nor onnx.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import BadInputError

if TYPE_CHECKING:
    from .config import ModelConfig
    from .models import MeterModel

__all__ = ["INPUT_NAMES", "OUTPUT_NAMES", "EXPORT_MODES", "TRIM_MODE_OF", "LAYOUTS", "HEAD_IMPLS",
           "GATHER_MAX_KEEP", "HEAD_KEEP_BATCH", "ATTENTION_RUNS", "RUNS_MIN_PRODUCT_SHARE", "attention_runs",
           "stream_attention_runs", "DEFAULT_OPSET", "OPSET_RANGE", "MAX_BATCH",
           "TOPK_MAX_K", "MAX_PROTO_BYTES", "PRECISIONS", "Tolerance", "TOLERANCES", "tolerance", "ENGINE_SUFFIXES",
           "META_VERSION", "META_MODE", "META_CONFIG", "META_LABELS", "META_WEIGHTS", "META_TOKENIZER",
           "META_CALIBRATION", "META_LAYOUT", "export_metadata", "heads_summary", "stamp_metadata", "read_metadata",
           "ArtifactInfo", "artifact_metadata", "check_match"]

# ---------------------------------------------------------------------------- I/O
# pixel_values float32 (B, 3, H, W), input_ids int64 (B, T), attention_mask int64 (B, T)
INPUT_NAMES = ("pixel_values", "input_ids", "attention_mask")
# logits float32 (B, num_labels), keep_counts int64 (B, trimmed_layers, 2): kept tokens per layer, vision then text
OUTPUT_NAMES = ("logits", "keep_counts")

# ---------------------------------------------------------------------------- modes and graph limits
EXPORT_MODES = ("adaptive", "static", "full")
TRIM_MODE_OF = {"adaptive": "prune", "static": "static", "full": "off"}  # export mode -> MeterModel forward mode
# How an adaptive graph lays out its kept tokens: one (sum_b k_b, D) matrix, or (B, k_max, D) with filler slots.
LAYOUTS = ("packed", "padded")
# How `prune` mode drops heads: gather the kept heads' weight slices (their work is saved), mask them (dense
# projections, pruned heads zeroed), or per attention module ("auto"): gather where a serving batch
# (`TrimConfig.head_keep_batch`, HEAD_KEEP_BATCH unless planned for another: `calibrate budget/heads --heads-batch`)
# keeps at most GATHER_MAX_KEEP of the module's heads (`TrimConfig.head_batch_keep`), mask elsewhere. A gathered
# projection copies its kept weight slices on every forward and loses ONNX Runtime's pre-packed weights:
# `benchmarks/head_gather.py` times it at up to 1.25x a dense projection of the same heads, so gathering pays
# where at most 0.80 of the heads run, at every row count measured (1-1600 rows); 0.75 leaves a margin.
HEAD_IMPLS = ("auto", "mask", "gather")
GATHER_MAX_KEEP = 0.75
HEAD_KEEP_BATCH = 8
# Packed layout: a stream's self-attention products (q k^T, a v) run per sample on a padded view. One view pads
# every sample to the batch's largest keep count; at 577 image tokens (BLIP-base, 384 px) the products are 11%
# of a layer's work, and that padding made a batch of 8 execute 1.07x its samples' own work (FLOPs ratio 0.33,
# `--heads auto`; 1.11x with masked heads). Sorting the samples by keep count and running the products in
# ATTENTION_RUNS runs, each padded to its own largest count, brings it to 1.03x (1.05x) (`Packing.split`). Each
# run costs a few more nodes per module, which pays only where the products are a large share of the work:
# n / (6 width + n) of a layer of n tokens at full length (4 n^2 w of 24 n w^2 + 4 n^2 w) at least
# RUNS_MIN_PRODUCT_SHARE -- BLIP's 577 image tokens (0.11), not METER's 197 (0.04).
ATTENTION_RUNS = 2
RUNS_MIN_PRODUCT_SHARE = 0.08


def attention_runs(tokens: int, width: int) -> int:
    """The runs a packed stream of `tokens` tokens (untrimmed) and hidden `width` splits its self-attention
    products into."""
    return ATTENTION_RUNS if tokens / (6 * width + tokens) >= RUNS_MIN_PRODUCT_SHARE else 1


def stream_attention_runs(config: ModelConfig) -> list[int]:
    """[vision, text] `attention_runs` of a model's streams, from their untrimmed token counts (1 + patches, the
    longest text)."""
    from .config import TEXT, VISION

    return [attention_runs(n, config.encoder(m).hidden_size) for m, n in ((VISION, 1 + config.num_patches),
                                                                          (TEXT, config.max_text_len))]


# Opset 20 has a Gelu operator: one node where opset 18 spells out Div/Erf/Add/Mul/Mul (26 GELUs in the
# `small` adaptive graph). ONNX Runtime runs it as one kernel; TensorRT 10 parses opsets 9-20, TensorRT 11 up to 25.
DEFAULT_OPSET = 20
# torch's dynamo exporter writes opset 18 and up (it silently raises anything lower to 18); 25 is the newest
# opset that ONNX Runtime 1.32 and the TensorRT 11 parser both take (a tiny model exports and checks at 18-25).
OPSET_RANGE = (18, 25)
MAX_BATCH = 4096  # the batch Dim bound the ONNX export declares; engine profiles may not exceed it
TOPK_MAX_K = 3840  # TensorRT's TopK limit on K
MAX_PROTO_BYTES = 2**31 - 1  # one file, no external data


# ---------------------------------------------------------------------------- tolerances
@dataclass(frozen=True)
class Tolerance:
    atol: float
    rtol: float
    min_agreement: float  # share of samples whose argmax (and keep_counts) must agree with PyTorch


# fp16 and int8 change the hidden states a trimmer scores, so a few pruning decisions near the threshold
# may flip: int8 gates agreement at 98%.
TOLERANCES = {
    "fp32": Tolerance(atol=1e-4, rtol=1e-3, min_agreement=0.99),
    # an fp32 graph run at bf16 inference precision (OpenVINO --precision bf16): 8 mantissa bits. Measured on
    # the tests' random-trimmer tiny model (256 samples): max |err| 1.5e-2 where decisions agree, but 5.9% of
    # samples flip a keep decision (its scores crowd the threshold), which is why fp32 is OpenVINO's default here
    "bf16": Tolerance(atol=5e-2, rtol=5e-2, min_agreement=0.95),
    "fp16": Tolerance(atol=5e-2, rtol=5e-2, min_agreement=0.99),
    "int8": Tolerance(atol=0.25, rtol=0.1, min_agreement=0.98),
}
PRECISIONS = ("fp32", "fp16")  # what `export` writes; int8 comes from `calibrate int8`


def tolerance(precision: str) -> Tolerance:
    """The default tolerance of an artifact precision (an unknown one is held to fp32)."""
    return TOLERANCES.get(precision, TOLERANCES["fp32"])


# ---------------------------------------------------------------------------- metadata
META_VERSION = "trimkit_version"
META_MODE = "trimkit_mode"
META_CONFIG = "trimkit_config"  # JSON: model_config, trim_config, mode, trim_mode, precision, ...
META_LABELS = "labels"  # JSON list
META_WEIGHTS = "trimkit_weights_sha256"
META_TOKENIZER = "trimkit_tokenizer"  # JSON, when the checkpoint has a tokenizer
META_CALIBRATION = "trimkit_calibration"  # JSON, INT8 graphs: what produced the scales
META_LAYOUT = "trimkit_layout"  # one of LAYOUTS, adaptive graphs

ENGINE_SUFFIXES = (".plan", ".engine", ".trt")


def export_metadata(model: MeterModel, mode: str, precision: str, extra: dict | None = None) -> dict[str, str]:
    """The metadata_props of an export of `model` in `mode` (string -> string, JSON where structured)."""
    from . import __version__
    from .checkpoint import weights_digest

    cfg = {"model_config": model.config.to_dict(), "trim_config": model.trim.to_dict(), "mode": mode,
           "trim_mode": TRIM_MODE_OF[mode], "precision": precision, "head_impl": model.head_impl,
           "layout": graph_layout(model, mode),
           "dynamic_axes": {"batch": "all inputs/outputs", "text_len": "input_ids, attention_mask"},
           "image_size": model.config.image_size, **(extra or {})}
    if mode == "adaptive":  # per trimmed layer, one letter per attention module: heads (g)athered, (m)asked, - idle
        cfg["heads_gathered"] = model.heads_plan()
        if graph_layout(model, mode) == "packed":  # [vision, text] runs of the self-attention products
            cfg["attention_runs"] = model.attention_runs()
    meta = {META_VERSION: __version__, META_MODE: mode, META_CONFIG: json.dumps(cfg),
            META_LABELS: json.dumps(list(model.labels or [])), META_WEIGHTS: weights_digest(model),
            META_LAYOUT: graph_layout(model, mode)}
    if getattr(model, "tokenizer", None) is not None:
        meta[META_TOKENIZER] = json.dumps(model.tokenizer.to_dict())
    return meta


def graph_layout(model: MeterModel, mode: str) -> str:
    """The token layout a graph of this mode runs: the model's for `adaptive`; `static` and `full` are padded."""
    return getattr(model, "layout", "padded") if mode == "adaptive" else "padded"


def stamp_metadata(proto, meta: dict[str, str]) -> None:
    """Replace an ONNX ModelProto's metadata_props with `meta` (no stale key survives a re-stamp)."""
    del proto.metadata_props[:]
    for k, v in meta.items():
        proto.metadata_props.add(key=k, value=v)


def read_metadata(proto) -> dict[str, str]:
    return {p.key: p.value for p in proto.metadata_props}


@dataclass
class ArtifactInfo:
    """What an artifact says about itself, whatever its runtime."""

    runtime: str  # "onnxruntime" | "tensorrt" | "openvino" (the runtime it is made for)
    mode: str
    config: dict[str, Any]  # the trimkit_config JSON
    labels: list[str]
    weights: str | None  # sha256 of the weights it was exported from
    manifest: dict[str, Any] | None = None  # TensorRT engines only
    layout_meta: str | None = None  # the trimkit_layout metadata, where the artifact carries it

    @property
    def precision(self) -> str:
        return self.config.get("precision", "fp32")

    @property
    def layout(self) -> str:
        """The token layout the graph runs (`trimkit_layout`; an engine's manifest keeps it in the config).
        A trimkit graph without one predates the packed layout, so it is padded."""
        return self.layout_meta or self.config.get("layout") or "padded"

    def as_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "config": self.config, "labels": self.labels, "weights": self.weights}


def artifact_metadata(path: str | os.PathLike) -> ArtifactInfo:
    """The trimkit metadata of an .onnx file or a TensorRT engine (from its manifest)."""
    path = Path(path)
    if not path.exists():
        raise BadInputError(f"{path}: no such file")
    if path.suffix == ".onnx":
        from .export.trt import onnx_model_config

        _, meta = onnx_model_config(path)
        return ArtifactInfo("onnxruntime", meta[META_MODE], json.loads(meta[META_CONFIG]),
                            json.loads(meta[META_LABELS]), meta.get(META_WEIGHTS), layout_meta=meta.get(META_LAYOUT))
    if path.suffix in ENGINE_SUFFIXES:
        from .export.manifest import read_manifest

        man = read_manifest(path)
        return ArtifactInfo("tensorrt", man[META_MODE], man[META_CONFIG], man["labels"], man.get("weights_sha256"),
                            man)
    if path.suffix == ".xml":
        from .export.openvino import ir_metadata, read_ir_manifest

        read_ir_manifest(path)  # the .bin and the manifest are beside it
        meta = ir_metadata(path)
        return ArtifactInfo("openvino", meta[META_MODE], json.loads(meta[META_CONFIG]), json.loads(meta[META_LABELS]),
                            meta.get(META_WEIGHTS), layout_meta=meta.get(META_LAYOUT))
    raise BadInputError(f"{path}: unknown artifact type (expected .onnx, a TensorRT .plan with its manifest or an "
                        "OpenVINO .xml IR)")


def heads_summary(plan: list[str]) -> str:
    """`gathered in N of M trimmed attention modules` from a heads plan (`MeterModel.heads_plan`: g, m, - idle)."""
    letters = "".join(plan).replace("-", "")
    return f"gathered in {letters.count('g')} of {len(letters)} trimmed attention modules"


# TrimConfig fields that decide which tokens and heads an adaptive artifact keeps
DECISION_SETTINGS = ("token_threshold", "head_threshold", "layer_threshold_offsets", "token_trimming",
                     "head_trimming", "token_modalities", "first_trimmed_layer", "local_only",
                     "head_batch_keep")  # the last decides which heads `--heads auto` gathers


def check_match(model: MeterModel, ckpt: Path, art: Path, info: ArtifactInfo) -> None:
    """The artifact was exported from this checkpoint: same model config, labels and weights (else exit 2)."""
    from .checkpoint import weights_digest

    cfg = info.config
    if cfg.get("model_config") != model.config.to_dict():
        diff = sorted(k for k, v in model.config.to_dict().items() if cfg.get("model_config", {}).get(k) != v)
        raise BadInputError(f"{art} does not match {ckpt}: model config differs ({', '.join(diff) or 'fields'})")
    if info.labels != list(model.labels):
        raise BadInputError(f"{art} does not match {ckpt}: labels differ")
    trim = cfg.get("trim_config")
    if trim is not None:  # thresholds decide what is pruned: a calibrated checkpoint vs an older export
        ours = model.trim.to_dict()
        diff = sorted(k for k in DECISION_SETTINGS if k in trim and trim[k] != ours.get(k))
        if diff:
            raise BadInputError(f"{art} does not match {ckpt}: trimmer settings differ ({', '.join(diff)}); "
                                "export the checkpoint again")
    if info.weights and info.weights != weights_digest(model):
        raise BadInputError(f"{art} was exported from other weights than {ckpt} (trimkit_weights_sha256 differs)")
