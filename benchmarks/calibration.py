"""Calibration benchmarks (issue 6), on this CPU with ONNX Runtime.

INT8: the `small` SmartTrim checkpoint (target 0.5) exported adaptive with heads masked (so the
attention projections are constant-weight matmuls and quantize too) and with gathered heads; each
quantized with `trimkit calibrate int8` (minmax, per-channel, 256 train questions; symmetric int8 or
asymmetric uint8 activations; every backbone matmul or only the feed-forward ones; optionally
SmoothQuant-smoothed first, `--smooth`) and compared
with its fp32 export on easy-VQA test questions: accuracy, keep_counts agreement, and speedup (batch 1
and 8, at 1 and at 2 threads; the fp32 export and all its INT8 graphs, at every thread count, timed side by
side in one interleaved group).
`--fine-tune "TRAIN OPTIONS"` first fine-tunes the checkpoint (`trimkit train CKPT --data easyvqa OPTIONS`, e.g.
with `--decision-margin M`) and calibrates that instead; the command is recorded with the others.
Budget: `trimkit calibrate budget` from that checkpoint to lower targets; mean FLOPs ratio on
held-out test questions vs the target, adaptive vs static accuracy at equal cost.
Writes benchmarks/results/<--results>.{json,md} (default calibration).

    python benchmarks/calibration.py [--ckpt build/bench/easyvqa-conv-t2/smarttrim-0.5.pt] [--samples 2000]
        [--activations int8,uint8] [--scopes all,mlp] [--smooth none,0.8,0.8/layernorm] [--heads mask,gather]
        [--targets 0.4,0.3 | ""] [--fine-tune "TRAIN OPTIONS"]
        [--results calibration]
"""

from __future__ import annotations

import argparse
import itertools
import shlex
import sys
from pathlib import Path

import torch
from _common import (
    RESULTS,
    ROOT,
    model_label,
    ort_pass,
    rel_to_root,
    reproduce_command,
    run_stage,
    save_json,
    time_interleaved,
)
from rich.console import Console
from rich.progress import track

