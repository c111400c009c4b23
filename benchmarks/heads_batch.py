"""Planning `--heads auto` for the serving batch (`trimkit calibrate heads --heads-batch N`): does the plan pay?

A batch keeps the union of its samples' heads, so the head keep rates `--heads auto` decides from depend on the
batch the artifact serves: at batch 1 a module's rate is one sample's own kept fraction and more modules fall
under `contract.GATHER_MAX_KEEP`. For one model this exports the default adaptive graph twice — planned for
batch 8 (the default) and for batch 1 — and times both beside `full` at batch 1 and 8 in one interleaved
ONNX Runtime run (CPU, medians). r_exec: the mean per-sample FLOPs ratio each artifact executes (each sample
alone; masked heads count as run).

Models: a preset with untrained random trimmers whose thresholds come from a `realized_speed.py` run
(`--preset base --trim build/bench/realized/base_r0.5.trim.json`: the same seeded weights, so those
thresholds hit its ratio), or a trained checkpoint as it is (`--ckpt models/easyvqa-small.pt`). Only speed is
measured. Results: benchmarks/results/<--results>.{json,md}.

    python benchmarks/heads_batch.py --preset base --trim build/bench/realized/base_r0.5.trim.json
    python benchmarks/heads_batch.py --ckpt models/easyvqa-small.pt --results heads_batch_small
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch
from _common import RESULTS, ort_pass, save_json, time_interleaved, timing_args
from rich.console import Console

import trimkit
from trimkit.calibration.budget import with_head_batch_keep
from trimkit.config import TrimConfig
from trimkit.contract import GATHER_MAX_KEEP, heads_summary
from trimkit.cost import executed_ratio
from trimkit.data import load_dataset
from trimkit.export.onnx import ort_feed, ort_session, to_onnx
from trimkit.factory import new_model
from trimkit.train.loop import randomize_trimmers

PLANS = (8, 1)  # serving batches the two exports are planned for


def load(args):
    if args.ckpt:
        return trimkit.load_checkpoint(args.ckpt), args.ckpt
    model = new_model(args.preset, "easyvqa", seed=0)
    randomize_trimmers(model, seed=0)  # as realized_speed.py: its thresholds fit these weights
    model.trim = TrimConfig.from_dict(json.loads(args.trim.read_text()))
    return model, f"{args.preset} (random trimmers, thresholds of {args.trim.name})"


@torch.no_grad()
def mean_sample_ratio(model, batches) -> float:
    """Mean per-sample executed FLOPs ratio of the packed `--heads auto` graph (each sample alone)."""
    ratios = []
    for pv, ids, mask in batches:
        for i in range(pv.shape[0]):
            n = int(mask[i].sum())
            ratios.append(executed_ratio(model(pv[i:i + 1], ids[i:i + 1, :n], mask[i:i + 1, :n], mode="prune")))
    return statistics.mean(ratios)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="base", help="preset with untrained trimmers (with --trim)")
    ap.add_argument("--trim", type=Path, help="a realized_speed.py trim.json")
    ap.add_argument("--full", type=Path, help="an existing `full` export of the same weights (e.g. realized_speed's)")
    ap.add_argument("--ckpt", help="a trained checkpoint, as it is (instead of --preset/--trim)")
    ap.add_argument("--rate-samples", type=int, default=96, help="validation questions the rates are measured on")
    ap.add_argument("--batch-sizes", default="1,8")
    ap.add_argument("--results", default="heads_batch", help="result file stem under benchmarks/results/")
    ap.add_argument("--reuse", action="store_true", help="reuse the workdir's exports from an earlier run of this code")
    timing_args(ap, batches=4, repeats=5, workdir="heads_batch")
    args = ap.parse_args()
    if not args.ckpt and not args.trim:
        raise SystemExit("--preset needs --trim (thresholds from realized_speed.py), or give --ckpt")
    args.workdir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    console = Console()
    model, label = load(args)
    model.eval()
    c = model.config
    data = load_dataset("easyvqa", tokenizer=model.tokenizer, labels=model.labels, image_size=c.image_size,
                        splits=("val", "test"))
    slug = args.results
    files, plans = {"full": args.full or args.workdir / f"{slug}.full.onnx"}, {}
    for b in PLANS:
        console.print(f"measuring head keep rates for batch {b} on {args.rate_samples} questions ...")
        trim = with_head_batch_keep(model, data.val, samples=args.rate_samples, head_batch=b)
        model.trim, model.head_impl = trim, "auto"
        plans[b] = {"trim": trim, "plan": model.heads_plan(), "rates": trim.head_batch_keep}
        files[f"plan-b{b}"] = args.workdir / f"{slug}.plan-b{b}.onnx"
    for name, path in files.items():
        if (args.reuse or path == args.full) and path.exists():
            continue
        console.print(f"exporting {path.name} ...")
        if name == "full":
            to_onnx(model, path, mode="full", force=True)
        else:
            model.trim = plans[int(name.split("-b")[1])]["trim"]
            to_onnx(model, path, mode="adaptive", head_impl="auto", force=True)
    g = torch.Generator().manual_seed(0)
    rec = {"model": label, "results": args.results, "threads": args.threads, "batches": args.batches, "repeats": args.repeats,
           "rate_samples": args.rate_samples, "gather_max_keep": GATHER_MAX_KEEP,
           "reproduce": "python benchmarks/heads_batch.py " + " ".join(sys.argv[1:]),
           "plans": {f"b{b}": {"plan": p["plan"], "summary": heads_summary(p["plan"]), "rates": p["rates"]}
                     for b, p in plans.items()}, "runs": {}}
    for bs in [int(x) for x in args.batch_sizes.split(",")]:
        rows = torch.randperm(len(data.test), generator=g)[: args.batches * bs].view(args.batches, bs)
        batches = [data.test.batch(r, trim_padding=True)[:3] for r in rows]
        feeds = [ort_feed(*b) for b in batches]
        r_exec = {}
        for b in PLANS:
            model.trim, model.head_impl = plans[b]["trim"], "auto"
            r_exec[f"plan-b{b}"] = mean_sample_ratio(model, batches)
        sessions = {name: ort_session(path, threads=args.threads) for name, path in files.items()}
        secs = time_interleaved({n: ort_pass(s, feeds) for n, s in sessions.items()}, args.repeats, console,
                                f"batch {bs}: {', '.join(sessions)}")
        del sessions
        rec["runs"][f"b{bs}"] = {"ms": {n: 1e3 * s for n, s in secs.items()}, "r_exec": r_exec,
                                 "speedup": {n: secs["full"] / s for n, s in secs.items() if n != "full"},
                                 "b1_plan_over_b8_plan": secs["plan-b8"] / secs["plan-b1"]}
        console.print(rec["runs"][f"b{bs}"])
        save_json(RESULTS / f"{args.results}.json", rec)
    write_markdown(rec)


def write_markdown(rec: dict) -> None:
    lines = [f"# `--heads auto` planned for the serving batch: {rec['model']}", "",
             f"ONNX Runtime CPU, {rec['threads']} threads, easy-VQA test questions, {rec['batches']} batches x "
             f"{rec['repeats']} interleaved repeats, medians; head keep rates on {rec['rate_samples']} validation "
             f"questions. Reproduce: `{rec['reproduce']}`.", "",
             f"Plans (a module's kept heads are gathered where the batch keeps at most {rec['gather_max_keep']:.2f} "
             "of them, masked elsewhere):", ""]
    for b, p in rec["plans"].items():
        lines.append(f"- planned for batch {b[1:]}: {p['summary']} (`{' '.join(p['plan'])}`)")
    lines += ["", "| serving batch | full ms | planned for 8: ms, ×full, r_exec | planned for 1: ms, ×full, r_exec "
              "| plan-1 / plan-8 speed |", "|---|---|---|---|---|"]
    for bs, x in rec["runs"].items():
        ms, sp, r = x["ms"], x["speedup"], x["r_exec"]
        cells = [f"{ms[k]:.1f}, {sp[k]:.2f}×, {r[k]:.3f}" for k in ("plan-b8", "plan-b1")]
        lines.append(f"| {bs[1:]} | {ms['full']:.1f} | {cells[0]} | {cells[1]} | {x['b1_plan_over_b8_plan']:.3f}× |")
    lines += ["", "plan-1 / plan-8 speed > 1: the graph planned for batch 1 runs faster at that serving batch. "
              "r_exec counts what each artifact executes for a sample alone (masked heads run)."]
    (RESULTS / f"{rec['results']}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
