"""When does gathering the kept heads' weight slices pay? The constant behind `--heads auto`.

A packed adaptive graph with gathered heads selects, once per batch, the kept heads' slices of an attention
module's Q/K/V/O weights (one Gather of whole head blocks) and multiplies by the result; with masked heads it
multiplies by the whole constant weight. Gathering saves the pruned heads' FLOPs but copies the kept slices on
every forward, and the product's weight is a runtime tensor that ONNX Runtime cannot pre-pack. This benchmark
times both on ONNX Runtime's CPU provider: M modules of width D with H heads (their weights together far larger
than the caches, as in a real model), T rows, kh heads kept, interleaved. It reports gathered / dense time,
the overhead per kept head gamma = (gathered / dense) / (kh / H) - 1, and the kept fraction below which
gathering is faster, 1 / (1 + gamma). `contract.GATHER_MAX_KEEP` is set at or below the smallest of those.

    python benchmarks/head_gather.py [--rows 1,8,32,128,512,1600] [--kept 11,9,6,3] [--modules 40]
"""

from __future__ import annotations

import argparse
import statistics
import sys

import numpy as np
from _common import RESULTS, save_json, time_interleaved, timing_args
from rich.console import Console

from trimkit.contract import GATHER_MAX_KEEP


def module_graph(modules: int, heads: int, head_dim: int, width: int, gather: bool, seed: int = 0):
    """X (T, D) -> one output per module: X @ W_m^T with W_m (4, H, dh, D) (Q, K, V, O), or with the kept heads'
    blocks W_m[:, idx] gathered first (idx: an input, as the batch's kept heads are in an exported graph)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(np.array([-1, width], dtype=np.int64), "rows_shape")]
    nodes, outputs = [], []
    inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["T", width])]
    if gather:
        inputs.append(helper.make_tensor_value_info("idx", TensorProto.INT64, ["kh"]))
    for m in range(modules):
        w = (rng.standard_normal((4, heads, head_dim, width)) * 0.02).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"W{m}"))
        src = f"W{m}"
        if gather:
            nodes.append(helper.make_node("Gather", [src, "idx"], [f"G{m}"], axis=1))
            src = f"G{m}"
        nodes.append(helper.make_node("Reshape", [src, "rows_shape"], [f"R{m}"]))
        nodes.append(helper.make_node("Gemm", ["X", f"R{m}"], [f"Y{m}"], transB=1))
        outputs.append(helper.make_tensor_value_info(f"Y{m}", TensorProto.FLOAT, None))
    graph = helper.make_graph(nodes, "heads", inputs, outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def session(model, threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def repeat_pass(sess, feed: dict, n: int):
    """A `time_interleaved` pass: n runs of one session on one feed."""
    def run() -> int:
        for _ in range(n):
            sess.run(None, feed)
        return n
    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default="1,8,32,128,512,1600")
    ap.add_argument("--kept", default="11,9,6,3", help="heads kept of --heads")
    ap.add_argument("--modules", type=int, default=40)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--width", type=int, default=768)
    ap.add_argument("--results", default="head_gather")
    timing_args(ap, batches=3, repeats=7, workdir="head_gather")
    args = ap.parse_args()
    console = Console(width=100)
    rows, kept = [int(x) for x in args.rows.split(",")], [int(x) for x in args.kept.split(",")]
    if not all(0 < k < args.heads for k in kept) or min(rows) < 1:
        raise SystemExit(f"--kept takes head counts in 1..{args.heads - 1}, --rows positive counts")
    dh = args.width // args.heads
    dense = session(module_graph(args.modules, args.heads, dh, args.width, gather=False), args.threads)
    gathered = session(module_graph(args.modules, args.heads, dh, args.width, gather=True), args.threads)
    rng = np.random.default_rng(1)
    table = []
    for t in rows:
        x = rng.standard_normal((t, args.width)).astype(np.float32)
        feeds = {"dense": {"X": x}}
        for k in kept:
            feeds[k] = {"X": x, "idx": np.sort(rng.choice(args.heads, k, replace=False)).astype(np.int64)}
        passes = {name: repeat_pass(dense if name == "dense" else gathered, f, args.batches)
                  for name, f in feeds.items()}
        sec = time_interleaved(passes, args.repeats, console, f"{t} rows")
        row = {"rows": t, "dense_ms_per_module": 1e3 * sec["dense"] / args.modules, "kept": {}}
        for k in kept:
            ratio = sec[k] / sec["dense"]
            gamma = ratio / (k / args.heads) - 1
            row["kept"][str(k)] = {"ratio": ratio, "gamma": gamma, "pays_below": 1 / (1 + gamma)}
        table.append(row)
        console.print(f"{t:5d} rows: dense {row['dense_ms_per_module']:.3f} ms/module; "
                      + ", ".join(f"kh {k}: {row['kept'][str(k)]['ratio']:.2f}" for k in kept))
    bound = min(v["pays_below"] for r in table for v in r["kept"].values())
    rec = {"command": "python benchmarks/head_gather.py " + " ".join(sys.argv[1:]), "threads": args.threads,
           "modules": args.modules, "heads": args.heads, "width": args.width, "batches": args.batches,
           "repeats": args.repeats, "rows": table, "pays_below_min": bound,
           "pays_below_median": statistics.median(v["pays_below"] for r in table for v in r["kept"].values()),
           "gather_max_keep": GATHER_MAX_KEEP}
    save_json(RESULTS / f"{args.results}.json", rec)
    write_markdown(rec, kept, args.results)
    console.print(f"gathering pays below kept fraction {bound:.2f} everywhere measured (GATHER_MAX_KEEP "
                  f"{GATHER_MAX_KEEP}); wrote {RESULTS / (args.results + '.md')}")


def write_markdown(rec: dict, kept: list[int], name: str) -> None:
    h = rec["heads"]
    lines = ["# Gathered vs masked heads: when the gather pays (`--heads auto`)", "",
             f"ONNX Runtime CPU, {rec['threads']} threads; {rec['modules']} attention modules of width {rec['width']}"
             f" with {h} heads, Q/K/V/O weights (4, {h}, {rec['width'] // h}, {rec['width']}) each "
             f"({4 * rec['width'] ** 2 * 4 * rec['modules'] / 2**20:.0f} MiB together: out of cache, as in a model); "
             f"{rec['batches']} runs x {rec['repeats']} interleaved repeats, medians. Reproduce: "
             f"`{rec['command'].strip()}`.", "",
             "| rows | dense ms / module | " + " | ".join(f"kh {k}: gathered / dense (1 / (1 + γ))" for k in kept)
             + " |", "|---|---|" + "---|" * len(kept)]
    for r in rec["rows"]:
        cells = [f"{r['kept'][str(k)]['ratio']:.2f} ({r['kept'][str(k)]['pays_below']:.2f})" for k in kept]
        lines.append(f"| {r['rows']} | {r['dense_ms_per_module']:.3f} | " + " | ".join(cells) + " |")
    lines += ["", f"Gathering the kept heads is faster than running all {h} where the kept fraction is below "
              f"1 / (1 + γ): at least {rec['pays_below_min']:.2f} in every cell above (median "
              f"{rec['pays_below_median']:.2f}). `--heads auto` gathers a module's heads where a batch of 8 keeps at "
              f"most {rec['gather_max_keep']:.2f} of them (`contract.GATHER_MAX_KEEP`), masks them elsewhere.", "",
              "Legend: rows = tokens the projections run on (a batch's packed rows); kh = heads kept (gathered); "
              "gathered / dense = time of the gathered module over the dense one with every head; γ = the overhead "
              "per kept head of gathering (the copy of its weight slices and the lost weight pre-packing) = "
              "(gathered / dense) / (kh / H) - 1."]
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
