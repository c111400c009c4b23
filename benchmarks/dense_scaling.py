"""How ONNX Runtime time follows FLOPs for the dense `small` model on this CPU (context for issue 4).

The export target "speedup >= 0.85 x (1 / FLOPs ratio)" assumes time proportional to FLOPs. This
measures that assumption with no pruning involved: `small` models that are dense and *smaller by
construction* (image 64, 56, 48, 40, 32 px -> 64, 49, 36, 25, 16 image tokens; the same easy-VQA
questions) are exported `full` and timed side by side (interleaved, ONNX Runtime CPU, 2 threads,
batch 1 and 8; the weights are untrained: a dense graph's time does not depend on them). A least-squares
fit time = fixed + slope x FLOPs gives the part of the time that does not shrink with the work, and
so the best speedup *any* method that removes FLOPs can reach on this runtime at a given FLOPs ratio
(the "dense ceiling": time of a dense model that does exactly that fraction of the work).
Writes benchmarks/results/dense_scaling.{json,md,png}.

    python benchmarks/dense_scaling.py [--sizes 64,56,48,40,32] [--batches 40] [--repeats 7]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from _common import RESULTS, ort_pass, save_json, time_interleaved, timing_args
from rich.console import Console
from rich.table import Table

from trimkit.data import load_dataset
from trimkit.export.onnx import to_onnx
from trimkit.factory import new_model
from trimkit.runtime.onnxruntime import ort_feed, ort_session

RATIOS = (0.5, 0.481, 0.33, 0.285)  # FLOPs ratios of the trained exports in export_speed.md, and the targets


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="64,56,48,40,32", help="image sizes (multiples of the 8-px patch)")
    timing_args(ap, batches=40, repeats=7, workdir="dense")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    args.workdir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    console = Console()
    models, sessions = {}, {}
    for s in sizes:
        models[s] = new_model("small", "easyvqa", seed=0, image_size=s)
        f = args.workdir / f"small-{s}px.full.onnx"
        console.print(f"exporting the dense small model at {s} px ...")
        to_onnx(models[s], f, mode="full", force=True)
        sessions[s] = ort_session(f, threads=args.threads)
    ref = sizes[0]
    test = load_dataset("easyvqa", tokenizer=models[ref].tokenizer, labels=models[ref].labels, image_size=ref,
                        splits=("test",)).test
    g = torch.Generator().manual_seed(0)
    rec = {"threads": args.threads, "batches": args.batches, "repeats": args.repeats, "sizes": sizes, "batch": {}}
    for bs in (1, 8):
        rows = torch.randperm(len(test), generator=g)[: args.batches * bs].view(args.batches, bs)
        feeds = {s: [] for s in sizes}
        flops = {s: 0.0 for s in sizes}
        for r in rows:
            _, ids, mask, _ = test.batch(r, trim_padding=True)
            for s in sizes:
                pv = torch.rand(bs, 3, s, s, generator=g) * 2 - 1
                with torch.no_grad():
                    out = models[s](pv, ids, mask, mode="off")
                flops[s] += float(out.full_layer_flops.sum())
                feeds[s].append(ort_feed(pv, ids, mask))
        med = time_interleaved({s: ort_pass(sessions[s], feeds[s]) for s in sizes}, args.repeats, console, f"batch {bs}")
        ms = {s: 1000 * med[s] for s in sizes}
        ratio = {s: flops[s] / flops[ref] for s in sizes}
        slope, fixed = np.polyfit([ratio[s] for s in sizes], [ms[s] for s in sizes], 1)  # ms per unit ratio, ms
        rec["batch"][f"b{bs}"] = {
            "points": {str(s): {"image_tokens": (s // 8) ** 2, "flops_ratio": ratio[s], "ms": ms[s],
                                "speedup": ms[ref] / ms[s], "ideal": 1 / ratio[s]} for s in sizes},
            "fit": {"fixed_ms": float(fixed), "slope_ms": float(slope), "fixed_fraction": float(fixed / ms[ref])},
            "ceiling": {str(r): {"speedup": float(ms[ref] / (fixed + slope * r)), "target": 0.85 / r}
                        for r in RATIOS}}
    save_json(RESULTS / "dense_scaling.json", rec)
    write_markdown(rec, console)
    plot(rec, RESULTS / "dense_scaling.png")


def write_markdown(rec: dict, console) -> None:
    lines = ["# Does ONNX Runtime time follow FLOPs? Dense `small` models of decreasing size (this CPU)", "",
             f"ONNX Runtime CPU, {rec['threads']} threads, {rec['batches']} easy-VQA questions (batches) x "
             f"{rec['repeats']} interleaved repeats, medians. Dense `full` exports of the `small` preset at smaller "
             "image sizes: the work shrinks by construction, no pruning, no trimmers. Reproduce: "
             "`python benchmarks/dense_scaling.py`.", "", "![time vs FLOPs](dense_scaling.png)", "",
             "| batch | image px (tokens) | FLOPs ratio | ms | speedup vs 64 px | 1 / FLOPs ratio | speedup / ideal |",
             "|---|---|---|---|---|---|---|"]
    table = Table(title="dense small model: time vs FLOPs (ONNX Runtime)")
    for col in ("batch", "px", "FLOPs ratio", "ms", "speedup", "ideal"):
        table.add_column(col, justify="right")
    for b, r in rec["batch"].items():
        for s, p in r["points"].items():
            lines.append(f"| {b} | {s} ({p['image_tokens']}) | {p['flops_ratio']:.3f} | {p['ms']:.2f} | "
                         f"{p['speedup']:.2f}× | {p['ideal']:.2f}× | {p['speedup'] / p['ideal']:.2f} |")
            table.add_row(b, s, f"{p['flops_ratio']:.3f}", f"{p['ms']:.2f}", f"{p['speedup']:.2f}×",
                          f"{p['ideal']:.2f}×")
    lines += ["", "Least-squares fit `ms = fixed + slope × FLOPs ratio`, and the dense ceiling: the speedup of a "
              "dense model doing exactly that fraction of the work (`ms(1) / (fixed + slope × ratio)`), against "
              "the export target 0.85 / ratio:", "",
              "| batch | fixed ms | fixed / full time | " + " | ".join(f"ceiling at {r} (target)" for r in RATIOS)
              + " |", "|---|---|---|" + "---|" * len(RATIOS)]
    for b, r in rec["batch"].items():
        f = r["fit"]
        cells = [f"{c['speedup']:.2f}× ({c['target']:.2f}×)" for c in r["ceiling"].values()]
        lines.append(f"| {b} | {f['fixed_ms']:.2f} | {100 * f['fixed_fraction']:.0f}% | " + " | ".join(cells) + " |")
    (RESULTS / "dense_scaling.md").write_text("\n".join(lines) + "\n")
    console.print(table)


def plot(rec: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.2, 4), dpi=120)
    for i, (b, r) in enumerate(rec["batch"].items()):
        pts = sorted(r["points"].values(), key=lambda p: p["flops_ratio"])
        x = [p["flops_ratio"] for p in pts]
        full = pts[-1]["ms"]
        ax.plot(x, [p["ms"] / full for p in pts], "o-", color=f"C{i}", label=f"{b}: measured")
        ax.plot([0, 1], [0, 1], ":", color="gray", lw=0.8)
        ax.plot([0, 1], [r["fit"]["fixed_fraction"], (r["fit"]["fixed_ms"] + r["fit"]["slope_ms"]) / full], "--",
                color=f"C{i}", lw=0.8, label=f"{b}: fit, fixed {100 * r['fit']['fixed_fraction']:.0f}%")
    ax.set_xlabel("FLOPs ratio (dense model, fewer image tokens)")
    ax.set_ylabel("time / time at 64 px")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.05)
    ax.set_title("ONNX Runtime CPU: time vs FLOPs (dotted: proportional)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    main()
