"""The artifact contract: names, limits, tolerances and metadata, without exporting anything."""

import json

import onnx
import pytest
from onnx import TensorProto, helper

from trimkit.config import TrimConfig, preset_config
from trimkit.contract import (
    HEAD_KEEP_BATCH,
    INPUT_NAMES,
    LAYOUTS,
    META_CONFIG,
    META_LABELS,
    META_LAYOUT,
    META_MODE,
    OUTPUT_NAMES,
    TOLERANCES,
    TRIM_MODE_OF,
    artifact_metadata,
    read_metadata,
    stamp_metadata,
    tolerance,
)
from trimkit.errors import BadInputError


def _tiny_onnx(path, names=INPUT_NAMES, meta=None):
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1]) for n in names]
    out = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", [names[0]], ["logits"])], "g", inputs, [out])
    model = helper.make_model(graph)
    if meta is not None:
        stamp_metadata(model, meta)
    onnx.save(model, str(path))
    return model


def test_names_modes_and_tolerances():
    assert INPUT_NAMES == ("pixel_values", "input_ids", "attention_mask") and OUTPUT_NAMES == ("logits", "keep_counts")
    assert TRIM_MODE_OF == {"adaptive": "prune", "static": "static", "full": "off"}
    assert LAYOUTS == ("packed", "padded") and META_LAYOUT == "trimkit_layout"
    assert tolerance("fp16") == TOLERANCES["fp16"] and tolerance("bf8") == TOLERANCES["fp32"]
    assert TOLERANCES["int8"].min_agreement < TOLERANCES["fp32"].min_agreement
    assert TrimConfig().head_keep_batch == HEAD_KEEP_BATCH  # a checkpoint that plans for no batch plans for this one
    with pytest.raises(ValueError, match="head_keep_batch"):
        TrimConfig(head_keep_batch=0)


def test_stamping_replaces_every_key(tmp_path):
    model = _tiny_onnx(tmp_path / "a.onnx", meta={"stale": "1", META_MODE: "full"})
    stamp_metadata(model, {META_MODE: "adaptive"})
    assert read_metadata(model) == {META_MODE: "adaptive"}


def test_artifact_metadata_of_an_onnx_file(tmp_path):
    cfg = {"model_config": preset_config("tiny").to_dict(), "precision": "fp16"}
    _tiny_onnx(tmp_path / "m.onnx", meta={META_MODE: "static", META_CONFIG: json.dumps(cfg),
                                          META_LABELS: '["yes", "no"]'})
    info = artifact_metadata(tmp_path / "m.onnx")
    assert (info.runtime, info.mode, info.labels, info.precision, info.weights) == (
        "onnxruntime", "static", ["yes", "no"], "fp16", None)
    assert info.layout == "padded"  # no trimkit_layout: a graph from before the packed layout


def test_artifact_layout_is_read_from_trimkit_layout(tmp_path):
    cfg = {"model_config": preset_config("tiny").to_dict(), "layout": "padded"}
    _tiny_onnx(tmp_path / "m.onnx", meta={META_MODE: "adaptive", META_CONFIG: json.dumps(cfg),
                                          META_LABELS: "[]", META_LAYOUT: "packed"})
    assert artifact_metadata(tmp_path / "m.onnx").layout == "packed"


@pytest.mark.parametrize("case,message", [
    ("missing", "no such file"),
    ("unknown", "unknown artifact type"),
    ("no_meta", "not a trimkit export"),
    ("wrong_inputs", "are not pixel_values"),
    ("engine_without_manifest", "no manifest"),
])
def test_artifacts_that_break_the_contract_are_bad_input(tmp_path, case, message):
    path = {"missing": tmp_path / "none.onnx", "unknown": tmp_path / "x.bin",
            "engine_without_manifest": tmp_path / "e.plan"}.get(case, tmp_path / f"{case}.onnx")
    if case == "unknown" or case == "engine_without_manifest":
        path.write_bytes(b"x")
    elif case == "no_meta":
        _tiny_onnx(path)
    elif case == "wrong_inputs":
        _tiny_onnx(path, names=("image", "input_ids", "attention_mask"), meta={META_CONFIG: "{}"})
    with pytest.raises(BadInputError, match=message):
        artifact_metadata(path)
