"""SmartTrim on easy-VQA with the `small` preset, trained on this machine.

Stages (each a `trimkit` command; a stage whose output exists is skipped, so the script resumes):
  init -> backbone (--no-trim) -> SmartTrim at targets 0.5 and 0.33 -> ablations at 0.5
  (--no-distill, --no-curriculum, --local-only) -> `trimkit eval` of each on the full test split.
Writes benchmarks/results/<--results>.{json,md} (default smarttrim_easyvqa) after every stage.

Targets (issue 3): backbone >= 95%; target 0.5 loses <= 1.0 point, 0.33 <= 2.0 points; measured mean
FLOPs ratio within +-0.05 of the target.

    python benchmarks/smarttrim_easyvqa.py [--workdir build/bench/easyvqa] [--backbone-epochs 4] [--trim-epochs 1]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from _common import RESULTS, ROOT, load_json, run_stage, save_json

RUNS = [  # name, target, extra flags
    ("smarttrim-0.5", 0.5, []),
    ("smarttrim-0.33", 0.33, []),
    ("no-distill-0.5", 0.5, ["--no-distill"]),
    ("no-curriculum-0.5", 0.5, ["--no-curriculum"]),
    ("local-only-0.5", 0.5, ["--local-only"]),
]
LIMITS = {0.5: 1.0, 0.33: 2.0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=ROOT / "build" / "bench" / "easyvqa")
    ap.add_argument("--backbone-epochs", type=float, default=4)
    ap.add_argument("--backbone-lr", type=float, default=5e-4)
    ap.add_argument("--trim-epochs", type=float, default=1)
    ap.add_argument("--runs", default=",".join(r[0] for r in RUNS), help="comma-separated subset of the runs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--results", default="smarttrim_easyvqa",
                    help="result file stem under benchmarks/results/ (one per backbone: runs are never mixed)")
    args = ap.parse_args()
    wd = args.workdir
    wd.mkdir(parents=True, exist_ok=True)
    log = wd / "log.txt"
    out_json = RESULTS / f"{args.results}.json"
    rec = load_json(out_json)
    rec.update({"results": args.results, "preset": "small", "data": "easyvqa", "seed": args.seed,
                "backbone_epochs": args.backbone_epochs,
                "trim_epochs": args.trim_epochs,
                "reproduce": "python benchmarks/smarttrim_easyvqa.py " + " ".join(sys.argv[1:])})
    rec.setdefault("runs", {})
    seed = ["--seed", str(args.seed)]

    run_stage("init", ["init", "--preset", "small", "--data", "easyvqa", "--out", wd / "init.pt", *seed],
              wd / "init.pt", log, rec)
    run_stage("backbone", ["train", wd / "init.pt", "--data", "easyvqa", "--no-trim", "--epochs",
                           args.backbone_epochs, "--lr", args.backbone_lr, "--out", wd / "backbone.pt", "--quiet",
                           *seed], wd / "backbone.pt", log, rec)
    evaluate("backbone", wd, log, rec, out_json, None)
    wanted = set(args.runs.split(","))
    for name, target, flags in RUNS:
        if name not in wanted:
            continue
        ckpt = wd / f"{name}.pt"
        run_stage(name, ["train", wd / "backbone.pt", "--data", "easyvqa", "--target-ratio", target, "--epochs",
                         args.trim_epochs, "--lr", "1e-4", "--out", ckpt, "--quiet", *flags, *seed], ckpt, log, rec)
        evaluate(name, wd, log, rec, out_json, target)
    write_markdown(rec)
    save_json(out_json, rec)


def evaluate(name: str, wd: Path, log: Path, rec: dict, out_json: Path, target: float | None) -> None:
    report = wd / f"{name}.eval.json"
    run_stage(f"eval-{name}", ["eval", wd / f"{name}.pt", "--data", "easyvqa", "--split", "test", "--json", report],
              report, log, rec)
    r = json.loads(report.read_text())
    mode = "off" if target is None else "prune"
    f = r[mode]["flops_ratio"]
    rec["runs"][name] = {"target": target, "accuracy": r[mode]["accuracy"], "accuracy_full": r["off"]["accuracy"],
                         "flops_ratio": f["mean"], "flops_p10": f["p10"], "flops_p90": f["p90"],
                         "keep_per_layer": r[mode]["keep_per_layer"], "test_questions": r["samples"]}
    write_markdown(rec)
    save_json(out_json, rec)


def write_markdown(rec: dict) -> None:
    runs = rec["runs"]
    base = runs.get("backbone", {}).get("accuracy")
    lines = ["# SmartTrim on easy-VQA (`small` preset, this CPU)", "",
             f"Backbone {rec['backbone_epochs']} epochs (`--no-trim`), SmartTrim runs {rec['trim_epochs']} epoch(s) "
             "from the backbone. Accuracy on the full easy-VQA test split (9,673 questions), trimmed runs in "
             f"`prune` mode. Reproduce: `{rec.get('reproduce', 'python benchmarks/smarttrim_easyvqa.py')}`.", "",
             "| run | target | accuracy | Δ vs backbone (points) | FLOPs ratio mean | p10 | p90 | check |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in runs.items():
        t = r["target"]
        delta = "" if base is None or t is None else f"{100 * (r['accuracy'] - base):+.2f}"
        if t is None:
            check = "≥ 95%: " + ("pass" if r["accuracy"] >= 0.95 else "FAIL")
        elif name.startswith("smarttrim"):
            ok_acc = base is not None and 100 * (base - r["accuracy"]) <= LIMITS[t]
            ok_ratio = abs(r["flops_ratio"] - t) <= 0.05
            check = (f"loss ≤ {LIMITS[t]}: {'pass' if ok_acc else 'FAIL'}; "
                     f"ratio ±0.05: {'pass' if ok_ratio else 'FAIL'}")
        else:
            check = "ablation"
        lines.append(f"| {name} | {'' if t is None else t} | {100 * r['accuracy']:.2f}% | {delta} | "
                     f"{r['flops_ratio']:.3f} | {r['flops_p10']:.3f} | {r['flops_p90']:.3f} | {check} |")
    lines += ["", "Commands:", "", "```"] + list(rec.get("commands", {}).values()) + ["```", ""]
    if rec.get("seconds"):
        lines += ["Stage durations (s): " + ", ".join(f"{k} {v}" for k, v in rec["seconds"].items()), ""]
    (RESULTS / f"{rec.get('results', 'smarttrim_easyvqa')}.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
