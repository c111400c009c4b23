"""What is inside a checkpoint or an ONNX file, as plain dicts (the CLI renders them)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .checkpoint import model_from_checkpoint, read_checkpoint
from .config import TEXT, VISION
from .contract import HEAD_KEEP_BATCH, META_CONFIG, META_LAYOUT, META_MODE, heads_summary, read_metadata
from .cost import depth_flops, head_trimmer_flops, projection_flops, token_trimmer_flops
from .errors import BadInputError
from .trimmers import Idle

__all__ = ["describe", "describe_checkpoint", "describe_onnx"]


def describe(path: str | os.PathLike, *, text_len: int | None = None) -> dict[str, Any]:
    """Dispatch on the file: an ONNX model (by its `.onnx` suffix) or a trimkit checkpoint."""
    p = Path(path)
    if p.suffix == ".onnx":
        return describe_onnx(p)
    return describe_checkpoint(p, text_len=text_len)


def describe_checkpoint(path: str | os.PathLike, *, text_len: int | None = None) -> dict[str, Any]:
    ckpt = read_checkpoint(path)
    model = model_from_checkpoint(ckpt, path)
    c, t = model.config, model.trim
    n_trim = sum(p.numel() for p in model.trimmer_parameters())
    n_all = sum(p.numel() for p in model.parameters())
    nv = c.num_patches + 1
    nt = c.max_text_len if text_len is None else text_len
    if not 1 <= nt <= c.max_text_len:
        raise BadInputError(f"--text-len {nt} is outside 1..{c.max_text_len}")
    layers = []
    for depth in range(c.num_layers):
        fusion = c.is_fusion(depth)
        modules = c.attention_modules(depth)
        flops = depth_flops(c, depth, [nv, nt], [c.layer_spec(depth, m).num_heads for m, _ in modules])
        if depth == c.encoder_depth:
            flops += projection_flops(c, [nv, nt])
        trimmed = depth >= t.first_trimmed_layer
        overhead = 0
        if trimmed:  # the trimmers that exist at this depth (none for an idle or untrimmed stream)
            ti = depth - t.first_trimmed_layer
            kw = dict(hidden_ratio=t.score_hidden_ratio, proj_ratio=t.proj_ratio, local_only=t.local_only)
            w = [c.stream_width(depth, m) for m in (VISION, TEXT)]
            if t.token_trimming:
                for m, n in ((VISION, nv), (TEXT, nt)):
                    if not isinstance(model.token_trimmers[ti][m], Idle):
                        overhead += token_trimmer_flops(n, w[m], w[1 - m], **kw)
            if t.head_trimming:
                for j, (m, _) in enumerate(modules):
                    if not isinstance(model.head_trimmers[ti][j], Idle):
                        overhead += head_trimmer_flops(w[m], w[1 - m], c.layer_spec(depth, m).num_heads)
        layers.append({"depth": depth, "kind": "fusion" if fusion else "encoder", "trimmed": trimmed,
                       "flops": int(flops), "trimmer_flops": int(overhead)})
    return {
        "kind": "checkpoint",
        "path": str(path),
        "format_version": ckpt["format_version"],
        "trimkit_version": ckpt["trimkit_version"],
        "meta": ckpt.get("meta") or {},
        "model_config": c.to_dict(),
        "trim_config": t.to_dict(),
        "labels": list(model.labels),
        "vocab_size": c.vocab_size,
        "parameters": {"total": n_all, "backbone": n_all - n_trim, "trimmers": n_trim},
        "trimmers": {"token": sum(not isinstance(m, Idle) for pair in model.token_trimmers for m in pair)
                     if t.token_trimming else 0,
                     "head": sum(not isinstance(m, Idle) for mods in model.head_trimmers for m in mods)
                     if t.head_trimming else 0},
        "flops_input": {"vision_tokens": nv, "text_tokens": nt},
        "layers": layers,
        "has_train_state": "train_state" in ckpt,
    }


def describe_onnx(path: str | os.PathLike) -> dict[str, Any]:
    import onnx  # lazy: a runtime dependency, but not needed to import trimkit

    p = Path(path)
    if not p.exists():
        raise BadInputError(f"{p}: no such file")
    try:
        model = onnx.load(str(p), load_external_data=False)
    except Exception as e:  # onnx raises DecodeError and friends
        raise BadInputError(f"{p}: not an ONNX model ({type(e).__name__})") from None
    if not model.graph.node and not model.graph.input:
        raise BadInputError(f"{p}: not an ONNX model (empty graph)")

    def io(values) -> list[dict[str, Any]]:
        out = []
        for v in values:
            tt = v.type.tensor_type
            dims = [d.dim_param or (d.dim_value if d.HasField("dim_value") else "?") for d in tt.shape.dim]
            out.append({"name": v.name, "dtype": onnx.TensorProto.DataType.Name(tt.elem_type).lower(),
                        "shape": dims})
        return out

    ops: dict[str, int] = {}
    for n in model.graph.node:
        ops[n.op_type] = ops.get(n.op_type, 0) + 1
    meta = read_metadata(model)
    return {
        "kind": "onnx",
        "path": str(p),
        "ir_version": model.ir_version,
        "opsets": {o.domain or "ai.onnx": o.version for o in model.opset_import},
        "producer": f"{model.producer_name} {model.producer_version}".strip(),
        "inputs": io(model.graph.input),
        "outputs": io(model.graph.output),
        "metadata": meta,
        # exports older than the packed layout carry no key and are padded; None: not a trimkit graph
        "layout": meta.get(META_LAYOUT, "padded" if META_MODE in meta else None),
        "heads": _heads_summary(meta),
        "attention_runs": _runs_summary(meta),
        "ops": dict(sorted(ops.items())),
        "nodes": len(model.graph.node),
    }


def _config(meta: dict[str, str]) -> dict:
    try:
        cfg = json.loads(meta.get(META_CONFIG, "{}"))
    except ValueError:
        return {}
    return cfg if isinstance(cfg, dict) else {}


def _runs_summary(meta: dict[str, str]) -> str | None:
    """Which packed streams run their self-attention products in runs of samples: `image in 2 runs`."""
    runs = _config(meta).get("attention_runs") or []
    parts = [f"{name} in {r} runs" for name, r in zip(("image", "text"), runs) if isinstance(r, int) and r > 1]
    return ", ".join(parts) or None


def _heads_summary(meta: dict[str, str]) -> str | None:
    """How an adaptive graph drops heads, from its metadata: `auto: gathered in 14 of 46 trimmed attention modules`."""
    cfg = _config(meta)
    plan = cfg.get("heads_gathered")
    if not "".join(plan or []).replace("-", "") or "head_impl" not in cfg:
        return None
    trim = cfg.get("trim_config") if isinstance(cfg.get("trim_config"), dict) else {}
    planned = (f" (planned for batch {trim.get('head_keep_batch', HEAD_KEEP_BATCH)})"
               if cfg["head_impl"] == "auto" and trim.get("head_batch_keep") else "")
    return f"{cfg['head_impl']}: {heads_summary(plan)}{planned}"
