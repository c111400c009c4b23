"""Rich tables for the CLI (kept out of the library functions that produce the data)."""

from __future__ import annotations

import json
from typing import Any

__all__ = ["render_description", "fmt_flops"]


def fmt_flops(x: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(x) >= div:
            return f"{x / div:.2f} {unit}"
    return f"{x:.0f}"


def render_description(info: dict[str, Any], console) -> None:
    from rich.markup import escape
    from rich.table import Table

    if info["kind"] == "onnx":
        console.print(f"[bold]{info['path']}[/bold]  ONNX ir {info['ir_version']}, opsets {info['opsets']}, "
                      f"{info['nodes']} nodes, producer {info['producer']}")
        t = Table(title="inputs / outputs")
        for col in ("", "name", "dtype", "shape"):
            t.add_column(col)
        for kind in ("inputs", "outputs"):
            for v in info[kind]:
                t.add_row(kind[:-1], v["name"], v["dtype"], escape("[" + ", ".join(map(str, v["shape"])) + "]"))
        console.print(t)
        meta = Table(title="metadata")
        meta.add_column("key")
        meta.add_column("value", overflow="fold")
        for k, v in info["metadata"].items():
            meta.add_row(k, escape(v if len(v) < 400 else v[:400] + " ..."))
        console.print(meta)
        console.print("ops: " + ", ".join(f"{k}×{v}" for k, v in info["ops"].items()))
        return

    c, t, p = info["model_config"], info["trim_config"], info["parameters"]
    meta = info["meta"]
    console.print(f"[bold]{info['path']}[/bold]  trimkit checkpoint v{info['format_version']} "
                  f"(trimkit {info['trimkit_version']}), preset {meta.get('preset', '?')}, "
                  f"data {meta.get('data', '?')}")
    console.print(f"parameters {p['total']:,} (backbone {p['backbone']:,}, trimmers {p['trimmers']:,}); "
                  f"{len(info['labels'])} labels, {info['vocab_size']} words; "
                  f"train state: {'yes' if info['has_train_state'] else 'no'}")
    console.print("model: " + json.dumps(c))
    console.print(f"trimmers: {info['trimmers']['token']} token, {info['trimmers']['head']} head; "
                  + json.dumps({k: v for k, v in t.items() if k != 'static_keep_ratios'}))
    fi = info["flops_input"]
    table = Table(title=f"FLOPs per layer, untrimmed ({fi['vision_tokens']} vision + {fi['text_tokens']} text tokens)")
    for col in ("depth", "kind", "trimmed", "FLOPs", "share", "trimmer FLOPs"):
        table.add_column(col, justify="right" if col in ("depth", "FLOPs", "share", "trimmer FLOPs") else "left")
    total = sum(r["flops"] for r in info["layers"])
    for r in info["layers"]:
        table.add_row(str(r["depth"]), r["kind"], "yes" if r["trimmed"] else "no", fmt_flops(r["flops"]),
                      f"{100 * r['flops'] / total:.1f}%", fmt_flops(r["trimmer_flops"]))
    table.add_row("all", "", "", fmt_flops(total), "100%", fmt_flops(sum(r["trimmer_flops"] for r in info["layers"])))
    console.print(table)


def render_eval(report: dict[str, Any], console) -> None:
    from rich.table import Table

    t = Table(title=f"{report['checkpoint']} on {report['data']}/{report['split']} ({report['samples']} questions)")
    for col in ("mode", "accuracy", "FLOPs ratio mean", "p10", "p50", "p90"):
        t.add_column(col, justify="left" if col == "mode" else "right")
    for mode in report["modes"]:
        r = report[mode]
        f = r["flops_ratio"]
        t.add_row(mode, f"{100 * r['accuracy']:.2f}%", f"{f['mean']:.3f}", f"{f['p10']:.3f}", f"{f['p50']:.3f}",
                  f"{f['p90']:.3f}")
    console.print(t)
    mode = "prune" if "prune" in report["modes"] else report["modes"][-1]
    k = Table(title=f"mean tokens kept entering each trimmed layer ({mode})")
    for col in ("depth", "kind", "vision", "text"):
        k.add_column(col, justify="right")
    for layer, (v, tx) in zip(report["trimmed_layers"], report[mode]["keep_per_layer"]):
        k.add_row(str(layer["depth"]), layer["kind"], f"{v:.1f}", f"{tx:.1f}")
    console.print(k)
