"""ONNX export with the adaptive pruning alive.

`adaptive`: trimmer scores -> per-sample keep counts -> k = batch max -> selection, for tokens and heads (the
model's `prune` path, traced by torch.export with a data-dependent k): NonZero compaction + Gather in the packed
layout (the default), TopK(k) -> sort -> Gather in the padded one;
`static`: calibrated per-layer keep ratios, k from input shapes only; `full`: no pruning.

Every export is checked before it is kept: onnx.checker (full check), then ONNX Runtime against
PyTorch on batch 1 and 3 at two text lengths. A failed check leaves no file.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import io
import logging
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..checkpoint import load_checkpoint
from ..contract import (
    DEFAULT_OPSET,
    EXPORT_MODES,
    GATHER_MAX_KEEP,
    HEAD_IMPLS,
    INPUT_NAMES,
    LAYOUTS,
    MAX_BATCH,
    MAX_PROTO_BYTES,
    OPSET_RANGE,
    OUTPUT_NAMES,
    PRECISIONS,
    TRIM_MODE_OF,
    export_metadata,
    heads_summary,
    stamp_metadata,
    tolerance,
)
from ..errors import BadInputError, CheckFailedError
from ..fileio import atomic_path, check_writable, sha256_file
from ..models import MeterModel
from ..runtime.onnxruntime import ort_feed, ort_session
from .inputs import sample_inputs
from .simplify import simplify

__all__ = ["to_onnx", "OnnxExport", "ExportWrapper", "check_onnx", "parse_keep_ratios", "quiet_logs", "check_opset"]


class ExportWrapper(nn.Module):
    """(pixel_values, input_ids, attention_mask) -> (logits float32, keep_counts int64) in one trim mode."""

    def __init__(self, model: MeterModel, trim_mode: str, *, fp16: bool = False) -> None:
        super().__init__()
        self.model = model
        self.trim_mode = trim_mode
        self.fp16 = fp16

    def forward(self, pixel_values: Tensor, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor]:
        if self.fp16:
            pixel_values = pixel_values.to(torch.float16)  # fp32 in, fp16 inside
        out = self.model(pixel_values, input_ids, attention_mask, mode=self.trim_mode, accounting=False)
        return out.logits.to(torch.float32), out.keep_counts


@dataclass
class OnnxExport:
    path: Path
    mode: str
    opset: int
    precision: str
    seconds: dict[str, float]
    size_bytes: int
    sha256: str
    check: dict[str, Any] = field(default_factory=dict)


def parse_keep_ratios(text: str, n_layers: int) -> list[list[float]]:
    """'0.5,0.8;0.3,0.7' (vision,text per trimmed layer) or one 'v,t' pair for every layer."""
    try:
        layers = [[float(x) for x in part.split(",")] for part in text.split(";") if part.strip()]
    except ValueError:
        raise BadInputError(f"--keep-ratios {text!r}: expected numbers like 0.5,0.8;0.3,0.7") from None
    if len(layers) == 1:
        layers = layers * n_layers
    if len(layers) != n_layers or any(len(x) != 2 for x in layers):
        raise BadInputError(f"--keep-ratios needs {n_layers} 'vision,text' pairs separated by ';' (or one pair)")
    if any(not 0.0 < r <= 1.0 for x in layers for r in x):
        raise BadInputError("--keep-ratios must be in (0, 1]")
    return layers


def check_opset(opset: int) -> int:
    lo, hi = OPSET_RANGE
    if not lo <= opset <= hi:
        raise BadInputError(f"--opset {opset}: supported opsets are {lo}-{hi} (torch's exporter writes {lo} and up; "
                            f"{hi} is the newest ONNX Runtime and TensorRT 11 take)")
    return opset


def heads_line(model: MeterModel) -> str:
    """One line on how the adaptive graph drops heads (`--heads`)."""
    plan = model.heads_plan()
    if model.head_impl != "auto":
        return f"heads: {heads_summary(plan)} (--heads {model.head_impl})"
    if model.trim.head_batch_keep is None:
        return (f"heads: {heads_summary(plan)} (--heads auto: the checkpoint records no head keep rates, so every "
                "module masks them; `trimkit calibrate budget` measures them)")
    return (f"heads: {heads_summary(plan)}, masked in the rest (--heads auto: gathered where a batch of "
            f"{model.trim.head_keep_batch} keeps <= {GATHER_MAX_KEEP:.0%} of the heads; `calibrate heads` plans for "
            f"another batch)")


def _prepare_model(source: str | os.PathLike | MeterModel, mode: str, keep_ratios, head_impl: str,
                   precision: str, layout: str = "packed") -> MeterModel:
    if mode not in EXPORT_MODES:
        raise BadInputError(f"unknown export mode {mode!r}; choose {', '.join(EXPORT_MODES)}")
    if precision not in PRECISIONS:
        raise BadInputError(f"unknown precision {precision!r}; choose {' or '.join(PRECISIONS)}")
    if head_impl not in HEAD_IMPLS:
        raise BadInputError(f"unknown head pruning {head_impl!r}; choose {', '.join(HEAD_IMPLS)}")
    if layout not in LAYOUTS:
        raise BadInputError(f"unknown layout {layout!r}; choose {' or '.join(LAYOUTS)}")
    model = load_checkpoint(source) if not isinstance(source, nn.Module) else source
    model = copy.deepcopy(model).eval()
    for attr in ("labels", "tokenizer", "meta"):
        setattr(model, attr, getattr(source, attr, getattr(model, attr, None)))
    model.head_impl = head_impl
    model.layout = layout
    try:
        model.heads_gathered()
    except ValueError as e:
        raise BadInputError(f"the checkpoint's head keep rates do not fit it ({e}); measure them again with "
                            "`trimkit calibrate budget`") from None
    if mode == "static":
        n = len(model.token_trimmers)
        if keep_ratios is not None:
            ratios = parse_keep_ratios(keep_ratios, n) if isinstance(keep_ratios, str) else keep_ratios
            model.trim = dataclasses.replace(model.trim, static_keep_ratios=ratios)
        if not model.trim.static_keep_ratios:
            raise BadInputError("static export needs keep ratios: run `trimkit calibrate budget` or pass --keep-ratios")
    return model


def _export_proto(model: MeterModel, mode: str, opset: int, precision: str):
    """torch.export -> ONNX ModelProto (in memory) with dynamic batch and text_len."""
    from torch.export import Dim

    if precision == "fp16":  # a half copy; the caller's model stays the fp32 reference
        model = copy.deepcopy(model).half()
    wrapper = ExportWrapper(model, TRIM_MODE_OF[mode], fp16=precision == "fp16").eval()
    c = model.config
    example = sample_inputs(c, 2, min(c.max_text_len, 6), ragged=False, tokenizer=getattr(model, "tokenizer", None))
    batch = Dim("batch", min=1, max=MAX_BATCH)
    text = Dim("text_len", min=2, max=c.max_text_len)
    shapes = {"pixel_values": {0: batch}, "input_ids": {0: batch, 1: text}, "attention_mask": {0: batch, 1: text}}
    quiet = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet), \
            quiet_logs(), torch.no_grad():
        warnings.simplefilter("ignore")
        try:
            program = torch.onnx.export(wrapper, example, dynamo=True, dynamic_shapes=shapes,
                                        input_names=list(INPUT_NAMES), output_names=list(OUTPUT_NAMES),
                                        opset_version=opset, verbose=False)
        except Exception as e:  # the exporter's failures are long; keep the first line
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CheckFailedError(f"torch.onnx.export failed ({mode}, opset {opset}): {first}") from e
    return program.model_proto


EXPORTER_LOGGERS = ("torch.onnx", "torch.export", "torch._export", "torch.fx", "onnxscript", "torch._dynamo")


@contextlib.contextmanager
def quiet_logs(names=EXPORTER_LOGGERS):
    """Raise these loggers ('' is the root logger) to ERROR inside; their levels come back after."""
    old = {n: logging.getLogger(n).level for n in names}
    for n in names:
        logging.getLogger(n).setLevel(logging.ERROR)
    try:
        yield
    finally:
        for n, lvl in old.items():
            logging.getLogger(n).setLevel(lvl)


@torch.no_grad()
def check_onnx(model: MeterModel, path: str | os.PathLike, mode: str, *, precision: str = "fp32",
               shapes: list[tuple[int, int]] | None = None, seed: int = 0) -> dict[str, Any]:
    """ONNX Runtime vs PyTorch (fp32) on random inputs: max |logits| error and keep_counts per shape.

    fp32: every sample must match (logits within tolerance, keep_counts equal). fp16: pruning
    decisions near the threshold may flip; samples whose keep_counts differ are counted, not
    compared, and at most a quarter of them may flip.
    """
    c = model.config
    short = min(c.max_text_len, max(2, c.max_text_len // 3))
    shapes = shapes or [(1, short), (3, short), (1, c.max_text_len), (3, c.max_text_len)]
    tol = {"atol": tolerance(precision).atol, "rtol": tolerance(precision).rtol}
    sess = ort_session(path)
    rows, ok = [], True
    for i, (b, n) in enumerate(shapes):
        pv, ids, mask = sample_inputs(c, b, n, seed=seed + i, tokenizer=getattr(model, "tokenizer", None))
        ref = model(pv, ids, mask, mode=TRIM_MODE_OF[mode])
        logits, counts = sess.run(list(OUTPUT_NAMES), ort_feed(pv, ids, mask))
        got = torch.from_numpy(logits)
        agree = (torch.from_numpy(counts) == ref.keep_counts).flatten(1).all(dim=1)  # (B,)
        flips = int((~agree).sum())
        if precision == "fp16":
            rows_ok = agree
            same = flips <= b // 4
        else:
            rows_ok = torch.ones(b, dtype=torch.bool)
            same = flips == 0
        err = float((got - ref.logits)[rows_ok].abs().max()) if rows_ok.any() else 0.0
        close = bool(torch.allclose(got[rows_ok], ref.logits[rows_ok], **tol))
        ok &= close and same
        rows.append({"batch": b, "text_len": n, "max_abs_err": err, "logits_close": close,
                     "keep_counts_equal": flips == 0, "decision_flips": flips})
    return {"passed": ok, "tolerance": tol, "shapes": rows}


def to_onnx(source: str | os.PathLike | MeterModel, out: str | os.PathLike, *, mode: str = "adaptive",
            opset: int = DEFAULT_OPSET, precision: str = "fp32", keep_ratios: str | list | None = None,
            head_impl: str = "auto", layout: str = "packed", ort_optimize: bool = False, force: bool = False,
            check: bool = True, log=None) -> OnnxExport:
    """Export a checkpoint (or model) to one ONNX file; checked, atomic, never overwriting without force.
    `layout` ("packed" | "padded"): how the adaptive graph lays out kept tokens (`MeterModel.layout`)."""
    say = log or (lambda msg: None)
    out = check_writable(out, force=force)
    check_opset(opset)
    t = {}
    t0 = time.perf_counter()
    model = _prepare_model(source, mode, keep_ratios, head_impl, precision, layout)
    # the trace is the export's longest silent step (about a minute for `small`, minutes at BLIP's size)
    say(f"tracing the {mode} graph with torch.export ...")
    proto = _export_proto(model, mode, opset, precision)
    simplify(proto)
    written = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if written != opset:  # the exporter may raise or lower the opset it was asked for
        raise CheckFailedError(f"torch.onnx.export wrote opset {written} when asked for {opset}; nothing written")
    t["export"] = time.perf_counter() - t0
    say(f"exported {mode} graph in {t['export']:.1f} s")
    if mode == "adaptive" and model.trim.head_trimming:
        say(heads_line(model))
    import onnx

    stamp_metadata(proto, export_metadata(model, mode, precision))
    if proto.ByteSize() > MAX_PROTO_BYTES:
        raise BadInputError(f"the {mode} graph is {proto.ByteSize() / 2**30:.1f} GiB: above the 2 GB single-file limit")
    report: dict[str, Any] = {}
    with atomic_path(out, force=force) as tmp:
        onnx.save(proto, str(tmp))
        t1 = time.perf_counter()
        onnx.checker.check_model(str(tmp), full_check=True)
        t["checker"] = time.perf_counter() - t1
        if ort_optimize:
            t1 = time.perf_counter()
            optimized = tmp.with_name(tmp.name + ".opt")
            try:
                ort_session(tmp, optimized_out=optimized, level="extended")
                opt_proto = onnx.load(str(optimized))
            finally:
                with contextlib.suppress(FileNotFoundError):
                    optimized.unlink()
            stamp_metadata(opt_proto, export_metadata(model, mode, precision, {"ort_optimized": "extended, CPU"}))
            onnx.save(opt_proto, str(tmp))
            t["ort_optimize"] = time.perf_counter() - t1
            say(f"ONNX Runtime-optimized graph (extended, CPU) in {t['ort_optimize']:.1f} s")
        if check:
            t1 = time.perf_counter()
            report = check_onnx(model, tmp, mode, precision=precision)
            t["check"] = time.perf_counter() - t1
            worst = max(r["max_abs_err"] for r in report["shapes"])
            say(f"ONNX Runtime vs PyTorch: max |logits err| {worst:.2e} (atol {report['tolerance']['atol']}), "
                f"keep_counts equal: {all(r['keep_counts_equal'] for r in report['shapes'])}, in {t['check']:.1f} s")
            if not report["passed"]:
                bad = [r for r in report["shapes"] if not (r["logits_close"] and r["keep_counts_equal"])]
                raise CheckFailedError(
                    f"{out}: exported graph does not match PyTorch at batch {bad[0]['batch']}, text length "
                    f"{bad[0]['text_len']} (max |err| {bad[0]['max_abs_err']:.2e}, keep_counts equal: "
                    f"{bad[0]['keep_counts_equal']}); nothing written")
        size = tmp.stat().st_size
        digest = sha256_file(tmp)
    return OnnxExport(Path(out), mode, opset, precision, t, size, digest, report)