import trimkit
from trimkit.contract import OUTPUT_NAMES
from trimkit.data import load_dataset
from trimkit.evaluate import sample_indices
from trimkit.export.onnx import to_onnx
from trimkit.runtime.onnxruntime import ort_feed, ort_session


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", type=Path, default=ROOT / "build/bench/easyvqa-conv-t2/smarttrim-0.5.pt")
    ap.add_argument("--samples", type=int, default=2000, help="test questions for accuracy/agreement")
    ap.add_argument("--targets", default="0.4,0.3", help='budget calibration targets ("": no budget runs)')
    ap.add_argument("--batches", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", default="1,2", help="ONNX Runtime intra-op thread counts to time at (the accuracy "
                    "pass uses the largest)")
    ap.add_argument("--activations", default="int8,uint8",
                    help="INT8 activation types to compare (int8: symmetric, TensorRT's; uint8: ONNX Runtime CPU's)")
    ap.add_argument("--scopes", default="all,mlp", help="which matmuls get Q/DQ (trimkit calibrate int8 --scope)")
    ap.add_argument("--smooth", default="none",
                    help='SmoothQuant alphas to compare (trimkit calibrate int8 --smooth; "none": no smoothing; '
                         'ALPHA/layernorm: --smooth-where layernorm)')
    ap.add_argument("--heads", default="mask,gather", help="head pruning in the exports (trimkit export --heads)")
    ap.add_argument("--workdir", type=Path, default=ROOT / "build" / "bench" / "calibration")
    ap.add_argument("--fine-tune", default="", help='trimkit train options: calibrate CKPT fine-tuned with them '
                    '(into WORKDIR/fine-tuned.pt), e.g. "--decision-margin 4 --epochs 0.3 --warmup-frac 0"')
    ap.add_argument("--results", default="calibration", help="result file stem under benchmarks/results/")
    args = ap.parse_args()
    args.thread_counts = sorted({int(t) for t in args.threads.split(",")})
    args.threads = args.thread_counts[-1]
    out_json = RESULTS / f"{args.results}.json"
    wd = args.workdir
    wd.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    console = Console()
    rec: dict = {"checkpoint": rel_to_root(args.ckpt),
                 "threads": args.thread_counts, "samples": args.samples, "int8": {}, "budget": {}, "results": args.results,
                 "reproduce": reproduce_command("calibration.py", sys.argv[1:], {})}
    log = wd / "log.txt"
    if args.fine_tune:
        tuned = wd / "fine-tuned.pt"
        run_stage("fine-tune", ["train", args.ckpt, "--data", "easyvqa", *shlex.split(args.fine_tune), "--out", tuned,
                                "--quiet"], tuned, log, rec)
        rec["fine_tuned"] = {"from": rec["checkpoint"], "options": args.fine_tune}
        args.ckpt = tuned
        rec["checkpoint"] = rel_to_root(tuned)
    model = trimkit.load_checkpoint(args.ckpt)
    rec["preset"] = model_label(model)
    test = load_dataset("easyvqa", tokenizer=model.tokenizer, labels=model.labels,
                        image_size=model.config.image_size, splits=("test",)).test
    for heads in args.heads.split(","):
        fp32 = wd / f"adaptive-{heads}.onnx"
        if not fp32.exists():
            to_onnx(model, fp32, mode="adaptive", head_impl=heads, force=True)
        variants: dict[str, Path] = {}  # result key -> INT8 graph of this fp32 export
        ref = fp32_reference(fp32, test, args, console)
        for act, scope, alpha in itertools.product(args.activations.split(","), args.scopes.split(","),
                                                   args.smooth.split(",")):
            alpha, _, where = alpha.partition("/")
            smooth = [] if alpha == "none" else ["--smooth", alpha] + (["--smooth-where", where] if where else [])
            tag = "" if alpha == "none" else f".sq{alpha}" + (f"-{where}" if where else "")
            int8 = wd / f"adaptive-{heads}.{act}.{scope}{tag}.onnx"
            run_stage(f"int8-{heads}-{act}-{scope}{tag}",
                      ["calibrate", "int8", fp32, "--ckpt", args.ckpt, "--data", "easyvqa", "--out", int8,
                       "--samples", "256", "--per-channel", "--activations", act, "--scope", scope, *smooth],
                      int8, log, rec)
            key = f"{heads} / {act} / {scope}" + ("" if alpha == "none" else f" / smooth {alpha}")
            key += f" ({where} only)" if where else ""
            rec["int8"][key] = compare(ref, int8, args, console)
            variants[key] = int8
            save_json(out_json, rec)
        for bs, speed in time_side_by_side(fp32, variants, test, args, console).items():
            for key, s in speed.items():
                rec["int8"][key]["speed"][bs] = s
        save_json(out_json, rec)
    for t in (float(x) for x in args.targets.split(",") if x):
        for how in ("global", "per-layer"):
            out = wd / f"budget-{t}-{how}.pt"
            run_stage(f"budget-{t}-{how}", ["calibrate", "budget", args.ckpt, "--target", t, "--data", "easyvqa",
                                            "--out", out, "--samples", "1000", "--holdout", str(args.samples),
                                            f"--{how}"], out, log, rec)
            cal = trimkit.load_checkpoint(out).meta["calibration"]
            offsets = cal["layer_offsets"] or [cal["threshold_offset"]]
            rec["budget"][f"{t}/{how}"] = {"target": t, "method": how, "offsets": offsets, **cal["holdout"]}
            save_json(out_json, rec)
    write_markdown(rec)
    save_json(out_json, rec)


def fp32_reference(fp32: Path, test, args, console) -> list[tuple]:
    """The fp32 export's outputs on the accuracy questions, once per export: [(feed, y, logits, keep_counts)]
    per batch of 64, for `compare` to set every INT8 graph of it against."""
    s32 = ort_session(fp32, threads=args.threads)
    idx = sample_indices(len(test), args.samples, 0)
    ref = []
    for start in track(range(0, idx.numel(), 64), description=f"accuracy {fp32.name}", console=console):
        pv, ids, mask, y = test.batch(idx[start: start + 64], trim_padding=True)
        feed = ort_feed(pv, ids, mask)
        ref.append((feed, y.numpy(), *s32.run(list(OUTPUT_NAMES), feed)))
    return ref


def compare(ref: list[tuple], int8: Path, args, console) -> dict:
    s8 = ort_session(int8, threads=args.threads)
    n = correct32 = correct8 = agree = argmax_agree = counts_equal = counts_total = 0
    for feed, y, l32, k32 in track(ref, description=f"accuracy {int8.name}", console=console):
        l8, k8 = s8.run(list(OUTPUT_NAMES), feed)
        n += len(y)
        correct32 += int((l32.argmax(1) == y).sum())
        correct8 += int((l8.argmax(1) == y).sum())
        agree += int((k32 == k8).reshape(len(y), -1).all(1).sum())  # every count of the sample equal
        counts_equal, counts_total = counts_equal + int((k32 == k8).sum()), counts_total + k32.size
        argmax_agree += int((l32.argmax(1) == l8.argmax(1)).sum())
    out = {"accuracy_fp32": correct32 / n, "accuracy_int8": correct8 / n,
           "accuracy_drop_points": 100 * (correct32 - correct8) / n, "keep_counts_agreement": agree / n,
           "keep_counts_agreement_per_count": counts_equal / counts_total,
           "argmax_agreement": argmax_agree / n, "speed": {}}
    console.print(f"{int8.name}: " + ", ".join(f"{k} {v:.4g}" for k, v in out.items() if not isinstance(v, dict)))
    return out


def time_side_by_side(fp32: Path, variants: dict[str, Path], test, args, console) -> dict[str, dict]:
    """Batch 1 and 8: the fp32 export and every INT8 graph of it, each at every thread count, timed in one
    interleaved group (the same batches, taking turns within each repeat), so their ratios share the machine's
    state: this CPU's speed drifts by 20% from minute to minute, and fp32 and int8 kernels do not drift alike.
    -> {"b1": {key: {"1 thread": {fp32_ms, int8_ms, speedup}, "2 threads": ...}}, "b8": ...}"""
    sessions = {(name, t): ort_session(path, threads=t) for name, path in {"fp32": fp32, **variants}.items()
                for t in args.thread_counts}
    g = torch.Generator().manual_seed(1)
    out: dict[str, dict] = {}
    for bs in (1, 8):
        rows = torch.randperm(len(test), generator=g)[: args.batches * bs].view(args.batches, bs)
        feeds = []
        for r in rows:
            pv, ids, mask, _ = test.batch(r, trim_padding=True)
            feeds.append(ort_feed(pv, ids, mask))
        med = time_interleaved({k: ort_pass(s, feeds) for k, s in sessions.items()}, args.repeats, console,
                               f"speed b{bs}")
        out[f"b{bs}"] = {key: {threads_label(t): {"fp32_ms": 1000 * med["fp32", t], "int8_ms": 1000 * med[key, t],
                                                  "speedup": med["fp32", t] / med[key, t]}
                               for t in args.thread_counts} for key in variants}
        console.print(f"b{bs}: " + ", ".join(f"{k} {th} {v['speedup']:.2f}×" for k, per in out[f"b{bs}"].items()
                                             for th, v in per.items()))
    return out


def threads_label(t: int) -> str:
    return f"{t} thread" + ("s" if t > 1 else "")


def write_markdown(rec: dict) -> None:
    threads = [threads_label(t) for t in rec["threads"]]
    lines = ["# Calibration on this CPU (ONNX Runtime)", "",
             f"Checkpoint `{rec['checkpoint']}` (`{rec['preset']}` preset"
             + (f"; `{rec['fine_tuned']['from']}` fine-tuned with `{rec['fine_tuned']['options']}`"
                if rec.get("fine_tuned") else "") + f"). {rec['samples']} easy-VQA test "
             f"questions; ONNX Runtime CPU (accuracy at {threads[-1]}); speed: the fp32 export and its INT8 graphs "
             f"at {' and '.join(threads)} timed side by side (interleaved, same batches), medians. "
             f"Reproduce: `{rec.get('reproduce', 'python benchmarks/calibration.py --ckpt ' + rec['checkpoint'])}`.", "",
             "## INT8 (Q/DQ, minmax, per-channel, 256 calibration questions) vs the fp32 adaptive export", "",
             "| heads / activations / matmuls [/ SmoothQuant alpha] | "
             + "".join(f"speedup b1 / b8, {th} | ≥ 1.5× | " for th in threads)
             + "accuracy fp32 | accuracy int8 | drop (points) | ≤ 1.0 "
             "| keep_counts agreement (whole sample) | ≥ 98% | per count |",
             "|---|" + "---|---|" * len(threads) + "---|---|---|---|---|---|---|"]
    for heads, r in rec["int8"].items():
        speed = ""
        for th in threads:
            sp = [r["speed"][b][th]["speedup"] for b in ("b1", "b8")]
            speed += f"{sp[0]:.2f}× / {sp[1]:.2f}× | {'pass' if min(sp) >= 1.5 else 'FAIL'} | "
        lines.append(f"| {heads} | {speed}"
                     f"{100 * r['accuracy_fp32']:.2f}% | {100 * r['accuracy_int8']:.2f}% | "
                     f"{r['accuracy_drop_points']:+.2f} | {'pass' if r['accuracy_drop_points'] <= 1.0 else 'FAIL'} | "
                     f"{100 * r['keep_counts_agreement']:.2f}% | "
                     f"{'pass' if r['keep_counts_agreement'] >= 0.98 else 'FAIL'} | "
                     + (f"{100 * r['keep_counts_agreement_per_count']:.2f}% |"
                        if "keep_counts_agreement_per_count" in r else "not measured |"))
    if rec["budget"]:
        lines += ["", "## Budget calibration (global threshold offset, no retraining; held-out test questions)", "",
                  "| target | offsets | ratio before | ratio after | within ±0.03 | accuracy before | adaptive after | "
                  "static after (ratio) |", "|---|---|---|---|---|---|---|---|"]
    for r in rec["budget"].values():
        a, b, s = r["adaptive"], r["before"], r["static"]
        offs = ", ".join(f"{o:+.2f}" for o in r["offsets"])
        lines.append(f"| {r['target']} | {r['method']}: {offs} | {b['flops_ratio']:.3f} | {a['flops_ratio']:.3f} "
                     f"| {'pass' if abs(a['flops_ratio'] - r['target']) <= 0.03 else 'FAIL'} | "
                     f"{100 * b['accuracy']:.2f}% | {100 * a['accuracy']:.2f}% | {100 * s['accuracy']:.2f}% "
                     f"({s['flops_ratio']:.3f}) |")
    lines += ["", "Commands:", "", "```", *rec.get("commands", {}).values(), "```", ""]
    (RESULTS / f"{rec.get('results', 'calibration')}.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
