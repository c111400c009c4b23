"""Rich tables for the CLI (kept out of the library functions that produce the data)."""

from __future__ import annotations

import json
from typing import Any

__all__ = ["render_description", "render_eval", "render_verify", "render_bench", "render_budget", "fmt_flops"]


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
                      f"{info['nodes']} nodes, producer {info['producer']}"
                      + (f", {info['layout']} layout" if info.get("layout") else ""))
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
    imported = meta.get("imported")
    origin = (f"imported {imported['vision']['family']} + {imported['text']['family']}" if imported
              else f"preset {meta.get('preset', '?')}")
    console.print(f"[bold]{info['path']}[/bold]  trimkit checkpoint v{info['format_version']} "
                  f"(trimkit {info['trimkit_version']}), {origin}, "
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
    dec = report[mode].get("decisions")
    k = Table(title=f"mean tokens kept entering each trimmed layer ({mode})"
              + ("; closest token decision, p1 over questions, relative to its scale" if dec else ""))
    for col in ("depth", "kind", "vision", "text") + (("closest vision", "closest text") if dec else ()):
        k.add_column(col, justify="right")
    closest = dec["token_relative_p1_per_layer"] if dec else [[]] * len(report["trimmed_layers"])
    for layer, (v, tx), near in zip(report["trimmed_layers"], report[mode]["keep_per_layer"], closest):
        k.add_row(str(layer["depth"]), layer["kind"], f"{v:.1f}", f"{tx:.1f}", *(_num(x) for x in near))
    console.print(k)
    if dec:
        rel, dist = dec["relative"], dec["absolute"]
        console.print(f"closest gate decision per question ({mode}), p1 / p5 / p50 over questions: "
                      f"|logit - threshold| / scale {' / '.join(_num(rel[q]) for q in ('p1', 'p5', 'p50'))}, "
                      f"|logit - threshold| {' / '.join(_num(dist[q]) for q in ('p1', 'p5', 'p50'))} "
                      "(small: decisions int8 or fp16 can flip; see trimkit train --relative-margin)")


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.3g}"


def render_verify(report, console) -> None:
    from rich.markup import escape
    from rich.table import Table

    runtimes = report.runtimes or {report.runtime: {"numerics": report.numerics, "describe": {}}}
    for rt, rec in runtimes.items():
        n, d = rec["numerics"], rec.get("describe") or {}
        how = ", ".join(f"{k} {d[k]}" for k in ("version", "precision", "threads") if d.get(k) is not None)
        console.print(f"[bold]{report.artifact}[/bold] ({rt}{f' {how}' if how else ''}, {report.mode}) vs "
                      f"{report.checkpoint}: {n['samples']} samples, mean FLOPs ratio {n['mean_flops_ratio']:.3f}, "
                      f"max |err| {n['max_abs_err']:.2e}, mean |err| {n['mean_abs_err']:.2e}, "
                      f"max rel {n['max_rel_err']:.2e}, decision flips {n['decision_flips']}")
    if report.task:
        acc = report.task["accuracy"]
        console.print("accuracy: " + ", ".join(f"{k} {100 * v:.2f}%" for k, v in acc.items()))
    if report.speed:
        names = [k for k in report.speed[0] if isinstance(report.speed[0][k], dict) and k != "speedups"]
        t = Table(title=f"latency and throughput (artifact: {report.runtime})")
        for col in ("batch", "text", "runtime", "p50 ms", "p90 ms", "items/s", "vs full", "vs torch"):
            t.add_column(col, justify="left" if col == "runtime" else "right",
                         overflow="fold" if col == "runtime" else "ellipsis")
        for row in report.speed:
            for i, k in enumerate(names):
                first = i == 0
                rt = k[len("artifact["):-1] if k.startswith("artifact[") else report.runtime if k == "artifact" else None
                sp = row.get("speedups", {}).get(rt) if rt else None
                vs_full = f"{sp['vs_full']:.2f}×" if sp and sp.get("vs_full") else ""
                vs_torch = f"{sp['vs_pytorch']:.2f}×" if sp else ""
                t.add_row(str(row["batch"]) if first else "", str(row["text_len"]) if first else "", escape(k),
                          f"{row[k]['p50_ms']:.2f}", f"{row[k]['p90_ms']:.2f}", f"{row[k]['throughput']:.0f}",
                          vs_full, vs_torch, end_section=i == len(names) - 1)
        console.print(t)
    t = Table(title="checks")
    for col in ("check", "value", "threshold", "result"):
        t.add_column(col, justify="left" if col == "check" else "right")
    for c in report.checks:
        value = "-" if c.value is None else f"{c.value:.4g}"
        t.add_row(f"{c.name} ({c.runtime})" if c.runtime and len(runtimes) > 1 else c.name, value,
                  f"{c.comparison} {c.threshold:.4g}", "[green]pass[/green]" if c.passed
                  else "[red]FAIL[/red]")
    console.print(t)
    for c in report.checks:
        if not c.passed and c.detail:
            console.print(f"[red]{c.name}[/red]{f' ({c.runtime})' if c.runtime else ''}: {escape(c.detail)}",
                          soft_wrap=True)
    console.print(f"verify {'passed' if report.passed else 'FAILED'} in {report.seconds:.1f} s")


def render_bench(result: dict[str, Any], console) -> None:
    from rich.table import Table

    t = Table(title=f"accuracy vs FLOPs ratio ({result['data']}, {result['samples']} test questions)")
    for col in ("target", "accuracy", "FLOPs ratio", "p10", "p90", "static @ same FLOPs"):
        t.add_column(col, justify="right")
    t.add_row("full", f"{100 * result['full']['accuracy']:.2f}%", "1.000", "", "", "")
    for p in result["points"]:
        s = p.get("static")
        t.add_row(p["label"], f"{100 * p['accuracy']:.2f}%", f"{p['flops_ratio']:.3f}", f"{p['flops_p10']:.3f}",
                  f"{p['flops_p90']:.3f}", f"{100 * s['accuracy']:.2f}%" if s else "-")
    console.print(t)
    lat = Table(title="latency p50 (ms)")
    lat.add_column("batch", justify="right")
    lat.add_column("text", justify="right")
    for name in result["runtimes"]:
        lat.add_column(name, justify="right")
    for r in result["latency"]:
        lat.add_row(str(r["batch"]), str(r["text_len"]), *(f"{r[name]['p50_ms']:.2f}" for name in result["runtimes"]))
    console.print(lat)


def render_budget(rec: dict[str, Any], console) -> None:
    from rich.table import Table

    h = rec["holdout"]
    offsets = rec["layer_offsets"] or [rec["threshold_offset"]]
    t = Table(title=f"budget calibration to FLOPs ratio {rec['target']} (held-out: {h['samples']} {h['split']} "
                    f"questions; {rec['method']} {', '.join(f'{o:+.2f}' for o in offsets)})")
    for col in ("model", "accuracy", "mean FLOPs ratio"):
        t.add_column(col, justify="left" if col == "model" else "right")
    for name, key in (("before (adaptive)", "before"), ("after (adaptive)", "adaptive"),
                      ("after (static keep ratios)", "static")):
        t.add_row(name, f"{100 * h[key]['accuracy']:.2f}%", f"{h[key]['flops_ratio']:.3f}")
    console.print(t)
