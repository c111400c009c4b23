"""ONNX Runtime speed of the exported adaptive model vs the full export (issue 4), on this CPU.

For each checkpoint (the `small` preset trained at FLOPs targets 0.5 and 0.33 by
benchmarks/smarttrim_easyvqa.py), on easy-VQA test inputs, with ONNX Runtime at 2 threads:
  - adaptive export vs full export at batch 1 and 8 (speedup, against 1 / FLOPs ratio: per-sample
    at batch 1, executed (batch-max k) at batch 8, padding overhead = executed / per-sample);
  - keep-everything adaptive export (thresholds -1e4) vs full: the trimmers' own overhead;
  - the default export masks pruned heads; the `--heads gather` variant (kept heads' weight slices
    gathered per sample) is timed beside it, trimmed and keeping everything: which is faster here.
    The executed FLOPs ratio counts the heads' savings, which only the gathered variant realises;
  - ONNX Runtime adaptive vs PyTorch eager `prune` mode on the same inputs.
Every variant is timed interleaved in one run; ratios are of medians. Results:
benchmarks/results/export_speed.{json,md}.

    python benchmarks/export_speed.py [--ckpt NAME=PATH ...] [--batches 40] [--repeats 5]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys

import onnx
import torch
from _common import RESULTS, ROOT, ort_pass, save_json, time_interleaved, timing_args
from rich.console import Console
from rich.table import Table

import trimkit
from trimkit.cost import executed_ratio
from trimkit.data import load_dataset
from trimkit.export.onnx import ort_feed, ort_session, to_onnx

DEFAULT = {"t0.5": ROOT / "build/bench/easyvqa-conv-t2/smarttrim-0.5.pt",
           "t0.33": ROOT / "build/bench/easyvqa-conv-t2/smarttrim-0.33.pt"}


def measured_ratios(model, data, rows) -> tuple[list[dict], float, float]:
    """ONNX Runtime feeds for the batches `rows` of `data`, and the model's mean FLOPs ratio over them in
    `prune` mode: per sample, and executed (batch-max tokens and heads)."""
    feeds, sample, executed = [], [], []
    for row in rows:
        pv, ids, mask, _ = data.batch(row, trim_padding=True)
        with torch.no_grad():
            out = model(pv, ids, mask, mode="prune")
        sample.append(float(out.flops_ratio.mean()))
        executed.append(executed_ratio(out))
        feeds.append(ort_feed(pv, ids, mask))
    return feeds, statistics.mean(sample), statistics.mean(executed)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", action="append", help="NAME=PATH (default: the two easy-VQA SmartTrim runs)")
    timing_args(ap, batches=40, repeats=5, workdir="export")
    ap.add_argument("--results", default="export_speed", help="result file stem under benchmarks/results/")
    args = ap.parse_args()
    ckpts = dict(x.split("=", 1) for x in args.ckpt) if args.ckpt else {k: str(v) for k, v in DEFAULT.items()}
    args.workdir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    console = Console()
    results = {"threads": args.threads, "batches": args.batches, "repeats": args.repeats, "runs": {},
               "results": args.results, "checkpoints": ckpts,
               "reproduce": "python benchmarks/export_speed.py " + " ".join(sys.argv[1:])}
    for name, path in ckpts.items():
        model = trimkit.load_checkpoint(path)
        keep_all = trimkit.load_checkpoint(path)
        keep_all.trim = dataclasses.replace(keep_all.trim, token_threshold=-1e4, head_threshold=-1e4)
        files = {}
        # "adaptive"/"keep_all": the default export (heads masked); "*_gather": kept heads' weights gathered
        variants = {"adaptive": (path, "adaptive", "mask"), "full": (path, "full", "mask"),
                    "keep_all": (keep_all, "adaptive", "mask"), "adaptive_gather": (path, "adaptive", "gather"),
                    "keep_all_gather": (keep_all, "adaptive", "gather")}
        for variant, (src, mode, heads) in variants.items():
            f = args.workdir / f"{name}.{variant}.{heads}.onnx"
            console.print(f"exporting {name} {variant} ...")  # always: a graph from older code would mislead
            to_onnx(src, f, mode=mode, head_impl=heads, force=True)
            files[variant] = f
        sessions = {v: ort_session(f, threads=args.threads) for v, f in files.items()}
        results.setdefault("graph_nodes", {})[name] = {v: len(onnx.load(str(f)).graph.node) for v, f in files.items()}
        data = load_dataset("easyvqa", tokenizer=model.tokenizer, labels=model.labels,
                            image_size=model.config.image_size, splits=("test",)).test
        g = torch.Generator().manual_seed(0)
        for bs in (1, 8):
            idx = torch.randperm(len(data), generator=g)[: args.batches * bs].view(args.batches, bs)
            batches, rs, re_ = measured_ratios(model, data, idx)
            passes = {v: ort_pass(sess, batches) for v, sess in sessions.items()}
            passes["torch_prune"] = _torch_pass(model, batches)
            med = time_interleaved(passes, args.repeats, console, f"{name} batch {bs}")
            reference = rs if bs == 1 else re_
            speedup = med["full"] / med["adaptive"]
            rec = {
                "batch": bs, "latency_ms": {v: 1000 * t for v, t in med.items()},
                "flops_ratio_per_sample": rs, "flops_ratio_executed": re_, "padding_overhead": re_ / rs,
                "speedup_adaptive_vs_full": speedup, "ideal_speedup": 1 / reference,
                "speedup_vs_ideal": speedup * reference, "target_met": speedup >= 0.85 / reference,
                "trimmer_overhead": med["keep_all"] / med["full"] - 1,
                "trimmer_overhead_gather": med["keep_all_gather"] / med["full"] - 1,
                "speedup_gather_vs_full": med["full"] / med["adaptive_gather"],
                "ort_adaptive_vs_torch_prune_speedup": med["torch_prune"] / med["adaptive"],
            }
            results["runs"][f"{name}/b{bs}"] = rec
            save_json(RESULTS / f"{args.results}.json", results)
    write_markdown(results, console)


def _torch_pass(model, feeds: list[dict]):
    def run() -> int:
        with torch.no_grad():
            for f in feeds:
                model(*(torch.from_numpy(f[k]) for k in f), mode="prune")
        return len(feeds)
    return run


def write_markdown(results: dict, console) -> None:
    rows = ["# ONNX Runtime speed of the adaptive export (this CPU)", "",
            f"ONNX Runtime CPU, {results['threads']} threads, easy-VQA test inputs, {results['batches']} batches x "
            f"{results['repeats']} interleaved repeats; medians. Reproduce: "
            f"`{results.get('reproduce', 'python benchmarks/export_speed.py')}`.", "",
            "| model / batch | FLOPs ratio (per sample) | executed | padding overhead | full ms | adaptive ms | "
            "speedup | ≥ 0.85 / ratio | keep-all overhead | heads gathered: speedup | heads gathered: keep-all overhead "
            "| ORT vs torch prune |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    table = Table(title="adaptive export vs full export (ONNX Runtime)")
    for col in ("run", "ratio", "executed", "speedup", "ideal", "met", "trimmer overhead", "ORT/torch"):
        table.add_column(col, justify="right")
    for name, r in results["runs"].items():
        lat = r["latency_ms"]
        rows.append(f"| {name} | {r['flops_ratio_per_sample']:.3f} | {r['flops_ratio_executed']:.3f} | "
                    f"{r['padding_overhead']:.2f}× | {lat['full']:.2f} | {lat['adaptive']:.2f} | "
                    f"{r['speedup_adaptive_vs_full']:.2f}× | {'pass' if r['target_met'] else 'FAIL'} "
                    f"(ideal {r['ideal_speedup']:.2f}×) | {100 * r['trimmer_overhead']:+.1f}% | "
                    f"{r['speedup_gather_vs_full']:.2f}× | {100 * r['trimmer_overhead_gather']:+.1f}% | "
                    f"{r['ort_adaptive_vs_torch_prune_speedup']:.2f}× |")
        table.add_row(name, f"{r['flops_ratio_per_sample']:.3f}", f"{r['flops_ratio_executed']:.3f}",
                      f"{r['speedup_adaptive_vs_full']:.2f}×", f"{r['ideal_speedup']:.2f}×",
                      "yes" if r["target_met"] else "NO", f"{100 * r['trimmer_overhead']:+.1f}%",
                      f"{r['ort_adaptive_vs_torch_prune_speedup']:.2f}×")
    rows += ["", "ONNX graph nodes per variant (as exported; each costs dispatch time at batch 1):", ""]
    rows += [f"- {name}: " + ", ".join(f"{v} {n:,}" for v, n in nodes.items())
             for name, nodes in results.get("graph_nodes", {}).items()]
    (RESULTS / f"{results.get('results', 'export_speed')}.md").write_text("\n".join(rows) + "\n")
    console.print(table)


if __name__ == "__main__":
    main()
