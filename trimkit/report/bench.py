"""The `trimkit bench` report: bench.json, report.md and three PNG plots (accuracy vs FLOPs ratio,
latency vs text length per runtime, kept tokens per layer) from the sweep's results."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..runtime.timing import NOISY_SPREAD, SPREAD, speedup
from .tables import NOISY, flops_legend

__all__ = ["write_report", "REPORT_FILES", "accuracy_figure", "latency_figure", "kept_tokens_figure"]

REPORT_FILES = ("report.md", "bench.json", "accuracy_vs_flops.png", "latency_vs_text_len.png",
                "kept_tokens_per_layer.png")


def write_report(result: dict[str, Any], folder: Path) -> None:
    """Every report file into `folder` (the caller makes the folder appear whole)."""
    _plots(result, folder)
    (folder / "bench.json").write_text(json.dumps(result, indent=2) + "\n")
    (folder / "report.md").write_text(_markdown(result))


def _plots(result: dict[str, Any], folder: Path) -> None:
    from .plots import save_figure

    # each figure lays itself out (the latency legend sits outside the axes)
    save_figure(accuracy_figure(result), folder / "accuracy_vs_flops.png", tight=False)
    save_figure(latency_figure(result), folder / "latency_vs_text_len.png", tight=False)
    save_figure(kept_tokens_figure(result), folder / "kept_tokens_per_layer.png", tight=False)


def accuracy_figure(result: dict[str, Any]):
    from .plots import pyplot, separate_labels

    plt = pyplot()
    pts = result["points"]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter([1.0], [100 * result["full"]["accuracy"]], marker="*", s=160, color="black", label="full (off)",
               zorder=3)
    xs = sorted(pts, key=lambda p: p["flops_ratio"])
    ax.plot([p["flops_ratio"] for p in xs], [100 * p["accuracy"] for p in xs], "o-", label="adaptive (SmartTrim)")
    labels = [ax.annotate(p["label"], (p["flops_ratio"], 100 * p["accuracy"]), textcoords="offset points",
                          xytext=(4, 4), fontsize=8) for p in xs]
    st = [p for p in xs if "static" in p]
    if st:
        ax.plot([p["static"]["flops_ratio"] for p in st], [100 * p["static"]["accuracy"] for p in st], "s--",
                label="static keep ratios, same mean FLOPs")
    ax.set_xlabel("mean FLOPs ratio (trimmed / full, decided)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"accuracy vs compute ({result['data']}, {result['samples']} test questions)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    separate_labels(fig, labels)  # targets at nearly the same cost and accuracy would print on top of each other
    return fig


def latency_figure(result: dict[str, Any]):
    """p50 latency against text length, one panel per batch size, on a log axis: PyTorch eager can be
    hundreds of times slower than ONNX Runtime, and a linear axis flattens every ONNX Runtime line into
    one. The p10-p90 band of each line shows how noisy its repeats were; the legend sits below the panels,
    clear of the lines."""
    from matplotlib.ticker import FixedLocator, NullLocator

    from .plots import pyplot

    plt = pyplot()
    batches = sorted({r["batch"] for r in result["latency"]})
    fig, axes = plt.subplots(1, len(batches), figsize=(5 * len(batches), 4.2), squeeze=False)
    lines = []
    for ax, b in zip(axes[0], batches):
        rows = sorted((r for r in result["latency"] if r["batch"] == b), key=lambda r: r["text_len"])
        lens = [r["text_len"] for r in rows]
        lines = []
        for name in result["runtimes"]:
            (line,) = ax.plot(lens, [r[name]["p50_ms"] for r in rows], "o-", label=name)
            lines.append(line)
            if all("p10_ms" in r[name] for r in rows):
                ax.fill_between(lens, [r[name]["p10_ms"] for r in rows], [r[name]["p90_ms"] for r in rows],
                                color=line.get_color(), alpha=0.15, linewidth=0)
        ax.set_yscale("log")
        ax.xaxis.set_major_locator(FixedLocator(lens))  # the measured lengths, nothing in between
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xlabel("text length (tokens)")
        ax.set_ylabel("latency p50 (ms, log scale)")
        ax.set_title(f"batch {b}")
        ax.grid(alpha=0.3, which="both")
    fig.legend(lines, [ln.get_label() for ln in lines], loc="lower center", ncol=min(3, len(lines)), fontsize=7,
               frameon=False, title="band: p10-p90 of the repeats", title_fontsize=7)
    fig.tight_layout(rect=(0, _legend_room(len(lines), 3), 1, 1))
    return fig


def _legend_room(entries: int, ncol: int) -> float:
    """The share of the figure's height a legend of `entries` in `ncol` columns (and its title) needs below
    the panels."""
    return min(0.5, 0.06 + 0.055 * -(-entries // ncol))


def kept_tokens_figure(result: dict[str, Any]):
    from matplotlib.ticker import MaxNLocator

    from .plots import pyplot

    plt = pyplot()
    pts = result["points"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    layers = result["trimmed_layers"]
    for m, (ax, name) in enumerate(zip(axes, ("vision", "text"))):
        for p in pts:
            ax.plot(layers, [k[m] for k in p["keep_per_layer"]], "o-", label=f"{p['label']} ({p['flops_ratio']:.2f})")
        ax.set_xlabel("layer (depth)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # layers are whole numbers
        ax.set_ylabel(f"{name} tokens kept (mean)")
        ax.set_title(f"{name} tokens entering each trimmed layer")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    axes[0].legend(title="target (FLOPs ratio)", fontsize=8)
    fig.tight_layout()
    return fig


def _markdown(result: dict[str, Any]) -> str:
    lines = [f"# trimkit bench: `{result['checkpoint']}`", "",
             f"Data `{result['data']}`: accuracy on {result['samples']} test questions, budgets calibrated on "
             f"{result['calibration_samples']} validation questions (global threshold offset, no retraining). "
             f"Latency: ONNX Runtime CPU ({result['threads'] or 'default'} threads) and PyTorch eager, "
             f"{result['repeats']} interleaved repeats, medians. {result['seconds']:.0f} s in all.", "",
             "## Accuracy vs FLOPs ratio", "", "![accuracy vs FLOPs](accuracy_vs_flops.png)", "",
             "| target | threshold offset | accuracy | FLOPs ratio decided (mean) | p10 | p90 | executed (mean) "
             "| static at same FLOPs |",
             "|---|---|---|---|---|---|---|---|",
             f"| full (off) | | {100 * result['full']['accuracy']:.2f}% | 1.000 | | | "
             f"{_ratio(result['full'].get('executed_flops_ratio'))} | |"]
    for p in result["points"]:
        s = p.get("static")
        st = f"{100 * s['accuracy']:.2f}% @ {s['flops_ratio']:.3f}" if s else "-"
        lines.append(f"| {p['label']} | {p['threshold_offset']:+.3f} | {100 * p['accuracy']:.2f}% | "
                     f"{p['flops_ratio']:.3f} | {p['flops_p10']:.3f} | {p['flops_p90']:.3f} | "
                     f"{_ratio(p.get('executed_flops_ratio'))} | {st} |")
    lines += ["", flops_legend(result.get("executed", {}), spread="mean, p10/p90 over questions")]
    names = result["runtimes"]
    lines += ["", "## Latency vs text length", "", "![latency](latency_vs_text_len.png)", "",
              "p50 ms; in brackets, how many times faster each adaptive export is than the full export (p50 over "
              f"p50). {NOISY} marks a timing whose repeats spread over {100 * NOISY_SPREAD:.0f}% ({SPREAD}) "
              "and a ratio with such a timing on either side: an imprecise ratio.", "",
              "| batch | text | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for r in result["latency"]:
        full = r["onnxruntime full"]
        cells = []
        for name in names:
            c = (NOISY if r[name].get("spread", 0.0) > NOISY_SPREAD else "") + f"{r[name]['p50_ms']:.2f}"
            if name.startswith("onnxruntime adaptive"):
                sp = speedup(full, r[name])
                c += f" ({NOISY if sp['noisy'] else ''}{sp['ratio']:.2f}×)"
            cells.append(c)
        lines.append(f"| {r['batch']} | {r['text_len']} | " + " | ".join(cells) + " |")
    lines += ["", "## Tokens kept per layer", "", "![kept tokens](kept_tokens_per_layer.png)", "",
              "| target | " + " | ".join(f"L{d} v/t" for d in result["trimmed_layers"]) + " |",
              "|---|" + "---|" * len(result["trimmed_layers"])]
    for p in result["points"]:
        lines.append(f"| {p['label']} | " + " | ".join(f"{v:.1f}/{t:.1f}" for v, t in p["keep_per_layer"]) + " |")
    return "\n".join(lines) + "\n"


def _ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"
