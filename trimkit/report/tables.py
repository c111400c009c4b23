"""Rich tables for the CLI (kept out of the library functions that produce the data)."""

from __future__ import annotations

import json
from typing import Any

from ..runtime.timing import NOISY_SPREAD, SPREAD

__all__ = ["render_description", "render_eval", "render_verify", "render_speed", "render_bench", "render_budget",
           "render_heads_plan", "fmt_flops", "flops_legend", "artifact_label", "bench_runtime_label"]


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
                      + (f", {info['layout']} layout" if info.get("layout") else "")
                      + (f", heads {info['heads']}" if info.get("heads") else "")
                      + (f", self-attention products: {info['attention_runs']}" if info.get("attention_runs") else ""))
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
    for col in ("mode", "accuracy", "decided", "p10", "p50", "p90", "executed"):
        t.add_column(col, justify="left" if col == "mode" else "right")
    for mode in report["modes"]:
        r = report[mode]
        f = r["flops_ratio"]
        e = r.get("executed_flops_ratio")
        t.add_row(mode, f"{100 * r['accuracy']:.2f}%", f"{f['mean']:.3f}", f"{f['p10']:.3f}", f"{f['p50']:.3f}",
                  f"{f['p90']:.3f}", f"{e['mean']:.3f}" if e else "-")
    console.print(t)
    console.print(flops_legend(report), soft_wrap=False)
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


def flops_legend(how: dict[str, Any], *, spread: str = "mean, p10/p50/p90 over questions") -> str:
    """The legend under a table of FLOPs ratios: what `decided` and `executed` count, and how the executed
    ratio was run (`how`: batch_size, layout, head_impl, as `evaluate` reports them)."""
    run = ""
    if how.get("batch_size"):
        heads = {"gather": "gathered heads", "mask": "masked heads"}.get(how.get("head_impl", ""), "")
        run = f" in batches of up to {how['batch_size']}" + (f", {how['layout']} layout" if how.get("layout") else "") + (
            f", {heads}" if heads else "")
    return (f"FLOPs ratio = FLOPs / the untrimmed model's on the same input. decided ({spread}): the tokens "
            f"and heads the trimmers keep. executed: what the model ran{run}, padding and masked heads included.")


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.3g}"


RUNTIME_SHORT = {"onnxruntime": "ort", "openvino": "ov", "tensorrt": "trt", "pytorch": "torch"}
NOISY = "~"  # marks a ratio whose timings spread too wide to trust (`runtime.timing.speedup`)


def _ms(x: float) -> str:
    """Milliseconds in at most 6 characters."""
    return f"{x:.2f}" if x < 100 else f"{x:.1f}" if x < 1000 else f"{x:.0f}"


def _times(ratio: float | None, noisy: bool | None = False) -> str:
    if ratio is None:
        return ""
    text = f"{ratio:.2f}×" if ratio < 10 else f"{ratio:.1f}×" if ratio < 100 else f"{ratio:.0f}×"
    return (NOISY if noisy else "") + text


def _noisy_legend() -> str:
    return (f"{NOISY}: either side's repeats spread over {100 * NOISY_SPREAD:.0f}% ({SPREAD}), so the ratio is "
            "imprecise")


def artifact_label(mode: str, layout: str = "") -> str:
    """`adaptive (packed)`: an adaptive artifact's row names its token layout (other modes are padded)."""
    return f"{mode} ({layout})" if mode == "adaptive" and layout else mode


