"""OpenVINO IR (.xml + .bin) from a trimkit ONNX graph, with the same metadata and a JSON manifest.

The IR is converted from the checked ONNX export (the adaptive TopK/Gather graph converts as it is),
with fp32 weights (`save_model` would compress them to fp16 by default), the ONNX metadata_props
under the `trimkit` rt_info section, and checked against ONNX Runtime before anything is written.
The .bin, the .xml and the manifest (`model.xml.json`) are written as one group.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..contract import DEFAULT_OPSET, INPUT_NAMES, OUTPUT_NAMES
from ..errors import BadInputError, CheckFailedError
from ..fileio import atomic_write_group, check_writable, sha256_file

__all__ = ["to_openvino", "OpenVinoExport", "ir_metadata", "ir_paths", "read_ir_manifest", "IR_MANIFEST_FORMAT",
           "RT_INFO_SECTION"]

IR_MANIFEST_FORMAT = "trimkit-openvino-manifest"
RT_INFO_SECTION = "trimkit"  # rt_info/trimkit/<metadata key> in the .xml


@dataclass
class OpenVinoExport:
    xml: Path
    bin: Path
    manifest: Path
    seconds: float
    openvino_version: str
    manifest_data: dict[str, Any]


def ir_paths(xml: str | os.PathLike) -> tuple[Path, Path, Path]:
    """model.xml -> (model.xml, model.bin, model.xml.json)."""
    p = Path(xml)
    if p.suffix != ".xml":
        raise BadInputError(f"{p}: an OpenVINO IR is written as NAME.xml (+ NAME.bin)")
    return p, p.with_suffix(".bin"), p.with_name(p.name + ".json")


def ir_metadata(xml: str | os.PathLike) -> dict[str, str]:
    """The trimkit metadata an IR carries in its rt_info (the ONNX metadata_props it was converted from)."""
    from ..runtime.openvino import import_openvino

    ov = import_openvino()
    try:
        model = ov.Core().read_model(str(xml))
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise BadInputError(f"{xml}: OpenVINO could not read the IR ({first})") from None
    if not model.has_rt_info([RT_INFO_SECTION, "trimkit_config"]):
        raise BadInputError(f"{xml}: not a trimkit export (no trimkit_config in its rt_info)")
    keys = ("trimkit_version", "trimkit_mode", "trimkit_config", "labels", "trimkit_weights_sha256",
            "trimkit_tokenizer", "trimkit_calibration", "trimkit_layout")
    return {k: model.get_rt_info([RT_INFO_SECTION, k]).astype(str) for k in keys
            if model.has_rt_info([RT_INFO_SECTION, k])}


def read_ir_manifest(xml: str | os.PathLike) -> dict[str, Any]:
    from .manifest import read_json_manifest

    _, bin_path, path = ir_paths(xml)
    data = read_json_manifest(path, xml, IR_MANIFEST_FORMAT, "IR", "OpenVINO")
    if not bin_path.exists():
        raise BadInputError(f"{xml}: its weights {bin_path.name} are missing")
    return data


def _io(model) -> list[dict[str, Any]]:
    rows = []
    for mode, ports in (("input", model.inputs), ("output", model.outputs)):
        for p in ports:
            rows.append({"name": p.get_any_name(), "mode": mode, "dtype": p.get_element_type().get_type_name(),
                         "shape": [d.get_length() if d.is_static else -1 for d in p.get_partial_shape()]})
    return rows


def _check_ir(xml: Path, onnx_path: Path, config, precision: str, seed: int = 0) -> dict[str, Any]:
    """OpenVINO (fp32 inference) on the IR vs ONNX Runtime on the ONNX graph: two batch sizes, two text lengths."""
    from ..runtime.onnxruntime import ort_session
    from ..runtime.openvino import OpenVinoRunner
    from .inputs import sample_inputs

    runner = OpenVinoRunner(xml, precision="fp32")
    sess = ort_session(onnx_path)
    tol = {"fp32": 1e-4, "fp16": 5e-2}.get(precision, 0.25)
    short = min(config.max_text_len, max(2, config.max_text_len // 3))
    rows, ok = [], True
    for i, (b, n) in enumerate([(1, short), (3, config.max_text_len)]):
        pv, ids, mask = (t.numpy() for t in sample_inputs(config, b, n, seed=seed + i))
        ref_logits, ref_counts = sess.run(list(OUTPUT_NAMES), dict(zip(INPUT_NAMES, (pv, ids, mask))))
        logits, counts = runner(pv, ids, mask)
        same = (counts == ref_counts).reshape(b, -1).all(axis=1)  # (B,)
        err = float(np.abs(logits - ref_logits)[same].max()) if same.any() else 0.0
        # an fp16/int8 graph may flip a near-threshold decision between runtimes; fp32 may not
        row_ok = err <= tol and (bool(same.all()) if precision == "fp32" else int((~same).sum()) <= b // 4)
        ok &= row_ok
        rows.append({"batch": b, "text_len": n, "max_abs_err": err, "decision_flips": int((~same).sum())})
    return {"passed": ok, "atol": tol, "shapes": rows}


def to_openvino(source, out: str | os.PathLike, *, mode: str = "adaptive", precision: str = "fp32",
                opset: int = DEFAULT_OPSET, keep_ratios=None, head_impl: str = "auto", layout: str = "packed",
                force: bool = False, log=None) -> OpenVinoExport:
    """Checkpoint (or trimkit ONNX file) -> checked ONNX -> OpenVINO IR (.xml + .bin) + manifest."""
    from ..runtime.openvino import import_openvino
    from .onnx import check_opset, to_onnx
    from .trt import onnx_model_config

    say = log or (lambda msg: None)
    xml, bin_path, man_path = ir_paths(out)
    for p in (xml, bin_path, man_path):
        check_writable(p, force=force)
    check_opset(opset)
    ov = import_openvino()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="trimkit-ov-") as tmp:
        src = Path(source) if isinstance(source, (str, os.PathLike)) else None
        if src is not None and src.suffix == ".onnx":
            onnx_path = src
        else:
            onnx_path = to_onnx(source, Path(tmp) / "model.onnx", mode=mode, opset=opset, precision=precision,
                                keep_ratios=keep_ratios, head_impl=head_impl, layout=layout, log=log).path
        config, meta = onnx_model_config(onnx_path)
        graph_precision = json.loads(meta["trimkit_config"]).get("precision", "fp32")
        if "trimkit_calibration" in meta:
            graph_precision = "int8"
        try:
            model = ov.convert_model(str(onnx_path))
        except Exception as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CheckFailedError(f"{onnx_path}: OpenVINO could not convert the graph ({first})") from None
        for k, v in meta.items():
            model.set_rt_info(v, [RT_INFO_SECTION, k])
        staged = Path(tmp) / "ir" / xml.name
        staged.parent.mkdir()
        ov.save_model(model, str(staged), compress_to_fp16=False)  # the weights stay as the graph has them
        check = _check_ir(staged, onnx_path, config, graph_precision)
        worst = max(r["max_abs_err"] for r in check["shapes"])
        say(f"OpenVINO IR vs ONNX Runtime: max |logits err| {worst:.2e} (atol {check['atol']}), decision flips "
            f"{sum(r['decision_flips'] for r in check['shapes'])}")
        if not check["passed"]:
            raise CheckFailedError(f"{xml}: the OpenVINO IR does not match ONNX Runtime ({check['shapes']}); "
                                   "nothing written")
        staged_bin = staged.with_suffix(".bin")
        seconds = time.perf_counter() - t0
        manifest = {
            "format": IR_MANIFEST_FORMAT, "format_version": 1, "trimkit_version": __version__,
            "xml_sha256": sha256_file(staged), "bin_sha256": sha256_file(staged_bin),
            "onnx_sha256": sha256_file(onnx_path), "trimkit_mode": meta.get("trimkit_mode"),
            "precision": graph_precision, "labels": json.loads(meta.get("labels", "[]")),
            "trimkit_config": json.loads(meta["trimkit_config"]), "weights_sha256": meta.get("trimkit_weights_sha256"),
            "tokenizer": json.loads(meta["trimkit_tokenizer"]) if "trimkit_tokenizer" in meta else None,
            "io": _io(model), "openvino_version": ov.__version__,
            # what the runner compiles at unless told otherwise (the CPU plugin alone would pick bf16 where it can)
            "inference_precision": "fp32", "check": check, "convert_seconds": round(seconds, 2),
        }
        atomic_write_group({bin_path: lambda t: shutil.copyfile(staged_bin, t),
                            xml: lambda t: shutil.copyfile(staged, t),
                            man_path: lambda t: t.write_text(json.dumps(manifest, indent=2) + "\n")}, force=force)
    say(f"wrote {xml}, {bin_path.name} ({bin_path.stat().st_size / 2**20:.1f} MiB) and {man_path.name} in "
        f"{seconds:.1f} s")
    return OpenVinoExport(xml, bin_path, man_path, seconds, ov.__version__, manifest)
