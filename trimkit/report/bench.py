"""The `trimkit bench` report: bench.json, report.md and three PNG plots (accuracy vs FLOPs ratio,
latency vs text length per runtime, kept tokens per layer) from the sweep's results."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["write_report", "REPORT_FILES"]

REPORT_FILES = ("report.md", "bench.json", "accuracy_vs_flops.png", "latency_vs_text_len.png",
                "kept_tokens_per_layer.png")


def write_report(result: dict[str, Any], folder: Path) -> None:
    """Every report file into `folder` (the caller makes the folder appear whole)."""
    _plots(result, folder)
    (folder / "bench.json").write_text(json.dumps(result, indent=2) + "\n")
    (folder / "report.md").write_text(_markdown(result))


def _plots(result: dict[str, Any], folder: Path) -> None:
    from .plots import pyplot, save_figure

    plt = pyplot()
    pts = result["points"]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter([1.0], [100 * result["full"]["accuracy"]], marker="*", s=160, color="black", label="full (off)",
               zorder=3)
    xs = sorted(pts, key=lambda p: p["flops_ratio"])
    ax.plot([p["flops_ratio"] for p in xs], [100 * p["accuracy"] for p in xs], "o-", label="adaptive (SmartTrim)")
    for p in xs:
        ax.annotate(p["label"], (p["flops_ratio"], 100 * p["accuracy"]), textcoords="offset points", xytext=(4, 4),
                    fontsize=8)
    st = [p for p in xs if "static" in p]
    if st:
        ax.plot([p["static"]["flops_ratio"] for p in st], [100 * p["static"]["accuracy"] for p in st], "s--",
                label="static keep ratios, same mean FLOPs")
    ax.set_xlabel("mean FLOPs ratio (trimmed / full)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"accuracy vs compute ({result['data']}, {result['samples']} test questions)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, folder / "accuracy_vs_flops.png")

    batches = sorted({r["batch"] for r in result["latency"]})
    fig, axes = plt.subplots(1, len(batches), figsize=(5 * len(batches), 4), squeeze=False)
    for ax, b in zip(axes[0], batches):
        rows = [r for r in result["latency"] if r["batch"] == b]
        for name in result["runtimes"]:
            ax.plot([r["text_len"] for r in rows], [r[name]["p50_ms"] for r in rows], "o-", label=name)
        ax.set_xlabel("text length (tokens)")
        ax.set_ylabel("latency p50 (ms)")
        ax.set_title(f"batch {b}")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    save_figure(fig, folder / "latency_vs_text_len.png")

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    layers = result["trimmed_layers"]
    for m, (ax, name) in enumerate(zip(axes, ("vision", "text"))):
        for p in pts:
            ax.plot(layers, [k[m] for k in p["keep_per_layer"]], "o-", label=f"{p['label']} ({p['flops_ratio']:.2f})")
        ax.set_xlabel("layer (depth)")
        ax.set_ylabel(f"{name} tokens kept (mean)")
        ax.set_title(f"{name} tokens entering each trimmed layer")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    axes[0].legend(title="target (FLOPs ratio)", fontsize=8)
    save_figure(fig, folder / "kept_tokens_per_layer.png")


def _markdown(result: dict[str, Any]) -> str:
    lines = [f"# trimkit bench: `{result['checkpoint']}`", "",
             f"Data `{result['data']}`: accuracy on {result['samples']} test questions, budgets calibrated on "
             f"{result['calibration_samples']} validation questions (global threshold offset, no retraining). "
             f"Latency: ONNX Runtime CPU ({result['threads'] or 'default'} threads) and PyTorch eager, "
             f"{result['repeats']} interleaved repeats, medians. {result['seconds']:.0f} s in all.", "",
             "## Accuracy vs FLOPs ratio", "", "![accuracy vs FLOPs](accuracy_vs_flops.png)", "",
             "| target | threshold offset | accuracy | FLOPs ratio mean | p10 | p90 | static at same FLOPs |",
             "|---|---|---|---|---|---|---|",
             f"| full (off) | | {100 * result['full']['accuracy']:.2f}% | 1.000 | | | |"]
    for p in result["points"]:
        s = p.get("static")
        st = f"{100 * s['accuracy']:.2f}% @ {s['flops_ratio']:.3f}" if s else "-"
        lines.append(f"| {p['label']} | {p['threshold_offset']:+.3f} | {100 * p['accuracy']:.2f}% | "
                     f"{p['flops_ratio']:.3f} | {p['flops_p10']:.3f} | {p['flops_p90']:.3f} | {st} |")
    names = result["runtimes"]
    lines += ["", "## Latency vs text length", "", "![latency](latency_vs_text_len.png)", "",
              "p50 ms (speedup of each adaptive export over the full export in brackets).", "",
              "| batch | text | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for r in result["latency"]:
        full = r["onnxruntime full"]["p50_ms"]
        cells = []
        for name in names:
            c = f"{r[name]['p50_ms']:.2f}"
            if name.startswith("onnxruntime adaptive"):
                c += f" ({full / r[name]['p50_ms']:.2f}×)"
            cells.append(c)
        lines.append(f"| {r['batch']} | {r['text_len']} | " + " | ".join(cells) + " |")
    lines += ["", "## Tokens kept per layer", "", "![kept tokens](kept_tokens_per_layer.png)", "",
              "| target | " + " | ".join(f"L{d} v/t" for d in result["trimmed_layers"]) + " |",
              "|---|" + "---|" * len(result["trimmed_layers"])]
    for p in result["points"]:
        lines.append(f"| {p['label']} | " + " | ".join(f"{v:.1f}/{t:.1f}" for v, t in p["keep_per_layer"]) + " |")
    return "\n".join(lines) + "\n"