def render_verify(report, console) -> None:
    from rich.markup import escape
    from rich.table import Table

    runtimes = report.runtimes or {report.runtime: {"numerics": report.numerics, "describe": {}}}
    for rt, rec in runtimes.items():
        n, d = rec["numerics"], rec.get("describe") or {}
        how = ", ".join(f"{k} {d[k]}" for k in ("version", "precision", "threads") if d.get(k) is not None)
        executed = n.get("mean_executed_flops_ratio")
        flops = f"FLOPs ratio decided {n['mean_flops_ratio']:.3f}" + (
            f", executed {executed:.3f} (batches of up to {n['executed_batch_size']}, {report.layout or 'padded'} layout)"
            if executed is not None else "")
        console.print(f"[bold]{escape(report.artifact)}[/bold] ({rt}{f' {how}' if how else ''}, "
                      f"{artifact_label(report.mode, report.layout)}) vs {escape(report.checkpoint)}: "
                      f"{n['samples']} samples, {flops}, max |err| {n['max_abs_err']:.2e}, "
                      f"mean |err| {n['mean_abs_err']:.2e}, max rel {n['max_rel_err']:.2e}, "
                      f"decision flips {n['decision_flips']}")
    if report.task:
        acc = report.task["accuracy"]
        console.print("accuracy: " + ", ".join(f"{k} {100 * v:.2f}%" for k, v in acc.items()))
    if report.speed:
        render_speed(report, console)
    t = Table(title="checks")
    for col in ("check", "value", "threshold", "result"):
        t.add_column(col, justify="left" if col == "check" else "right")
    for c in report.checks:
        value = "-" if c.value is None else f"{c.value:.4g}"
        t.add_row(f"{c.name} ({c.runtime})" if c.runtime and len(runtimes) > 1 else c.name, value,
                  c.display or f"{c.comparison} {c.threshold:.4g}", "[green]pass[/green]" if c.passed
                  else "[red]FAIL[/red]")
    console.print(t)
    for c in report.checks:
        if not c.passed and c.detail:
            console.print(f"[red]{c.name}[/red]{f' ({c.runtime})' if c.runtime else ''}: {escape(c.detail)}",
                          soft_wrap=True)
    console.print(f"verify {'passed' if report.passed else 'FAILED'} in {report.seconds:.1f} s")


def render_speed(report, console) -> None:
    """verify's speed table: one row per runner and shape, short labels, a legend underneath."""
    from rich.markup import escape
    from rich.table import Table

    first = report.speed[0]
    names = [k for k in first if isinstance(first[k], dict) and k != "speedups"]
    several = len(report.runtimes) > 1

    def runtime_of(name: str) -> str | None:
        if name == "artifact" or name == "full-export":
            return report.runtime
        if name.endswith("]") and "[" in name:
            return name[name.index("[") + 1:-1]
        return None

    def label(name: str) -> str:
        rt = runtime_of(name)
        suffix = f" {RUNTIME_SHORT.get(rt, rt)}" if several and rt else ""
        if name.startswith("artifact"):
            return artifact_label(report.mode, report.layout) + suffix
        if name.startswith("full-export"):
            return "full" + suffix
        return name.replace("pytorch-", "torch ")

    t = Table(title=f"latency and throughput ({report.runtime}"
                    + (f" and {', '.join(r for r in report.runtimes if r != report.runtime)}" if several else "")
                    + ")")
    for col in ("b", "text", "runner", "p50 ms", "spread", "vs full", "vs torch"):  # fits 80 columns
        t.add_column(col, justify="left" if col == "runner" else "right", no_wrap=True)
    for row in report.speed:
        for i, k in enumerate(names):
            rt = runtime_of(k) if k.startswith("artifact") else None
            sp = row.get("speedups", {}).get(rt) if rt else None
            rec = row[k]
            t.add_row(str(row["batch"]) if i == 0 else "", str(row["text_len"]) if i == 0 else "", escape(label(k)),
                      _ms(rec["p50_ms"]), f"{100 * rec['spread']:.0f}%" if "spread" in rec else "-",
                      _times(sp.get("vs_full"), sp.get("vs_full_noisy")) if sp else "",
                      _times(sp.get("vs_pytorch"), sp.get("vs_pytorch_noisy")) if sp else "",
                      end_section=i == len(names) - 1)
    console.print(t)
    rts = ", ".join(f"{RUNTIME_SHORT[r]}: {r}" for r in report.runtimes if r in RUNTIME_SHORT) if several else ""
    console.print(f"b: batch size; text: text tokens; ms per batch (p90 and throughput: --json); spread: "
                  f"{SPREAD} of the repeats; "
                  f"vs full / vs torch: p50 of the full export / of PyTorch over the artifact's p50 (above 1: the "
                  f"artifact is faster); {_noisy_legend()}" + (f"; {rts}" if rts else "") + ".")


def bench_runtime_label(name: str) -> str:
    """`trimkit bench`'s runner names in a few characters: `onnxruntime adaptive@0.5` -> `a@0.5`."""
    if name == "onnxruntime full":
        return "full"
    if name.startswith("onnxruntime adaptive@"):
        return "a@" + name.split("@", 1)[1]
    if name == "pytorch off":
        return "pt off"
    if name.startswith("pytorch prune@"):
        return "pt@" + name.split("@", 1)[1]
    return name


def render_bench(result: dict[str, Any], console) -> None:
    from rich.table import Table

    t = Table(title=f"accuracy vs FLOPs ratio ({result['data']}, {result['samples']} test questions)")
    for col in ("target", "accuracy", "decided", "p10", "p90", "executed", "static"):
        t.add_column(col, justify="right")

    def executed(rec: dict[str, Any]) -> str:
        return f"{rec['executed_flops_ratio']:.3f}" if rec.get("executed_flops_ratio") is not None else "-"

    t.add_row("full", f"{100 * result['full']['accuracy']:.2f}%", "1.000", "", "", executed(result["full"]), "")
    for p in result["points"]:
        s = p.get("static")
        t.add_row(p["label"], f"{100 * p['accuracy']:.2f}%", f"{p['flops_ratio']:.3f}", f"{p['flops_p10']:.3f}",
                  f"{p['flops_p90']:.3f}", executed(p), f"{100 * s['accuracy']:.2f}%" if s else "-")
    console.print(t)
    console.print(flops_legend(result.get("executed", {}), spread="mean, p10/p90 over questions")
                  + " static: the accuracy of static keep ratios at the same mean decided FLOPs ratio.")
    for i, chunk in enumerate(_fit_columns(result["runtimes"], console.width)):
        lat = Table(title="latency p50 (ms)" + (" (continued)" if i else ""))
        lat.add_column("b", justify="right")
        lat.add_column("text", justify="right")
        for name in chunk:
            lat.add_column(bench_runtime_label(name), justify="right", no_wrap=True)
        for r in result["latency"]:
            lat.add_row(str(r["batch"]), str(r["text_len"]),
                        *(_noisy_ms(r[name]) for name in chunk))
        console.print(lat)
    console.print(f"b: batch size; text: text tokens; full: ONNX Runtime, the full export; a@T: ONNX Runtime, the "
                  f"adaptive export at target T; pt off / pt@T: PyTorch eager, untrimmed / pruned at target T; "
                  f"{NOISY}: the repeats spread over {100 * NOISY_SPREAD:.0f}% ({SPREAD}): imprecise, compare "
                  f"with care; {result['repeats']} repeats each.")


def _fit_columns(names: list[str], width: int) -> list[list[str]]:
    """The runtimes in groups whose latency table fits `width` (each cell at most 7 characters wide: a
    marker and `_ms`); many targets continue in another table rather than squeeze the headers."""
    base = 4 + 7 + 1  # "b" and "text" columns with padding and rules, and the closing rule
    groups: list[list[str]] = [[]]
    used = base
    for name in names:
        w = max(len(bench_runtime_label(name)), 7) + 3
        if groups[-1] and used + w > width:
            groups.append([])
            used = base
        groups[-1].append(name)
        used += w
    return groups


def _noisy_ms(rec: dict[str, float]) -> str:
    return (NOISY if rec.get("spread", 0.0) > NOISY_SPREAD else "") + _ms(rec["p50_ms"])


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


def render_heads_plan(rec: dict[str, Any], console) -> None:
    """`calibrate heads`: per trimmed layer, the fraction of each attention module's heads a serving batch keeps
    and the plan `export --heads auto` makes from it (g gathered, m masked, - no head trimmer), beside the old one."""
    from rich.table import Table

    from ..contract import heads_summary

    before = rec.get("before")
    t = Table(title=f"--heads auto planned for batch {rec['heads_batch']} ({rec['samples']} {rec['split']} questions)")
    t.add_column("trimmed layer", justify="right")
    t.add_column(f"heads a batch keeps, per module (gathered <= {rec['gather_max_keep']:.2f})")
    t.add_column("plan")
    if before:
        t.add_column(f"plan at batch {before['heads_batch']}")
    for i, (rates, plan) in enumerate(zip(rec["head_batch_keep"], rec["plan"])):
        row = [str(i), "  ".join(f"{r:.2f}" for r in rates), plan]
        t.add_row(*(row + [before["plan"][i]] if before else row))
    console.print(t)
    console.print(f"heads: {heads_summary(rec['plan'])}"
                  + (f" (was gathered in {''.join(before['plan']).count('g')} at batch {before['heads_batch']})"
                     if before else ""))
